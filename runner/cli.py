"""The ``migration-runner`` command line: parse, load settings, run, exit with the documented code."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TextIO

from runner import __version__, commands, database, logs, publish
from runner.errors import MEANINGS, ExitCode, Interrupted, MigrationFailed, RunnerError, RunTimeout, exit_code_for
from runner.metrics import Metrics
from runner.report import RunReport
from runner.settings import PREFIX, Settings, load_settings

COMMANDS: dict[str, tuple[Callable[[commands.Run], ExitCode], str]] = {
    "upgrade": (commands.upgrade, "apply pending revisions under the advisory lock (default)"),
    "check": (commands.check, "exit 0 if the database is at the target, 1 and list what is pending if not"),
    "current": (commands.current, "print the current and head revisions (--output json for the result document)"),
    "wait": (commands.wait, "poll read-only until the database is at the target (init-containers)"),
    "config": (commands.show_config, "print the effective settings as JSON, secrets redacted"),
}
# Commands whose stdout is a document: their log lines go to stderr instead.
_DOCUMENT_COMMANDS = {"current", "config"}
_FLAGS = (
    "output",
    "environment",
    "target",
    "lock_timeout",
    "wait_timeout",
    "log_level",
    "log_format",
    "alembic_config",
    "script_location",
)


def _epilog() -> str:
    commands_text = "\n".join(f"  {name:<9} {text}" for name, (_, text) in COMMANDS.items())
    settings_text = "\n".join(
        f"  {PREFIX + name.upper():<36} {info.description or ''}" for name, info in Settings.model_fields.items()
    )
    codes = "\n".join(f"  {int(code):>3}  {text}" for code, text in MEANINGS.items())
    return (
        f"commands:\n{commands_text}\n\n"
        f"settings (environment variables; flags above override them):\n{settings_text}\n"
        f"  {'MIGRATION_SECRETS_DIR':<36} directory of secret files (default /run/secrets), "
        "e.g. migration_database_url\n\n"
        f"exit codes:\n{codes}\n"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; ``--help`` lists commands, settings and exit codes."""
    parser = argparse.ArgumentParser(
        prog="migration-runner",
        description="Apply Alembic revisions under a database advisory lock.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="upgrade",
        choices=list(COMMANDS),
        metavar="COMMAND",
        help=f"one of {', '.join(COMMANDS)} (default: upgrade)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--json", action="store_true", help="the same as --output json")
    for name in _FLAGS:
        metavar = "SECONDS" if name.endswith("timeout") else name.split("_")[-1].upper()
        parser.add_argument(
            f"--{name.replace('_', '-')}", dest=name, metavar=metavar, help=f"overrides {PREFIX}{name.upper()}"
        )
    return parser


def outcome(code: ExitCode) -> str:
    """A short word for how a run ended: ``success`` or the exit code's name, e.g. ``migration_failed``."""
    return "success" if code == ExitCode.OK else code.name.lower()


def _raise_interrupted(signum: int, _: FrameType | None) -> None:
    # Once: a second signal must not interrupt the rollback and lock release.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Interrupted(signum)


