"""The model registry: the versions kept on disk (`GET /v1/models`), rolling the published one
back (or forward) to a kept version, and pruning old ones. Every replica and worker follows
`CURRENT` in the shared model directory, so a rollback reaches them within VICINO_MODEL_POLL_S."""
from __future__ import annotations

import asyncio
from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field
from starlette.responses import Response

from vicino.services.kernel.contracts.model_artifact import (ArtifactError, current_version, list_versions,
                                                             prune_versions, publish, read_manifest, read_version)
from vicino.services.kernel.problems import Conflict, NotFound
from vicino.services.kernel.times import InstantOut, rfc3339

from .deps import ContainerDep, ModelRegistryReaderDep, OperatorDep
from .schemas import PROBLEMS, problem

router = APIRouter(prefix="/v1", responses=PROBLEMS)
# a directory name under the model root: no separators, no leading dot (hidden, temporary)
Version = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")]


class ModelVersionOut(BaseModel):
    version: str
    current: bool = Field(description="CURRENT names it: every replica serves it")
    created_at: InstantOut | None = Field(description="when it was trained; null when unreadable")
    users: int | None = Field(None, description="customers with a learned row (erased ones removed)")
    items: int | None = None
    rows: int | None = Field(None, description="interactions it was trained on")
    gate_passed: bool | None = None
    erasures_as_of: InstantOut | None = Field(None, description="when training read the erasure register "
                                              "(null: it did not)")
    error: str | None = Field(None, description="why the version cannot be read (never served)")


class ModelRegistryOut(BaseModel):
    model_dir: str
    current: str | None
    serving: str | None = Field(description="the version this replica serves")
    keep: int = Field(description="VICINO_MODEL_KEEP: versions kept after a publication")
    versions: list[ModelVersionOut] = Field(description="newest first")


class RollbackOut(BaseModel):
    current: str
    previous: str | None


class PruneOut(BaseModel):
    removed: list[str]
    kept: list[str]


def _json(body, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _listing(root: str) -> tuple[str | None, list[dict]]:
    current = current_version(root)
    out = []
    for v in reversed(list_versions(root)):
        entry: dict = {"version": v, "current": v == current, "created_at": None}
        try:
            m = read_manifest(root, v)
            # the manifest's times are epoch seconds; an erasures_as_of of 0 means the register was not read
            entry.update(created_at=rfc3339(m.created_at), users=sum(u is not None for u in m.user_ids),
                         items=len(m.item_ids), rows=m.data_window.get("rows"),
                         gate_passed=(m.metrics.get("gate") or {}).get("passed"),
                         erasures_as_of=rfc3339(m.erasures_as_of) if m.erasures_as_of else None)
        except ArtifactError as e:
            entry["error"] = str(e)
        out.append(entry)
    return current, out


@router.get("/models", tags=["models"], summary="the model versions kept on disk, newest first, and which serves",
            responses={200: {"model": ModelRegistryOut}})
async def list_models(_: ModelRegistryReaderDep, c: ContainerDep) -> Response:
    current, versions = await asyncio.to_thread(_listing, c.models.root)
    return _json({"model_dir": c.models.root, "current": current, "serving": c.models.status.serving,
                  "keep": c.settings.model_keep, "versions": versions})


@router.post("/models/{version}/rollback", tags=["models"],
             summary="publish a kept version (every replica and worker switches to it)",
             responses={200: {"model": RollbackOut}, 409: problem("the version cannot be loaded")})
async def rollback_model(version: Version, _: OperatorDep, c: ContainerDep) -> Response:
    root = c.models.root
    if version not in await asyncio.to_thread(list_versions, root):
        raise NotFound(f"no model version {version!r} in {root}")
    try:
        await asyncio.to_thread(read_version, root, version)  # never point every replica at what cannot load
    except ArtifactError as e:
        raise Conflict(f"version {version!r} cannot be loaded: {e}") from None
    previous = await asyncio.to_thread(current_version, root)
    await asyncio.to_thread(publish, root, version)
    await c.models.refresh()
    return _json({"current": version, "previous": previous})


@router.post("/models/prune", tags=["models"], summary="delete all but the newest versions (never the published one)",
             responses={200: {"model": PruneOut}})
async def prune_models(_: OperatorDep, c: ContainerDep,
                       keep: Annotated[int | None, Query(ge=1, le=1000, description="default VICINO_MODEL_KEEP")] = None
                       ) -> Response:
    root = c.models.root
    removed = await asyncio.to_thread(prune_versions, root, keep or c.settings.model_keep)
    return _json({"removed": removed, "kept": list(reversed(await asyncio.to_thread(list_versions, root)))})
