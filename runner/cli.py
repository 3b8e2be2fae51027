"""The ``migration-runner`` command line: parse, load settings, run, exit with the documented code.

Signals, the deadline, the watchdog and the document's file descriptor are
:mod:`runner.process`'s; every code and event comes from :func:`runner.errors.outcome_of`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import sys
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from runner import process
from runner.errors import MEANINGS, ConfigError, ExitCode, Interrupted, Outcome, RunTimeout, outcome_of

if TYPE_CHECKING:
    from runner.commands import Run
    from runner.report import RunReport
    from runner.settings import Settings


@dataclass(frozen=True)
class Command:
    """One command: what it does, the settings of its own it reads, and the exit codes it can return."""

    summary: str
    settings: tuple[str, ...]
    codes: tuple[int, ...]
    takes_target: bool = False


_STOPPED = (130, 143)
_UPGRADE_SETTINGS = (
    "target",
    "lock_timeout",
    "lock_key",
    "ddl_lock_timeout",
    "statement_timeout",
    "revision_retries",
    "allow_unknown_revision",
    "before_apply_command",
    "before_apply_timeout",
    "history_table",
    "drift",
    "timeout",
    "grace_period",
    "databases_file",
    "database_index",
    "parallelism",
)
_MANY = ("databases_file", "database_index", "parallelism")
COMMANDS: dict[str, Command] = {
    "upgrade": Command(
        "apply pending revisions under the advisory lock (default)",
        _UPGRADE_SETTINGS,
        (0, 65, 66, 69, 75, 78, *_STOPPED),
        takes_target=True,
    ),
    "downgrade": Command(
        "revert revisions down to TARGET (required) under the advisory lock; refused in production unless allowed",
        (*_UPGRADE_SETTINGS, "allow_downgrade"),
        (0, 65, 66, 69, 75, 78, *_STOPPED),
        takes_target=True,
    ),
    "plan": Command(
        "read-only, no lock: the pending revisions, their SQL and what it locks; exit 1 if any is pending "
        "(--output text | json | markdown)",
        ("target", "allow_trace", "lock_timeout", "lock_key"),
        (0, 1, 65, 66, 69, 75, 78, *_STOPPED),
        takes_target=True,
    ),
    "check": Command(
        "exit 0 if the database is at (or past) the target, 1 and list what is pending if not; "
        "compares applied revisions' files with the ledger (MIGRATION_DRIFT)",
        ("target", "drift", "history_table", *_MANY),
        (0, 1, 65, 66, 69, 75, 78, *_STOPPED),
        takes_target=True,
    ),
    "current": Command(
        "print the current and head revisions (--output json for the result document); "
        "exit 65 while the ledger shows an interrupted step",
        ("history_table",),
        (0, 65, 69, 75, 78, *_STOPPED),
    ),
    "wait": Command(
        "poll read-only until the database is at the target (init-containers); "
        "exit 65 at once if the ledger shows an interrupted step",
        ("target", "wait_timeout", "allow_unknown_revision", "history_table", *_MANY),
        (0, 65, 66, 75, 78, *_STOPPED),
        takes_target=True,
    ),
    "resolve": Command(
        "record what you found about an interrupted revision: --mark applied | not-applied",
        ("lock_timeout", "lock_key", "history_table"),
        (0, 69, 75, 78, *_STOPPED),
    ),
    "history": Command(
        "print the ledger, newest first: who applied or reverted what, when, from where, with which checksum "
        "(TARGET: one revision's rows; --output json)",
        ("history_table",),
        (0, 69, 75, 78, *_STOPPED),
        takes_target=True,
    ),
    "accept": Command(
        "record an applied revision's file as it is now, after you reviewed an edit: clears its drift "
        "(TARGET: the revision; the ledger keeps the change)",
        ("lock_timeout", "lock_key", "history_table"),
        (0, 69, 75, 78, *_STOPPED),
        takes_target=True,
    ),
    "verify": Command(
        "CI checks on a scratch database: one head, upgrade one revision at a time, models match the schema, "
        "the stairway down and up, no trace after a downgrade; exit 1 if a check failed "
        "(--output text | json | markdown, --junit-xml PATH)",
        ("verify_heads", "verify_irreversible", "verify_allow_nonempty", "junit_xml", "lock_timeout", "history_table"),
        (0, 1, 65, 69, 75, 78, *_STOPPED),
    ),
    "config": Command("print the effective settings as JSON, secrets redacted, with where each came from", (), (0, 78)),
}
# Commands that take --all.
_ALL_COMMANDS = ("upgrade", "check", "wait")
# Commands whose stdout is a document: their log lines go to stderr instead.
_DOCUMENT_COMMANDS = {"current", "config", "plan", "history", "verify"}
# Commands whose stdout is their own document in every format (not the result document).
_OWN_DOCUMENT = ("config", "plan", "history", "verify")
_FLAGS = (
    "output",
    "environment",
    "database_url",
    "target",
    "lock_timeout",
    "wait_timeout",
    "log_level",
    "log_format",
    "alembic_config",
    "script_location",
)
# verify's own options, settings too (MIGRATION_VERIFY_ALLOW_NONEMPTY, MIGRATION_JUNIT_XML).
_VERIFY_FLAGS = ("verify_allow_nonempty", "junit_xml")


def _settings_help(names: Sequence[str] | None = None) -> str:
    from runner.settings import PREFIX, Settings  # noqa: PLC0415  (only --help needs the model)

    fields = Settings.model_fields
    chosen = list(fields) if names is None else list(names)
    return "\n".join(f"  {PREFIX + name.upper():<36} {fields[name].description or ''}" for name in chosen)


def _codes_help(codes: Sequence[int] | None = None) -> str:
    chosen = [ExitCode(code) for code in codes] if codes is not None else list(MEANINGS)
    return "\n".join(f"  {int(code):>3}  {MEANINGS[code]}" for code in chosen)


def _epilog() -> str:
    commands_text = "\n".join(f"  {name:<9} {command.summary}" for name, command in COMMANDS.items())
    return (
        f"commands (migration-runner COMMAND --help for each):\n{commands_text}\n\n"
        f"settings (environment variables; flags above override them):\n{_settings_help()}\n"
        f"  {'MIGRATION_SECRETS_DIR':<36} directory of secret files (default /run/secrets), "
        "e.g. migration_database_url\n\n"
        f"exit codes:\n{_codes_help()}\n"
    )


def _command_epilog(command: Command) -> str:
    own = f"settings of its own:\n{_settings_help(command.settings)}\n\n" if command.settings else ""
    return (
        f"{own}and the settings every command reads (migration-runner --help).\n\n"
        f"exit codes:\n{_codes_help(command.codes)}\n"
    )


def _options() -> argparse.ArgumentParser:
    """The options every command takes, before or after its name (absent ones set nothing)."""
    options = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    options.add_argument("--json", action="store_true", help="the same as --output json")
    for name in _FLAGS:
        metavar = "SECONDS" if name.endswith("timeout") else name.split("_")[-1].upper()
        extra = " (visible in the process list: prefer the variable)" if name == "database_url" else ""
        options.add_argument(
            f"--{name.replace('_', '-')}", dest=name, metavar=metavar, help=f"overrides MIGRATION_{name.upper()}{extra}"
        )
    return options


def build_parser(*, with_epilog: bool = True) -> argparse.ArgumentParser:
    """The argument parser: ``migration-runner [COMMAND] [TARGET] [options]``; ``COMMAND --help`` describes each."""
    options = _options()
    # No abbreviations: `verify --all` must not mean --allow-nonempty, nor a prefix any later flag.
    parser = argparse.ArgumentParser(
        prog="migration-runner",
        description="Apply Alembic revisions or Django migrations under a database advisory lock.",
        allow_abbrev=False,
        epilog=_epilog() if with_epilog else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[options],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands (default: upgrade)")
    for name, command in COMMANDS.items():
        sub = commands.add_parser(
            name,
            allow_abbrev=False,
            parents=[options],
            help=command.summary,
            description=command.summary,
            epilog=_command_epilog(command) if with_epilog else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if command.takes_target:
            sub.add_argument(
                "revision",
                nargs="?",
                metavar="TARGET",
                help="revision to reach: heads, head, an id or prefix, +N (upgrade), -N or base (downgrade); "
                "Django: app_label, app_label:migration_name, app_label:zero; the same as --target",
            )
        if name == "plan":
            sub.add_argument(
                "--trace",
                action="store_true",
                help="PostgreSQL: run the pending revisions under the lock in a transaction that is always rolled "
                "back, and report the locks each statement took (refused in production unless MIGRATION_ALLOW_TRACE)",
            )
        if name in _ALL_COMMANDS:
            sub.add_argument(
                "--all",
                action="store_true",
                help="every database of MIGRATION_DATABASES_FILE, MIGRATION_PARALLELISM at a time, each in a "
                "process of its own; exit with the most severe code (README, 'Many databases')",
            )
        if name == "verify":
            sub.add_argument(
                "--allow-nonempty",
                dest="verify_allow_nonempty",
                action="store_const",
                const=True,
                help="run on a database that already holds tables (never point verify at production)",
            )
            sub.add_argument("--junit-xml", dest="junit_xml", metavar="PATH", help="also write the report as JUnit XML")
        if name == "resolve":
            sub.add_argument(
                "--mark", required=True, choices=["applied", "not-applied"], help="what the revision's changes are"
            )
    return parser


def _parse(arguments: list[str]) -> argparse.Namespace:
    wants_help = "-h" in arguments or "--help" in arguments
    args = build_parser(with_epilog=wants_help).parse_args(arguments)
    args.command = getattr(args, "command", None) or "upgrade"
    if getattr(args, "revision", None) is not None:
        args.target = args.revision
    for name in (*_FLAGS, *_VERIFY_FLAGS, "mark"):
        setattr(args, name, getattr(args, name, None))
    args.trace = bool(getattr(args, "trace", False))
    args.all = bool(getattr(args, "all", False))
    args.argv = [argument for argument in arguments if argument != "--all"]  # for --all's children
    if getattr(args, "json", False):
        args.output = "json"
    return args


def _version() -> str:
    import runner  # noqa: PLC0415  (importlib.metadata only when asked)

    return str(runner.__version__)


def entrypoint() -> None:
    """The ``migration-runner`` program (through :func:`runner.__main__.main`): :func:`main`, then exit.

    Raises:
        SystemExit: always, with :func:`main`'s exit code.
    """
    process.run_program(main)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code (see :data:`runner.errors.MEANINGS`).

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The process exit code.
    """
    process.stop_on_signals()  # first of all (runner.process)
    try:
        args = _parse(list(sys.argv[1:] if argv is None else argv))
    except (Interrupted, RunTimeout) as error:
        return _startup_stopped(error)
    # Until the settings are loaded, the flag or the raw variable decides.
    wants_json = (args.output or os.environ.get("MIGRATION_OUTPUT", "")).lower() == "json"
    document = process.claim_stdout() if wants_json else sys.stdout
    try:
        return _main(args, document, wants_json=wants_json)
    except (Interrupted, RunTimeout) as error:  # before the run's own handling was ready
        return _startup_stopped(error)