def _start_deadline(seconds: float) -> None:
    """Raise :class:`RunTimeout` in the main thread after ``seconds`` (0: never)."""
    if seconds <= 0:
        return

    def expire(_: int, __: FrameType | None) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        raise RunTimeout(seconds)

    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code (see :data:`runner.errors.MEANINGS`).

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The process exit code.
    """
    args = build_parser().parse_args(argv)
    if args.json:
        args.output = "json"
    # As PID 1 in a container, SIGTERM is ignored unless a handler is installed.
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)
    # Until the settings are loaded, the flag or the raw variable decides.
    wants_json = (args.output or os.environ.get("MIGRATION_OUTPUT", "")).lower() == "json"
    stream = _log_stream(args.command, wants_json=wants_json)
    logs.configure(stream=stream)
    log = logs.get_logger()
    report = RunReport(command=args.command, metrics=Metrics(version=__version__, command=args.command))
    settings: Settings | None = None
    stop_serving: Callable[[], None] = lambda: None  # noqa: E731
    try:
        settings = load_settings({name: getattr(args, name) for name in _FLAGS}, cwd=Path.cwd())
        wants_json = settings.output == "json"
        stream = _log_stream(args.command, wants_json=wants_json)
        logs.configure(level=settings.log_level, fmt=settings.log_format, stream=stream)
        if settings.metrics_port is not None:
            stop_serving = report.metrics.serve(port=settings.metrics_port, address=settings.metrics_bind_address)
        code = _run(args, settings, report)
    except RunnerError as error:
        code = error.exit_code
        report.failed(error, error.message)
        details: dict[str, object] = {}
        if isinstance(error, MigrationFailed):
            details = {
                "revision": error.revision,
                "sqlstate": error.sqlstate,
                "partially_applied": not error.transactional,
            }
        log.error(
            error.event,
            error=error.message,
            exit_code=int(code),
            **details,
            exc_info=logging.getLogger().isEnabledFor(logging.DEBUG),
        )
    except RunTimeout as error:
        code = exit_code_for(error)
        report.failed(error, f"{error}; the running revision was rolled back")
        log.error("run.timeout", error=report.error and report.error["message"], exit_code=int(code))
    except Interrupted as error:
        code = exit_code_for(error)
        report.failed(error, f"interrupted by {error}; the running revision was rolled back")
        log.warning("run.interrupted", signal=str(error), exit_code=int(code))
    except Exception as error:
        code = ExitCode.INTERNAL_ERROR
        report.failed(error, f"internal error: {type(error).__name__}: {error}")
        log.exception("run.crashed", exit_code=int(code))
    signal.setitimer(signal.ITIMER_REAL, 0)  # the deadline covers the work, not the reporting
    report.finish(int(code), outcome(code))
    log.info(
        "run.finished",
        exit_code=int(code),
        outcome=report.outcome,
        duration_seconds=round(report.duration_seconds or 0.0, 6),
    )
    _report(report, settings, wants_json=wants_json and args.command != "config")
    _linger(settings, stop_serving)
    return int(code)


def _log_stream(command: str, *, wants_json: bool) -> TextIO:
    """Stdout, unless stdout carries a document (``current``, ``config``, ``--output json``)."""
    return sys.stderr if command in _DOCUMENT_COMMANDS or wants_json else sys.stdout


def _run(args: argparse.Namespace, settings: Settings, report: RunReport) -> ExitCode:
    if settings.database_url is not None and settings.url.password:
        password = str(settings.url.password)
        for form in (password, urllib.parse.quote(password, safe=""), urllib.parse.quote_plus(password)):
            logs.add_secret(form)  # as decoded and as it may stand %-encoded in a URL
    for secret in (settings.pushgateway_password, settings.pushgateway_token):
        logs.add_secret(secret.get_secret_value() if secret else None)
    _start_deadline(settings.timeout)
    run = commands.Run(settings=settings, cwd=Path.cwd(), report=report)
    context = {"pod": settings.pod_name, "namespace": settings.pod_namespace, "node": settings.node_name}
    report.metrics.run_info.labels(run_id=run.run_id, **{k: v or "" for k, v in context.items()}).set(1)
    logs.bind_run(
        run_id=run.run_id,
        command=args.command,
        environment=settings.environment,
        host=run.host,
        **{k: v for k, v in context.items() if v},
    )
    logs.get_logger().info(
        "run.started",
        version=__version__,
        target=settings.target,
        database=database.redact(settings.url) if settings.database_url is not None else None,
    )
    return COMMANDS[args.command][0](run)


def _report(report: RunReport, settings: Settings | None, *, wants_json: bool) -> None:
    """Publish the metrics, write the termination message, print the result document."""
    if settings is not None:
        publish.publish_metrics(report, settings)
        explicit = "termination_log" in settings.model_fields_set
        publish.write_termination_message(report, settings.termination_log, explicit=explicit)
    else:  # the settings are invalid: honour the raw variable, best effort
        raw = os.environ.get("MIGRATION_TERMINATION_LOG")
        path = Path(raw) if raw else publish.DEFAULT_TERMINATION_LOG
        publish.write_termination_message(report, path, explicit=raw is not None)
    if wants_json:
        sys.stdout.write(json.dumps(report.document()) + "\n")
        sys.stdout.flush()


def _linger(settings: Settings | None, stop_serving: Callable[[], None]) -> None:
    """Keep the metrics endpoint up for ``MIGRATION_METRICS_LINGER`` seconds; a signal cuts it short."""
    try:
        if settings is not None and settings.metrics_port is not None and settings.metrics_linger > 0:
            logs.get_logger().info("metrics.lingering", seconds=settings.metrics_linger)
            time.sleep(settings.metrics_linger)
    except KeyboardInterrupt:
        pass
    finally:
        stop_serving()
