"""The campaign book: create, edit, pause, end and list campaigns, and the consistent snapshot a
decision works from.

A PUT replaces the whole campaign. Creating needs no `If-Match`; changing an existing campaign
needs the ETag of a GET (428 without it, 412 when someone changed it since), so that two
marketers editing at once never silently overwrite each other. Offers and stores a campaign
names must exist (422 naming them). DELETE removes a draft and ends any other campaign (its
decisions and KPIs keep pointing at it).

`snapshot()` is what a decision reads: one immutable tuple of campaigns at one revision each,
reloaded only when the book's sequence number moves, so a campaign edited while a decision runs
is seen by that decision either entirely before or entirely after the edit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from vicino.services.kernel.clock import Clock
from vicino.services.kernel.problems import Conflict, InvalidInput, NotFound, Problem, invalid_input
from vicino.services.kernel.times import rfc3339

from ..adapters.campaign_repository import CampaignRepository, Spend
from ..adapters.catalog_repository import CatalogRepository
from ..domain.campaigns import Campaign, CampaignIn, budget_day, transition_error
from .catalog import PreconditionFailed


class PreconditionRequired(Problem):
    status = 428
    title = "Precondition required"


@dataclass(frozen=True)
class Snapshot:
    seq: int
    campaigns: tuple[Campaign, ...]   # every stored campaign; the default one when none is stored
    defined: bool                     # False: no campaign stored, `campaigns` is the default one


class CampaignBook:
    def __init__(self, repo: CampaignRepository, catalog: CatalogRepository, clock: Clock,
                 default: Campaign | None = None) -> None:
        """`default`: the campaign built from the settings (`domain.campaigns.default_campaign`),
        which runs while no campaign is stored."""
        self.repo = repo
        self.catalog = catalog
        self.clock = clock
        self.default = default
        self._snap = Snapshot(-1, (), False)

    async def snapshot(self) -> Snapshot:
        seq = await self.repo.seq()
        if seq != self._snap.seq:
            seq, stored = await self.repo.all()
            if stored:
                self._snap = Snapshot(seq, tuple(stored), True)
            else:
                self._snap = Snapshot(seq, (self.default,) if self.default is not None else (), False)
        return self._snap

    async def get(self, campaign_id: str) -> Campaign:
        c = await self.repo.get(campaign_id)
        if c is None:
            raise NotFound(f"campaign {campaign_id!r} does not exist")
        return c

    async def list(self, status: str | None = None) -> list[Campaign]:
        _, stored = await self.repo.all()
        return [c for c in stored if status is None or c.status == status]

    async def spend(self, campaigns: list[Campaign]) -> dict[str, Spend]:
        now = self.clock.now()
        return await self.repo.spend([c.campaign_id for c in campaigns],
                                     {c.campaign_id: budget_day(now, c.spec.timezone) for c in campaigns})

    async def put(self, campaign_id: str, body: Any, if_match: int | str | None) -> tuple[Campaign, bool]:
        """(the campaign as stored, whether it was created). `if_match`: a revision, "*" (any
        current one) or None (creating only)."""
        if not isinstance(body, dict):
            raise InvalidInput("expected the campaign as a JSON object")
        try:
            spec = CampaignIn.model_validate(body)
        except ValidationError as e:
            raise invalid_input(e) from None
        await self._check_references(spec)
        current = await self.repo.get(campaign_id)
        if if_match == "*":
            if current is None:
                raise PreconditionFailed(f"campaign {campaign_id!r} does not exist (If-Match: * needs one)")
            if_match = current.revision
        if current is None and if_match not in (None, 0):
            raise PreconditionFailed(f"campaign {campaign_id!r} does not exist, so it has no revision {if_match}")
        if current is not None:
            if if_match is None:
                raise PreconditionRequired(f"campaign {campaign_id!r} exists: send If-Match with the ETag of your GET "
                                           "so that an edit made meanwhile is not overwritten",
                                           headers={"ETag": f'"{current.revision}"'})
            if if_match != current.revision:
                raise PreconditionFailed(f"campaign {campaign_id!r} is at revision {current.revision}, not {if_match}: "
                                         "someone changed it since you read it; GET it again and reapply your change",
                                         headers={"ETag": f'"{current.revision}"'})
        why = transition_error(None if current is None else current.status, spec.status)
        if why is not None:
            raise Conflict(why)
        now = self.clock.now()
        created_at = now if current is None else current.created_at
        revision = await self.repo.write(campaign_id, 0 if current is None else current.revision, spec, created_at, now)
        if revision is None:
            raise PreconditionFailed(f"campaign {campaign_id!r} changed while it was being written; GET it again")
        return Campaign(campaign_id, revision, spec, created_at, now), current is None

    async def delete(self, campaign_id: str, if_match: int | str | None) -> Campaign | None:
        """A draft is removed (None); any other campaign is ended (the ended campaign)."""
        current = await self.get(campaign_id)
        if if_match not in (None, "*") and if_match != current.revision:
            raise PreconditionFailed(f"campaign {campaign_id!r} is at revision {current.revision}, not {if_match}",
                                     headers={"ETag": f'"{current.revision}"'})
        now = self.clock.now()
        if current.status == "draft":
            if await self.repo.write(campaign_id, current.revision, None, current.created_at, now) is None:
                raise PreconditionFailed(f"campaign {campaign_id!r} changed while it was being deleted; retry")
            return None
        if current.status == "ended":
            return current
        spec = current.spec.model_copy(update={"status": "ended"})
        revision = await self.repo.write(campaign_id, current.revision, spec, current.created_at, now)
        if revision is None:
            raise PreconditionFailed(f"campaign {campaign_id!r} changed while it was being ended; retry")
        return Campaign(campaign_id, revision, spec, current.created_at, now)

    async def _check_references(self, spec: CampaignIn) -> None:
        errors: list[dict] = []
        if spec.offers.offer_ids:
            known = {orjson.loads(r)["offer_id"] for r in await self.catalog.all_offers()}
            missing = [o for o in spec.offers.offer_ids if o not in known]
            if missing:
                errors.append({"field": "offers.offer_ids",
                               "message": f"unknown offers: {', '.join(missing[:20])}"
                                          + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")})
        if spec.trigger.store_ids:
            missing = [s for s in spec.trigger.store_ids if not await self.catalog.store_exists(s)]
            if missing:
                errors.append({"field": "trigger.store_ids",
                               "message": f"unknown stores: {', '.join(missing[:20])}"
                                          + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")})
        if errors:
            raise InvalidInput("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors)


def to_public(c: Campaign, spend: Spend | None) -> dict:
    spec = c.spec.model_dump(mode="json")
    for f in ("starts_at", "ends_at"):
        if spec[f] is not None:
            spec[f] = rfc3339(spec[f])
    lim = c.spec.limits
    return {"campaign_id": c.campaign_id, "revision": c.revision, **spec,
            "created_at": rfc3339(c.created_at), "updated_at": rfc3339(c.updated_at),
            "spend": {"today": spend.today if spend else 0, "total": spend.total if spend else 0,
                      "per_day_budget": lim.sends_per_day, "total_budget": lim.sends_total}}