def _startup_stopped(error: Interrupted | RunTimeout) -> int:
    result = outcome_of(error)
    with contextlib.suppress(Exception):
        sys.stderr.write(json.dumps({"level": "warning", "event": result.event, "error": result.message}) + "\n")
    return int(result.code)


def _main(args: argparse.Namespace, document: TextIO, *, wants_json: bool) -> int:
    from runner import logs  # noqa: PLC0415  (imported after the signal handlers: see the module docstring)
    from runner.report import RunReport  # noqa: PLC0415

    stream = _log_stream(args.command, wants_json=wants_json)
    logs.configure(stream=stream)
    log = logs.get_logger()
    # Every line carries the run's fields, even an error about the settings themselves: until they
    # are loaded, the raw variables stand in.
    run_id = uuid.uuid4().hex[:12]
    logs.bind_run(
        run_id=run_id,
        command=args.command,
        environment=(args.environment or os.environ.get("MIGRATION_ENVIRONMENT") or "development").lower(),
        host=os.environ.get("MIGRATION_POD_NAME") or socket.gethostname(),
    )
    report = RunReport(command=args.command)
    settings: Settings | None = None
    stop_serving: Callable[[], None] = lambda: None  # noqa: E731
    failure: BaseException | None = None
    code = ExitCode.OK
    try:
        from runner.settings import load_settings  # noqa: PLC0415

        settings = load_settings({name: getattr(args, name) for name in (*_FLAGS, *_VERIFY_FLAGS)}, cwd=Path.cwd())
        process.watchdog.grace_seconds = settings.grace_period
        wants_json = settings.output == "json"
        if settings.output == "markdown" and args.command not in ("plan", "verify"):
            raise ConfigError(f"MIGRATION_OUTPUT=markdown is for plan and verify; {args.command} takes text or json")
        if (wants_json or args.command in ("plan", "verify")) and document is sys.stdout:
            document = process.claim_stdout()  # plan's stdout is the plan, verify's the report, in every format
        process.watchdog.on_expiry = lambda code: _abandoned(report, settings, code)
        logs.configure(
            level=settings.log_level, fmt=settings.log_format, stream=_log_stream(args.command, wants_json=wants_json)
        )
        if args.all:
            code = _run_all(args, settings, report, wants_json=wants_json)
        else:
            if settings.metrics_port is not None or settings.metrics_textfile or settings.pushgateway_url:
                from runner.metrics import Metrics  # noqa: PLC0415  (prometheus-client only when metrics go somewhere)

                report.metrics = Metrics(version=_version(), command=args.command)
            if settings.metrics_port is not None:
                stop_serving = _serve_metrics(report, settings)
            code = _run(args, settings, report, document, run_id=run_id)
    except BaseException as error:  # every way out goes through outcome_of
        failure = error
    result = outcome_of(failure, code=code)
    with process.reporting(result):
        _finish(
            log,
            report,
            settings,
            command=args.command,
            failure=failure,
            result=result,
            document=document if wants_json else None,
        )
    _linger(settings, stop_serving)
    return int(result.code)


