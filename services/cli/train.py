"""`vicino train`: fit the recommender's model on the interaction history, write a version under
the model directory and publish it when it passes the gate. One command, registered in
services/cli/__init__.py as `app.command("train")(train_command)`; the work is vicino.models.pipeline's
`train_and_publish`, imported when the command runs (LightFM stays out of every other command)."""
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
        data: Path = typer.Option(..., "--data", exists=True, help="a Parquet log root (VICINO_HISTORY_DIR) or a "
                                  "history file: CSV (optionally .gz) or Parquet, UCI Online Retail or Vicino columns"),
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
) -> None:
    """Train the recommender's model (LightFM, hybrid) on the interaction history; evaluate it
    against popularity and repeat-purchase baselines on a time split; write a version."""
    from vicino.models.data import DataError
    from vicino.models.pipeline import TrainSettings, train_and_publish

    root = model_dir or Path(os.environ.get("VICINO_MODEL_DIR") or "var/models")
    changes: dict = {"force_publish": force, "evaluate_test": not skip_test}
    if epochs is not None:
        changes["epochs"] = epochs
    if threads is not None:
        changes["num_threads"] = threads
    if catalog is not None:
        changes["catalog"] = str(catalog)
    settings = TrainSettings().replace(**changes)
    bar, progress = _progress_bar()
    try:
        with bar:
            report = train_and_publish(data, root, publish=publish, settings=settings, progress=progress)
    except DataError as e:
        typer.echo(f"vicino: {e}", err=True)
        raise typer.Exit(2)
    for line in report.lines():
        typer.echo(line)
    if report_json is not None:
        report_json.write_text(json.dumps(report.as_dict(), indent=1, default=str) + "\n")
    # a refused publication is not a failure of the command, but scripts want to know
    raise typer.Exit(0 if report.published or not publish else 3)
