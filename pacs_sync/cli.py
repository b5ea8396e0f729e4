"""The one ``pacs-sync`` command. Each subcommand is thin: parse flags, load settings, call a runner."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from typing import Annotated

import typer

from pacs_sync import dbapi
from pacs_sync.errors import ConfigurationError, PacsSyncError
from pacs_sync.logging import configure_logging
from pacs_sync.settings import PacsSettings
from pacs_sync.sim.agent import AgentProcess, CaptureAgent
from pacs_sync.sim.churn import run_churn
from pacs_sync.sim.emulator import EmulatorAdmin
from pacs_sync.sim.generator import scale_for
from pacs_sync.sim.loader import emulated_source, init_database, is_installed
from pacs_sync.sim.settings import SimSettings
from pacs_sync.stack import LocalStack, StackSettings
from pacs_sync.stack.postgres import connection_kwargs

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
sim_app = typer.Typer(
    help="The SQL Server stand-in: CDC emulator, generated PACS data, change workload.", no_args_is_help=True
)
agent_app = typer.Typer(
    help="The emulated SQL Server Agent (capture and cleanup jobs).", no_args_is_help=True
)
app.add_typer(stack_app, name="stack")
app.add_typer(config_app, name="config")
app.add_typer(sim_app, name="sim")
sim_app.add_typer(agent_app, name="agent")


def _stack() -> LocalStack:
    settings = StackSettings.load()
    configure_logging(settings.log_level)
    return LocalStack(settings)


def _sim_settings() -> SimSettings:
    settings = SimSettings.load()
    configure_logging(settings.log_level)
    return settings


@stack_app.command("up")
def stack_up() -> None:
    """Start Kafka (KRaft) and PostgreSQL on 127.0.0.1 and wait until both answer. Idempotent."""
    stack = _stack()
    started = stack.up()
    for status in stack.status():
        verb = "started" if started.get(status.name) else "already running"
        typer.echo(f"{status.name:<11} {status.address:<16} {verb}: {status.detail}")
    # The emulated SQL Server Agent comes back with the stack once `sim init` has created its database.
    sim_settings = SimSettings.load()
    if is_installed(sim_settings):
        agent = AgentProcess(sim_settings.state_dir, sim_settings.db_name)
        verb = "started" if agent.start() else "already running"
        typer.echo(f"{'cdc-agent':<11} {sim_settings.db_name:<16} {verb}: capture + cleanup jobs")


@stack_app.command("down")
def stack_down(
    purge: Annotated[
        bool, typer.Option("--purge", help="Also delete the data (keeps the jar cache).")
    ] = False,
) -> None:
    """Stop the services that `stack up` started; the data is kept unless --purge."""
    stack = _stack()
    for database in AgentProcess.stop_all(stack.settings.state_dir):
        typer.echo(f"{'cdc-agent':<11} {database}: stopped")
    stopped = stack.down(purge=purge)
    for name, was_running in stopped.items():
        typer.echo(f"{name:<11} {'stopped' if was_running else 'was not running'}")
    if purge:
        typer.echo(f"data under {stack.settings.state_dir} deleted")


@stack_app.command("status")
def stack_status() -> None:
    """Print each service's address and whether it answers; exit 0 only when both answer."""
    stack = _stack()
    statuses = stack.status()
    for status in statuses:
        answer = "answers" if status.answers else "DOWN"
        typer.echo(f"{status.name:<11} {status.address:<16} {answer}: {status.detail}")
    agent = AgentProcess(stack.settings.state_dir, stack.settings.db_name).running_pid()
    agent_state = f"running (pid {agent})" if agent else "not running"
    typer.echo(f"{'cdc-agent':<11} {stack.settings.db_name:<16} {agent_state}")
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


