"""Locale tags (BCP 47) as they cross services: geo stores a device's `locale` in the published
registration, the recommender picks a campaign's message template by it. Both read a tag the same
way: through Babel (CLDR), to one canonical spelling, `it`, `it-IT`, `zh-Hant-TW`. Pure: no I/O."""
from __future__ import annotations

import re

from babel import Locale, UnknownLocaleError

# RFC 5646 asks for tags of at least 35 characters to be handled (language, extlang, script,
# region); Android's regional preferences add extensions ("en-US-u-ca-gregory-fw-mon-mu-celsius")
MAX_LOCALE_TAG_CHARS = 80
# Subtags of letters and digits joined by `-` (or `_`, as Android and POSIX write them). Babel's own
# parser would also take `it_IT.UTF-8` or `it@euro`, which are not BCP 47: refused before it.
_TAG = re.compile(r"[A-Za-z]{2,8}(?:[-_][A-Za-z0-9]{1,8})*")


def canonical_locale(tag: str) -> str:
    """The canonical tag of a BCP 47 tag ("it" -> "it", "it_it" -> "it-IT", "pt-br" -> "pt-BR",
    "zh-TW" -> "zh-Hant-TW"): the locale Babel resolves it to, its subtags joined by `-`.
    Raises ValueError, saying why, for anything Babel cannot resolve to a locale it has data for.
    Extensions and private use are dropped ("en-US-u-mu-celsius" -> "en-US"), and so are variants
    Babel has no data for ("de-DE-1996" -> "de-DE")."""
    if not isinstance(tag, str) or not tag:
        raise ValueError("a locale is a BCP 47 tag such as 'it' or 'it-IT'; got an empty value")
    if len(tag) > MAX_LOCALE_TAG_CHARS:
        raise ValueError(f"a locale tag is at most {MAX_LOCALE_TAG_CHARS} characters; got {len(tag)}")
    if not _TAG.fullmatch(tag):
        raise ValueError(f"{tag!r} is not a BCP 47 tag (letters and digits in subtags joined by '-', "
                         "such as 'it' or 'it-IT')")
    if tag.lower() == "und" or tag.lower().startswith(("und-", "und_")):
        # Babel resolves "undetermined" to its likeliest locale (en-US): a device saying it does not
        # know its language must not silently read English
        raise ValueError(f"{tag!r} is the undetermined language; send the device's language")
    # extensions and private use (`-u-...`, `-x-...`: Android 14 appends `-u-mu-celsius` and the
    # like for its regional preferences) say nothing about the language: dropped
    subtags = re.split(r"[-_]", tag)
    singleton = next((i for i, s in enumerate(subtags) if i > 0 and len(s) == 1), len(subtags))
    try:
        loc = Locale.parse("_".join(subtags[:singleton]))
    except UnknownLocaleError:
        raise ValueError(f"{tag!r} is not a locale Babel (CLDR) knows") from None
    except (ValueError, TypeError) as e:
        raise ValueError(f"{tag!r} is not a BCP 47 tag Babel can read ({str(e).splitlines()[0]})") from None
    return "-".join(p for p in (loc.language, loc.script, loc.territory, loc.variant) if p)
