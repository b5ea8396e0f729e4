"""The one ``pacs-sync`` command. Each subcommand is thin: parse flags, load settings, call a runner."""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated

import typer

from pacs_sync.errors import ConfigurationError, PacsSyncError
from pacs_sync.logging import configure_logging
from pacs_sync.settings import PacsSettings
from pacs_sync.stack import LocalStack, StackSettings

logger = logging.getLogger(__name__)

app = typer.Typer(
    name="pacs-sync",
    help="TerraFusion PACS Sync: SQL Server CDC -> Kafka -> PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stack_app = typer.Typer(help="The local Kafka + PostgreSQL stack (no Docker).", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(config_app, name="config")


def _stack() -> LocalStack:
    settings = StackSettings.load()
    configure_logging(settings.log_level)
    return LocalStack(settings)


@stack_app.command("up")
def stack_up() -> None:
    """Start Kafka (KRaft) and PostgreSQL on 127.0.0.1 and wait until both answer. Idempotent."""
    stack = _stack()
    started = stack.up()
    for status in stack.status():
        verb = "started" if started.get(status.name) else "already running"
        typer.echo(f"{status.name:<11} {status.address:<16} {verb}: {status.detail}")


@stack_app.command("down")
def stack_down(
    purge: Annotated[
        bool, typer.Option("--purge", help="Also delete the data (keeps the jar cache).")
    ] = False,
) -> None:
    """Stop the services that `stack up` started; the data is kept unless --purge."""
    stack = _stack()
    stopped = stack.down(purge=purge)
    for name, was_running in stopped.items():
        typer.echo(f"{name:<11} {'stopped' if was_running else 'was not running'}")
    if purge:
        typer.echo(f"data under {stack.settings.state_dir} deleted")


@stack_app.command("status")
def stack_status() -> None:
    """Print each service's address and whether it answers; exit 0 only when both answer."""
    statuses = _stack().status()
    for status in statuses:
        answer = "answers" if status.answers else "DOWN"
        typer.echo(f"{status.name:<11} {status.address:<16} {answer}: {status.detail}")
    if not all(status.answers for status in statuses):
        raise typer.Exit(code=1)


@config_app.command("show")
def config_show(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of NAME = value lines.")
    ] = False,
) -> None:
    """Print the effective settings (environment, .env file, defaults) with secrets masked."""
    settings = PacsSettings.load()
    shown = settings.masked()
    if as_json:
        typer.echo(json.dumps(shown, indent=2, default=str))
        return
    width = max(len(name) for name in shown)
    for name, value in shown.items():
        typer.echo(f"{name:<{width}} = {value}")


def main() -> None:
    """Entry point: run the CLI and turn connector errors into a logged code and an exit status.

    Exit codes: 0 success, 1 a runtime failure (PACS-00x logged), 2 invalid configuration or usage.
    """
    configure_logging("INFO")
    try:
        # Standalone mode: usage errors print and exit 2, typer.Exit(code) exits with its code;
        # only our own errors come through to here.
        app()
    except ConfigurationError as exc:
        logger.error("%s", exc)  # the message is the whole story for a config error
        sys.exit(2)
    except PacsSyncError as exc:
        logger.error("%s", exc)
        logger.debug("details", exc_info=exc)
        sys.exit(1)