@sim_app.command("init")
def sim_init(
    scale: Annotated[
        str, typer.Option(help="small, benton (the seed's volumes) or a number of properties.")
    ] = "small",
    seed: Annotated[int, typer.Option(help="Same seed, same data.")] = 1,
    dirty_rate: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Fraction of rows given realistic bad data (default clean)."),
    ] = 0.0,
    keep_existing: Annotated[
        bool, typer.Option("--keep-existing", help="Leave an existing emulated database as it is (resume).")
    ] = False,
) -> None:
    """(Re)create the emulated PACS database, load generated data, enable CDC, start the Agent."""
    settings = _sim_settings()
    if keep_existing and is_installed(settings):
        started = AgentProcess(settings.state_dir, settings.db_name).start()
        typer.echo(
            f"emulated PACS database {settings.db_name!r} kept" + ("; cdc-agent started" if started else "")
        )
        return
    try:
        chosen = scale_for(scale)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scale") from exc
    result = init_database(settings, chosen, seed=seed, dirty_rate=dirty_rate)
    typer.echo(f"emulated PACS database {settings.db_name!r} ready in {result.seconds:.1f} s")
    for table, count in result.row_counts.items():
        typer.echo(f"  dbo.{table:<14} {count:>9,} rows")
    for kind, count in sorted(result.dirty.items()):
        typer.echo(f"  dirty: {kind:<28} {count:>6,}")


@sim_app.command("churn")
def sim_churn(
    rate: Annotated[float, typer.Option(min=0.1, help="Offered load in row changes per second.")] = 50.0,
    duration: Annotated[float | None, typer.Option(min=0.0, help="Run for this many seconds.")] = None,
    changes: Annotated[int | None, typer.Option(min=1, help="Stop after this many row changes.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the workload planner.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON line.")] = False,
) -> None:
    """Apply a realistic assessment workload in real transactions; print what was applied.

    SIGTERM or Ctrl-C ends it after the transaction in flight, with the summary printed.
    """
    settings = _sim_settings()
    if duration is None and changes is None:
        duration = 60.0
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    result = run_churn(settings, rate=rate, seed=seed, duration_s=duration, max_changes=changes, stop=stop)
    if as_json:
        typer.echo(json.dumps(result.as_record()))
        return
    typer.echo(
        f"applied {result.transactions:,} transactions, {result.changes:,} row changes "
        f"in {result.seconds:.1f} s ({result.rate:,.0f} changes/s), {result.failed} failed"
    )
    for kind, count in sorted(result.by_kind.items()):
        typer.echo(f"  {kind:<36} {count:>7,} transactions")
    for name, count in sorted(result.statements.items()):
        if name.startswith("statements."):
            typer.echo(f"  {name.removeprefix('statements.'):<36} {count:>7,} statements")


@sim_app.command("scan")
def sim_scan() -> None:
    """Run the CDC capture job once now (CALL sys.sp_cdc_scan())."""
    settings = _sim_settings()
    server = emulated_source(settings)
    admin = EmulatorAdmin(dbapi.connect(**connection_kwargs(server, settings.db_name), autocommit=True))
    try:
        admin.scan()
    finally:
        admin.close()
    typer.echo("capture scan done")


@agent_app.command("run")
def agent_run(
    database: Annotated[str | None, typer.Option(help="Emulated database (default: PACS_DB_NAME).")] = None,
) -> None:
    """Run the capture and cleanup jobs in the foreground until SIGTERM or Ctrl-C."""
    settings = _sim_settings()
    if database is not None:
        settings = settings.model_copy(update={"db_name": database})
    server = emulated_source(settings)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    kwargs = connection_kwargs(server, settings.db_name)
    logger.info("capture agent running on database %s", settings.db_name)
    CaptureAgent(lambda: dbapi.connect(**kwargs, autocommit=True, application_name="cdc-agent")).run(stop)


@agent_app.command("start")
def agent_start() -> None:
    """Start the Agent in the background (idempotent)."""
    settings = _sim_settings()
    emulated_source(settings)
    started = AgentProcess(settings.state_dir, settings.db_name).start()
    typer.echo("cdc-agent started" if started else "cdc-agent already running")


@agent_app.command("stop")
def agent_stop() -> None:
    """Stop the background Agent."""
    settings = _sim_settings()
    stopped = AgentProcess(settings.state_dir, settings.db_name).stop()
    typer.echo("cdc-agent stopped" if stopped else "cdc-agent was not running")


@agent_app.command("status")
def agent_status() -> None:
    """Exit 0 when the background Agent runs."""
    settings = _sim_settings()
    pid = AgentProcess(settings.state_dir, settings.db_name).running_pid()
    typer.echo(f"cdc-agent running (pid {pid})" if pid else "cdc-agent not running")
    if pid is None:
        raise typer.Exit(code=1)


