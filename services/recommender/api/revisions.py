"""`If-Match` on the recommender's revisioned documents (the rules, a campaign): the ETag of a
GET is the revision, quoted; a weak tag is read the same; `*` means "whatever is current"."""
from __future__ import annotations

from ..use_cases.catalog import PreconditionFailed

ANY = "*"


def if_match_revision(if_match: str | None, what: str) -> int | str | None:
    """None (no header), ANY, or the revision named; anything else is a 412 saying so."""
    if if_match is None:
        return None
    tag = if_match.strip()
    if tag == ANY:
        return ANY
    if tag.startswith("W/"):
        tag = tag[2:]
    tag = tag.strip('"')
    if not tag.isdigit():
        raise PreconditionFailed(f"If-Match {if_match!r} is not a revision of {what} (send the ETag of a GET)")
    return int(tag)
