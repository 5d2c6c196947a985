"""The progress bar of the long `vicino` commands (history import, train, jobs run)."""
from __future__ import annotations

# the stages of training (`vicino train`, and the retrain job under `vicino jobs run`)
TRAIN_STAGES = {"load": "reading the history", "validation": "fit: validation run", "test": "fit: test run",
                "final": "fit: whole history", "write": "writing the version"}


def progress_bar(labels: dict[str, str] | None = None, width: int = 24):
    """A rich progress display on stderr and the `progress(stage, done, total)` callback that
    feeds it: one bar per stage, named by `labels` (else by the stage)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    labels = labels or {}
    bar = Progress(TextColumn(f"{{task.description:<{width}}}"), BarColumn(), TaskProgressColumn(),
                   TimeElapsedColumn(), console=Console(stderr=True), transient=False)
    tasks: dict[str, int] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(labels.get(stage, stage), total=total or 1)
        bar.update(tasks[stage], completed=done, total=total or 1)

    return bar, progress