def _run_all(args: argparse.Namespace, settings: Settings, report: RunReport, *, wants_json: bool) -> ExitCode:
    """``--all``: every database of ``MIGRATION_DATABASES_FILE``, each in a child process (:mod:`runner.fleet`).

    Raises:
        ConfigError: no databases file, or an output only one process can own (a textfile, a metrics port).
    """
    from runner import fleet, logs, urls  # noqa: PLC0415

    if not settings.databases:
        raise ConfigError(f"{args.command} --all runs every database of MIGRATION_DATABASES_FILE, which is not set")
    if settings.metrics_textfile is not None or settings.metrics_port is not None:
        raise ConfigError(
            "--all runs each database in a process of its own, which cannot share MIGRATION_METRICS_TEXTFILE or "
            "MIGRATION_METRICS_PORT: use MIGRATION_PUSHGATEWAY_URL (each database pushes its own group)"
        )
    databases = []
    for index, (_, raw) in enumerate(settings.databases):
        parsed = urls.parse(raw)
        for secret in parsed.secrets():
            logs.add_secret(secret)
        databases.append(fleet.Database(index=index, name=parsed.database_name or ""))
    stream = _log_stream(args.command, wants_json=wants_json)
    log_format = settings.log_format if settings.log_format != "auto" else ("console" if stream.isatty() else "json")
    report.databases = []
    return fleet.run_all(
        args.argv,
        databases,
        parallelism=settings.parallelism,
        log_format=log_format,
        log_stream=stream,
        grace_seconds=settings.grace_period,
        into=report.databases,
    )