@app.command("run")
def run_command(
    processors: Annotated[
        int | None, typer.Option("--processors", min=1, max=16, help="Stream-processor workers.")
    ] = None,
    churn_rate: Annotated[
        float,
        typer.Option("--churn-rate", min=0.0, help="Also apply a simulated workload (changes/s; 0: none)."),
    ] = 0.0,
    api: Annotated[
        bool, typer.Option("--api/--no-api", help="Also serve the management API and dashboard.")
    ] = True,
) -> None:
    """Run producer, processor(s) and sink together, supervised: crashed stages restart; Ctrl-C stops all."""
    from pipeline.runner import serve_pipeline
    from pipeline.settings import PipelineSettings

    overrides = {"processor_workers": processors} if processors else {}
    settings = PipelineSettings.load(**overrides)
    configure_logging(settings.log_level)
    serve_pipeline(settings, churn_rate=churn_rate, with_api=api, announce=typer.echo)


@app.command("sync")
def sync_command(
    until_caught_up: Annotated[
        bool,
        typer.Option(
            "--until-caught-up",
            help="Run until everything committed in the source at start is in PostgreSQL.",
        ),
    ] = True,
    entities: Annotated[
        list[str] | None, typer.Option("--entities", "-e", help="Entity to sync (repeatable; default: all).")
    ] = None,
    full: Annotated[bool, typer.Option("--full", help="Re-snapshot the entities' tables first.")] = False,
    timeout: Annotated[
        float, typer.Option(min=1.0, help="Give up (PACS-005) after this many seconds.")
    ] = 3600.0,
) -> None:
    """The seed's manual sync: run the pipeline until caught up, then print a summary per entity."""
    from pipeline.display import ProgressDisplay
    from pipeline.settings import PipelineSettings
    from pipeline.sync import ENTITY_TABLES, SyncUntilCaughtUp

    if not until_caught_up:
        raise typer.BadParameter("a continuous sync is `pacs-sync run`", param_hint="--until-caught-up")
    settings = PipelineSettings.load()
    configure_logging(settings.log_level)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())  # stages this sync started are stopped, not orphaned
    with ProgressDisplay() as show:
        sync = SyncUntilCaughtUp(
            settings, entities or list(ENTITY_TABLES), full=full, timeout_s=timeout, on_progress=show
        )
        result = sync.run(stop)
    typer.echo(f"{'entity':<12}{'events':>10}{'invalid':>10}{'time (s)':>10}{'events/s':>11}")
    for item in result.entities:
        typer.echo(
            f"{item.entity:<12}{item.events:>10,}{item.invalid:>10,}{item.seconds:>10.1f}{item.rate:>11,.0f}"
        )
    typer.echo(
        f"caught up in {result.seconds:.1f} s"
        + (" (stages started and stopped)" if result.started_stages else "")
    )


@app.command("producer")
def producer_command(
    until_caught_up: Annotated[
        bool,
        typer.Option("--until-caught-up", help="Exit 0 once everything committed at start-up is published."),
    ] = False,
) -> None:
    """Snapshot, then stream SQL Server CDC changes to the Avro change topics (exactly-once)."""
    from producer.runner import serve_producer
    from producer.settings import ProducerSettings

    settings = ProducerSettings.load()
    configure_logging(settings.log_level)
    summary = serve_producer(settings, until_caught_up=until_caught_up)
    snapshot = sum(summary.snapshot_rows.values())
    streamed = sum(summary.events.values())
    by_op = ", ".join(f"{op}={n:,}" for op, n in sorted(summary.events.items()))
    typer.echo(
        f"published {snapshot:,} snapshot rows and {streamed:,} change events "
        f"({by_op or 'none'}) in {summary.seconds:.1f} s"
    )


@app.command("processor")
def processor_command() -> None:
    """Run a stream-processor worker (Faust): validate, transform, dead-letter; scale by adding workers."""
    from stream_processors.runner import serve_processor
    from stream_processors.settings import ProcessorSettings

    settings = ProcessorSettings.load()
    configure_logging(settings.log_level)
    serve_processor(settings)


@app.command("sink")
def sink_command() -> None:
    """Run the sink: clean topics to PostgreSQL, exactly once, position-guarded (migrates first)."""
    from sink.runner import serve_sink
    from sink.settings import SinkSettings

    settings = SinkSettings.load()
    configure_logging(settings.log_level)
    serve_sink(settings)


