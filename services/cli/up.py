"""`vicino up`: the whole stack on one machine."""
from __future__ import annotations

import typer

from vicino.services.cli.guards import settings_or_exit


def up() -> None:
    """Start the whole stack on one machine (what `make run` runs): embedded Redis unless
    VICINO_REDIS_URL is set, every service, demo data unless VICINO_DEMO=0."""
    from vicino.services.launcher.settings import LauncherSettings
    from vicino.services.launcher.up import run_up

    raise typer.Exit(run_up(settings_or_exit(LauncherSettings)))