def _finish(
    log: Any,
    report: RunReport,
    settings: Settings | None,
    *,
    command: str,
    failure: BaseException | None,
    result: Outcome,
    document: TextIO | None,
) -> None:
    """Log the outcome, then the termination message, the result document and the metrics."""
    if failure is not None:
        report.failed(failure, result.message, result.details)
        fields: dict[str, Any] = {"error": result.message, "exit_code": int(result.code), **result.details}
        debug = logging.getLogger().isEnabledFor(logging.DEBUG)
        getattr(log, result.level)(result.event, **fields, exc_info=failure if result.internal or debug else None)
    report.finish(int(result.code), result.word)
    log.info(
        "run.finished",
        exit_code=int(result.code),
        outcome=report.outcome,
        duration_seconds=round(report.duration_seconds or 0.0, 6),
    )
    _report(report, settings, document=document if command not in _OWN_DOCUMENT else None)


def _abandoned(report: RunReport, settings: Settings | None, code: int) -> None:
    """The watchdog's last act: a termination message that says why the process ended."""
    from runner import publish  # noqa: PLC0415

    if report.exit_code is None:  # the work had not ended: say so
        report.error = {"class": "GracePeriodOver", "sqlstate": None, "revision": None}
        grace = process.watchdog.grace_seconds
        report.error["message"] = f"the run did not stop within MIGRATION_GRACE_PERIOD={grace:g} s"
        report.finish(code, Outcome(ExitCode(code), "run.abandoned").word)
    if settings is not None:
        explicit = "termination_log" in settings.model_fields_set
        publish.write_termination_message(report, settings.termination_log, explicit=explicit)


