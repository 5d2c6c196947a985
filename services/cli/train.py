"""`vicino train`: fit the recommender's model on the interaction history, write a version under
the model directory and publish it when it passes the gate. One command, registered in
services/cli/__init__.py as `app.command("train")(train_command)`; the work is vicino.models.pipeline's
`train_and_publish`, imported when the command runs (LightFM stays out of every other command).

With a Redis URL (`--redis-url`, VICINO_REDIS_URL: the deployment's), training honours the
deployment: erased customers' rows are left out, and only customers with personalisation
consent get a learned row. After a publication the newest `--keep` versions stay."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from vicino.services.cli.progress import TRAIN_STAGES as LABELS


def _progress_bar():
    from vicino.services.cli.progress import progress_bar

    return progress_bar(LABELS)


def train_command(
        data: Optional[Path] = typer.Option(None, "--data", exists=True, envvar="VICINO_HISTORY_DIR",
                                            help="a Parquet log root or a history file: CSV (optionally .gz) or "
                                            "Parquet, UCI Online Retail or Vicino columns [default: "
                                            "VICINO_HISTORY_DIR, which `vicino up`'s stack file gives]"),
        model_dir: Optional[Path] = typer.Option(None, "--model-dir", help="where versions are written "
                                                 "[default: VICINO_MODEL_DIR, else var/models]"),
        publish: bool = typer.Option(False, "--publish", help="point CURRENT at the new version if it passes the gate "
                                     "(the blended model beats popularity on the validation window)"),
        force: bool = typer.Option(False, "--force", help="with --publish: publish even if the gate refuses"),
        epochs: Optional[int] = typer.Option(None, min=1, max=500, help="LightFM epochs [default: the library's]"),
        threads: Optional[int] = typer.Option(None, min=1, max=64, help="LightFM threads [default: 2]"),
        skip_test: bool = typer.Option(False, "--skip-test", help="skip the test-window run (faster; no test figures)"),
        catalog: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                               help="offer catalogue JSON: item categories, prices, brands"),
        report_json: Optional[Path] = typer.Option(None, "--report-json", dir_okay=False,
                                                   help="also write the full report (metrics, decision) here"),
        redis_url: Optional[str] = typer.Option(None, "--redis-url", envvar="VICINO_REDIS_URL",
                                                help="the deployment's Redis: its erasure register and customers' "
                                                     "consent decide whom training may use (without it: everyone)"),
        keep: int = typer.Option(5, "--keep", envvar="VICINO_MODEL_KEEP", min=1, max=1000,
                                 help="after a publication, keep N versions (the published one and the "
                                      "newest others) and delete the rest"),
) -> None:
    """Train the recommender's model (LightFM, hybrid) on the interaction history; evaluate it
    against popularity and repeat-purchase baselines on a time split; write a version."""
    from vicino.models.data import DataError
    from vicino.models.pipeline import TrainSettings, train_and_publish

    if data is None:
        typer.echo("vicino: no history to train on: pass --data (a Parquet log root or a history file), set "
                   "VICINO_HISTORY_DIR, or run it beside `vicino up`", err=True)
        raise typer.Exit(2)
    root = model_dir or Path(os.environ.get("VICINO_MODEL_DIR") or "var/models")
    changes: dict = {"force_publish": force, "evaluate_test": not skip_test}
    if epochs is not None:
        changes["epochs"] = epochs
    if threads is not None:
        changes["num_threads"] = threads
    if catalog is not None:
        changes["catalog"] = str(catalog)
    settings = TrainSettings().replace(**changes)
    redis = _open_redis_or_exit(redis_url) if redis_url else None
    bar, progress = _progress_bar()
    try:
        with bar:
            report = train_and_publish(data, root, publish=publish, settings=settings, progress=progress,
                                       customers=_policy(redis) if redis is not None else None, keep=keep)
    except DataError as e:
        typer.echo(f"vicino: {e}", err=True)
        raise typer.Exit(2)
    finally:
        if redis is not None:
            redis.close()
    for line in report.lines():
        typer.echo(line)
    if redis is None:
        typer.echo("no --redis-url: the erasure register and consent were not read (every customer used)", err=True)
    else:
        typer.echo(f"left out {report.data_window['erased_rows_dropped']:,} rows of erased customers; "
                   f"{report.data_window['users_without_learned_row']:,} customers without personalisation consent "
                   "have no learned row")
    if report.pruned:
        typer.echo(f"pruned {len(report.pruned)} old version(s): {', '.join(report.pruned)}")
    if report_json is not None:
        report_json.write_text(json.dumps(report.as_dict(), indent=1, default=str) + "\n")
    # a refused publication is not a failure of the command, but scripts want to know
    raise typer.Exit(0 if report.published or not publish else 3)


def _open_redis_or_exit(url: str):
    import redis as redis_lib

    from vicino.services.runtime.redis_client import open_sync, redacted

    try:
        client = open_sync(url)
        client.ping()
    except redis_lib.RedisError as e:
        typer.echo(f"vicino: cannot reach Redis at {redacted(url)} (the erasure register and consent): {e}", err=True)
        raise typer.Exit(1)
    return client


def _policy(redis):
    import os
    import time

    from vicino.services.kernel.contracts.erasures import register_key

    from vicino.models.data import CustomerPolicy
    from vicino.services.recommender.adapters.training_inputs import erased_customers, personalised_among

    as_of = time.time()  # before the read: an erasure recorded after it is scrubbed from the version later
    secret = os.environ.get("VICINO_TOKEN_SECRET")
    if not secret:  # the register's digests are keyed: without the key no erased id can be recognised
        typer.echo("vicino: --redis-url needs the deployment's VICINO_TOKEN_SECRET (or VICINO_ERASURE_KEY with "
                   "it) to read the erasure register", err=True)
        raise typer.Exit(2)
    return CustomerPolicy(erased_customers(redis), as_of, lambda ids: personalised_among(redis, ids),
                          register_key(secret, os.environ.get("VICINO_ERASURE_KEY")))
