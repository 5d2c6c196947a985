"""`vicino history`: bulk import of interaction history, export of the interaction streams to
the Parquet log, and erasures applied to that log. Registered in services/cli/__init__.py."""
from __future__ import annotations

import asyncio
import signal
from enum import Enum
from pathlib import Path

import typer

from vicino.services.cli.guards import settings_or_exit

history_app = typer.Typer(help="The interaction history: bulk import, export to the Parquet log, erasures.",
                          no_args_is_help=True)


class HistoryFormat(str, Enum):
    auto = "auto"
    vicino = "vicino"
    online_retail = "online-retail"


def _settings():
    from vicino.services.recommender.settings import RecommenderSettings

    return settings_or_exit(RecommenderSettings)


async def _open_redis(settings):
    import logging

    from vicino.services.runtime.redis_client import open_async, wait_for_redis

    try:
        await wait_for_redis(settings.redis_url, settings.redis_wait_s, logging.getLogger("vicino.history"))
    except RuntimeError as e:
        typer.echo(f"vicino: {e}", err=True)
        raise typer.Exit(1)
    return open_async(settings.redis_url)


IMPORT_STAGES = {"read": "reading the file", "write": "writing Parquet partitions", "hot": "loading hot history"}


def _progress_bar():
    from vicino.services.cli.progress import progress_bar

    return progress_bar(IMPORT_STAGES, width=28)


def _print_import(report) -> None:
    from vicino.services.kernel.contracts.history_file import DROP_REASONS

    verb = "would import" if report.dry_run else "imported"
    typer.echo(f"{report.source} ({report.format}, sha256 {report.content_sha256[:12]}): {report.rows_read:,} rows read, "
               f"{verb} {report.imported:,} for {report.customers:,} customers"
               + ("" if report.dry_run else f" into {report.partitions:,} date partitions")
               + f" in {report.seconds:.1f} s")
    dropped = {k: v for k, v in report.dropped.items() if v}
    typer.echo(f"dropped {sum(dropped.values()):,}:" if dropped else "dropped: none")
    for reason, n in dropped.items():
        typer.echo(f"  {reason:<20} {n:>9,}  {DROP_REASONS.get(reason, '')}")
    typer.echo(f"malformed (skipped): {report.malformed:,}")
    if report.malformed_lines:
        more = report.malformed - len(report.malformed_lines)
        typer.echo("  lines " + ", ".join(map(str, report.malformed_lines)) + (f" and {more:,} more" if more > 0 else ""))
    if report.dry_run:
        typer.echo("dry run: nothing written; erased customers not checked (needs Redis)")
        return
    if report.files_replaced:
        typer.echo(f"replaced {report.files_replaced} file(s) of an earlier import of this file")
    typer.echo("hot history: " + ", ".join(f"{k} {v:,}" for k, v in report.hot_history.items()))


@history_app.command("import")
def import_history(
        file: Path = typer.Argument(..., exists=True, dir_okay=False, help=".csv, .csv.gz or .parquet"),
        fmt: HistoryFormat = typer.Option(HistoryFormat.auto, "--format", help="the columns: Vicino's own, the UCI "
                                          "Online Retail layout, or auto-detected from the header"),
        dry_run: bool = typer.Option(False, "--dry-run", help="read and filter only: writes nothing and needs no "
                                     "configuration")) -> None:
    """Import interaction history into the Parquet log (VICINO_HISTORY_DIR) and each customer's
    most recent interactions into the hot history. Re-importing the same file replaces its rows."""
    import time

    from vicino.services.kernel.contracts.history_file import HistoryFileError, read_history

    bar, progress = _progress_bar()
    if dry_run:
        with bar:
            try:
                _, report = read_history(file, fmt.value, received_at=time.time(), progress=progress)
            except HistoryFileError as e:
                typer.echo(f"vicino: {file}: {e}", err=True)
                raise typer.Exit(2)
        report.dry_run = True
        _print_import(report)
        return
    settings = _settings()

    async def main():
        from vicino.services.kernel.clock import SystemClock
        from vicino.services.recommender.adapters.customer_repository import CustomerRepository
        from vicino.services.recommender.use_cases.history_import import HistoryImport

        redis = await _open_redis(settings)
        try:
            use_case = HistoryImport(CustomerRepository(redis, settings), redis, settings.history_dir,
                                     hot_per_customer=settings.history_hot_per_customer, clock=SystemClock())
            with bar:
                return await use_case.run(file, fmt.value, progress)
        finally:
            await redis.aclose()

    try:
        report = asyncio.run(main())
    except HistoryFileError as e:
        typer.echo(f"vicino: {file}: {e}", err=True)
        raise typer.Exit(2)
    _print_import(report)


@history_app.command("export")
def export(follow: bool = typer.Option(False, "--follow", help="keep exporting as interactions arrive, until "
                                       "Ctrl-C")) -> None:
    """Move the interaction streams into the Parquet log (VICINO_HISTORY_DIR): what is there now,
    or continuously with --follow."""
    from vicino.services.runtime.observability import configure_logging
    from vicino.services.recommender.workers.exporter import Exporter

    settings = _settings()
    configure_logging(settings.log_level)

    async def main():
        redis = await _open_redis(settings)
        try:
            exporter = Exporter(redis, settings)
            if not follow:
                return await exporter.run_once()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            return await exporter.run_forever(stop)
        finally:
            await redis.aclose()

    r = asyncio.run(main())
    typer.echo(f"exported {r.interactions:,} interactions and {r.merges:,} merges from {r.entries:,} stream entries "
               f"in {r.flushes:,} flushes ({r.files:,} files); dropped {r.erased:,} rows of erased customers; "
               f"{r.deleted:,} deleted entries acknowledged; {r.dead:,} dead-lettered")
    if r.uncommitted_removed or r.committed_acked:
        typer.echo(f"recovered from an interrupted export: {r.uncommitted_removed} uncommitted file(s) removed, "
                   f"{r.committed_acked:,} committed entries acknowledged")
    if r.shards_busy:
        typer.echo(f"{r.shards_busy} shard(s) skipped: another exporter holds them")


@history_app.command("apply-erasures")
def apply_erasures_cmd() -> None:
    """Rewrite the Parquet log files that still hold rows of erased customers (the erasure
    register in Redis), dropping those rows."""
    from vicino.services.recommender.adapters.parquet_log import apply_erasures
    from vicino.services.recommender.adapters.erasure_register import ErasureRegister

    settings = _settings()

    async def erased() -> dict:
        redis = await _open_redis(settings)
        try:
            return await ErasureRegister(redis, settings.erasure_register_key()).all_digests()
        finally:
            await redis.aclose()

    register = asyncio.run(erased())
    r = apply_erasures(settings.history_dir, register, key=settings.erasure_register_key())
    typer.echo(f"{len(register):,} erased customers; {r.files_scanned:,} files scanned, {r.files_rewritten:,} "
               f"rewritten, {r.files_removed:,} removed (every row erased); {r.rows_dropped:,} rows dropped")