def _log_stream(command: str, *, wants_json: bool) -> TextIO:
    """Stdout, unless stdout carries a document (``current``, ``config``, ``--output json``)."""
    return sys.stderr if command in _DOCUMENT_COMMANDS or wants_json else sys.stdout


def _serve_metrics(report: RunReport, settings: Settings) -> Callable[[], None]:

    assert settings.metrics_port is not None and report.metrics is not None  # noqa: S101  (checked by the caller)
    try:
        return report.metrics.serve(port=settings.metrics_port, address=settings.metrics_bind_address)
    except (OSError, ValueError) as error:  # in use, no permission, or an address that does not parse
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigError(
            f"MIGRATION_METRICS_PORT={settings.metrics_port} / MIGRATION_METRICS_BIND_ADDRESS="
            f"{settings.metrics_bind_address!r}: cannot serve metrics there ({reason})"
        ) from None


def _run(args: argparse.Namespace, settings: Settings, report: RunReport, document: TextIO, *, run_id: str) -> ExitCode:
    from runner import logs, noop  # noqa: PLC0415

    if settings.database_url is not None:
        for secret in settings.light_url.secrets():
            logs.add_secret(secret)
    for pushgateway_secret in (settings.pushgateway_password, settings.pushgateway_token):
        logs.add_secret(pushgateway_secret.get_secret_value() if pushgateway_secret else None)
    if settings.pushgateway_url:  # userinfo in the URL: the password as written and as decoded
        written = urllib.parse.urlsplit(settings.pushgateway_url).password
        logs.add_secret(written)
        logs.add_secret(urllib.parse.unquote(written) if written else None)
    process.start_deadline(settings.timeout)
    host = settings.pod_name or socket.gethostname()
    context = {"pod": settings.pod_name, "namespace": settings.pod_namespace, "node": settings.node_name}
    if report.metrics:
        report.metrics.run_info.labels(run_id=run_id, **{k: v or "" for k, v in context.items()}).set(1)
    logs.bind_run(
        run_id=run_id,
        command=args.command,
        environment=settings.environment,
        host=host,
        **{k: v for k, v in context.items() if v},
    )
    if settings.database_index_in_use is not None:  # one line of MIGRATION_DATABASES_FILE: name it, never the URL
        report.database_index, report.database = settings.database_index_in_use, settings.light_url.database_name
        # `database_name`: run.started's `database` is the (redacted) URL.
        logs.bind_run(database_index=report.database_index, database_name=report.database)
    started: list[bool] = []

    def log_started() -> None:
        if not started:
            started.append(True)
            _log_started(settings)

    verdict = noop.Verdict(None)
    if args.command in _AT_TARGET_EVENTS:
        # What every pod start sees: already at head (upgrade in the migration init-container or Job,
        # wait in the application's). Answered, when it can be, without SQLAlchemy or the tool.
        name = noop.application_name(host=host, namespace=settings.pod_namespace, run_id=run_id)
        compare = args.command in ("upgrade", "check")
        verdict = noop.at_target(
            settings, Path.cwd(), name=name, ready=log_started, ledger=compare, unfinished_only=args.command == "wait"
        )
        if verdict.at_target is not None:
            found = verdict.at_target
            report.target, report.heads = list(found.heads), list(found.heads)
            report.database_at(found.current)
            report.planned([])
            if found.compared:
                report.drift_compared([])
            event, fields = _AT_TARGET_EVENTS[args.command]
            logs.get_logger().info(event, current=list(found.current), **fields(settings))
            return ExitCode.OK
    from runner import commands  # noqa: PLC0415

    run: Run = commands.Run(
        settings=settings,
        cwd=Path.cwd(),
        report=report,
        run_id=run_id,
        stdout=document,
        resolution=args.mark,
        trace=args.trace,
        preloaded=verdict.project,
    )
    if settings.database_url is None and args.command != "config":
        run.project()  # a project that configures its own database (Django's DATABASES) supplies the URL
    log_started()
    handlers: dict[str, Callable[[Run], ExitCode]] = {
        "upgrade": commands.upgrade,
        "downgrade": commands.downgrade,
        "plan": commands.plan,
        "check": commands.check,
        "current": commands.current,
        "wait": commands.wait,
        "resolve": commands.resolve,
        "history": commands.history,
        "accept": commands.accept,
        "verify": commands.verify,
        "config": commands.show_config,
    }
    return handlers[args.command](run)


