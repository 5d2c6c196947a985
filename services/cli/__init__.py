"""The `vicino` command: run the stack, serve one service, manage stores, offers, history, jobs,
train the model. The root: builds the typer app from the groups, one module each
(up, serve, stores, offers, customers, history, train, jobs, keys, campaigns, models); their shared guards and exits are in
guards.py, the progress bar in progress.py, the jobs of every service in job_catalog.py. No
module of this package imports this one back."""
from __future__ import annotations

import typer

from vicino.services.cli.customers import customers_app
from vicino.services.cli.history import history_app
from vicino.services.cli.jobs import jobs_app
from vicino.services.cli.campaigns import campaigns_app
from vicino.services.cli.keys import keys_app
from vicino.services.cli.models import models_app
from vicino.services.cli.offers import offers_app
from vicino.services.cli.serve import serve_app
from vicino.services.cli.stores import stores_app
from vicino.services.cli.train import train_command
from vicino.services.cli.up import up as up_command

app = typer.Typer(help="Vicino: location-triggered personalised offers for omnichannel retail.",
                  no_args_is_help=True, add_completion=False)
# commands that start things read their settings from the environment alone: a container's
# `vicino serve` must never pick up a developer's local stack
STARTS_A_STACK = {"up", "serve"}


@app.callback()
def _local_stack(ctx: typer.Context) -> None:
    """With `vicino up` running (its stack file in VICINO_DATA_DIR, default ./var), every other
    command finds its URLs, Redis, directories and secrets there; what is exported wins."""
    if ctx.invoked_subcommand in STARTS_A_STACK:
        return
    import os

    from pydantic import ValidationError

    from vicino.services.launcher.settings import LauncherSettings
    from vicino.services.launcher.stack_file import stack_environment

    try:
        data_dir = LauncherSettings().data_dir
    except ValidationError:
        return  # the command's own settings will say what is wrong
    for name, value in stack_environment(data_dir).items():
        os.environ.setdefault(name, value)


app.command("up")(up_command)
app.add_typer(serve_app, name="serve")
app.add_typer(stores_app, name="stores")
app.add_typer(offers_app, name="offers", help="Manage the offer catalogue.")
app.add_typer(customers_app, name="customers", help="Customers from a CRM: import identifiers, consent, locale.")
app.add_typer(history_app, name="history", help="Customers' interaction history: import, export, erasure.")
app.command("train")(train_command)
app.add_typer(keys_app, name="keys", help="API keys with roles: create, list, revoke.")
app.add_typer(campaigns_app, name="campaigns", help="Campaigns: list, show, apply, pause, resume, end, preview, why.")
app.add_typer(jobs_app, name="jobs", help="The periodic jobs: list them, run one now.")
app.add_typer(models_app, name="models", help="Model versions: list, roll back, prune.")


def main() -> None:
    app()


__all__ = ["app", "main"]