@app.command("verify")
def verify_command(
    entity: Annotated[
        list[str] | None,
        typer.Option(
            "--entity", "-e", help="Entity to verify (repeatable or comma-separated; default: all)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=0, help="Keys listed per kind and entity.")] = 20,
) -> None:
    """Reconcile PACS with the target: counts, row hashes by key range, missing/extra/different keys.

    Exit 0 when they match (dead-lettered rows allowed, and listed), 1 on any unexplained difference.
    """
    from reconcile.report import render_text
    from reconcile.runner import run_verify
    from reconcile.settings import ReconcileSettings

    settings = ReconcileSettings.load()
    configure_logging(settings.log_level)
    report = run_verify(settings, entity, limit=limit)
    typer.echo(json.dumps(report.as_dict(), indent=2) if as_json else render_text(report))
    if report.exit_code:
        raise typer.Exit(code=report.exit_code)


@app.command("resync")
def resync_command(
    entity: Annotated[
        list[str] | None, typer.Option("--entity", "-e", help="Entity to rebuild (repeatable; default: all).")
    ] = None,
) -> None:
    """Rebuild target tables by replaying the compacted clean topics into shadows, then swap them in."""
    import asyncio

    from sink.resync import run_resync
    from sink.settings import SinkSettings

    settings = SinkSettings.load()
    configure_logging(settings.log_level)
    report = asyncio.run(run_resync(settings, entity or list(settings.entities)))
    for name in report.entities:
        typer.echo(
            f"{name:<11} replayed {report.replayed.get(name, 0):>9,}  rows {report.rows.get(name, 0):>9,}"
            f"  swept {report.swept.get(name, 0):>7,}"
        )
    typer.echo(
        f"resync run {report.run_id} swapped in {len(report.entities)} tables in {report.seconds:.1f} s"
    )


token_app = typer.Typer(help="Bearer tokens for the management API.", no_args_is_help=True)
app.add_typer(token_app, name="token")


@app.command("api")
def api_command(
    openapi: Annotated[
        bool, typer.Option("--openapi", help="Print the OpenAPI document and exit (no server, no database).")
    ] = False,
) -> None:
    """Serve the management API (/api/v1/pacs-sync) and the /pacs-sync dashboard (HTTPS with a cert)."""
    from api.app import openapi_document
    from api.runner import serve_api
    from api.settings import ApiSettings

    if openapi:
        typer.echo(json.dumps(openapi_document(), indent=2, sort_keys=True))
        return
    settings = ApiSettings.load()
    configure_logging(settings.log_level)
    serve_api(settings)


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="viewer, operator or admin.")],
    ttl: Annotated[str, typer.Option(help="Lifetime: 30m, 8h, 7d, 2w or seconds.")] = "8h",
    subject: Annotated[
        str | None, typer.Option(help="Who the token is for (audit trail); default: the current user.")
    ] = None,
) -> None:
    """Issue a bearer token for the API (HS256 with PACS_API_JWT_SECRET, RS256 with the private key)."""
    import getpass

    from api.auth import Role, issue_token, parse_ttl
    from api.settings import ApiSettings

    settings = ApiSettings.load()
    configure_logging(settings.log_level)
    try:
        chosen = Role(role)
    except ValueError as exc:
        raise typer.BadParameter("must be viewer, operator or admin", param_hint="--role") from exc
    try:
        lifetime = parse_ttl(ttl)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ttl") from exc
    keys = settings.token_keys()
    if keys.sign_key is None:
        raise ConfigurationError(
            "RS256 tokens are signed with the private key: set PACS_API_JWT_PRIVATE_KEY_FILE"
        )
    who = subject or getpass.getuser()
    token = issue_token(keys, subject=who, role=chosen, ttl=lifetime)
    logger.info("issued a %s token for %s, valid %s", chosen.value, who, ttl)
    typer.echo(token)


@app.command("check-connection")
def check_connection_command(
    conformance: Annotated[
        bool, typer.Option("--conformance", help="Also run every production CDC statement once, read-only.")
    ] = False,
) -> None:
    """Test the PACS connection and CDC set-up; print OK or the error code with the cause."""
    from producer.check import check_connection
    from producer.settings import ProducerSettings

    settings = ProducerSettings.load()
    configure_logging(settings.log_level)
    results = check_connection(settings, conformance=conformance)
    for result in results:
        typer.echo(f"{'ok  ' if result.ok else 'FAIL'} {result.name:<34} {result.detail}")
    failed = [r for r in results if not r.ok]
    typer.echo("OK" if not failed else f"{len(failed)} check(s) failed")
    if failed:
        raise typer.Exit(code=1)


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