# What each command logs when the database is at the target, as the full path logs it (runner.commands).
_AT_TARGET_EVENTS: dict[str, tuple[str, Callable[[Settings], dict[str, Any]]]] = {
    "upgrade": ("upgrade.noop", lambda settings: {"target": settings.target, "reason": "already at target"}),
    "check": ("check.ok", lambda settings: {"target": settings.target}),
    "wait": ("wait.finished", lambda _: {"waited_seconds": 0.0}),
}


def _log_started(settings: Settings) -> None:
    from runner import logs  # noqa: PLC0415

    logs.get_logger().info(
        "run.started",
        version=_version(),
        tool=settings.chosen_tool,
        target=settings.target,
        database=settings.light_url.redacted() if settings.database_url is not None else None,
        database_source=settings.database_source or None,
    )


def _report(report: RunReport, settings: Settings | None, *, document: TextIO | None) -> None:
    """Write the termination message and the result document first (local, fast), then publish the metrics."""
    from runner import publish  # noqa: PLC0415

    if settings is not None:
        explicit = "termination_log" in settings.model_fields_set
        publish.write_termination_message(report, settings.termination_log, explicit=explicit)
    else:  # the settings are invalid: honour the raw variable, best effort
        raw = os.environ.get("MIGRATION_TERMINATION_LOG")
        path = Path(raw) if raw else publish.DEFAULT_TERMINATION_LOG
        publish.write_termination_message(report, path, explicit=raw is not None)
    if document is not None:
        with contextlib.suppress(Exception):
            document.write(json.dumps(report.document()) + "\n")
            document.flush()
    if settings is not None:
        publish.publish_metrics(report, settings)


def _linger(settings: Settings | None, stop_serving: Callable[[], None]) -> None:
    """Keep the metrics endpoint up for ``MIGRATION_METRICS_LINGER`` seconds; a signal cuts it short."""
    from runner import logs  # noqa: PLC0415

    seconds = settings.metrics_linger if settings is not None and settings.metrics_port is not None else 0.0
    try:
        process.linger(seconds, lambda: logs.get_logger().info("metrics.lingering", seconds=seconds))
    finally:
        stop_serving()
