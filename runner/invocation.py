"""One invocation of a command, from loaded settings to the exit code and every report of it.

:mod:`runner.cli` parses the arguments and calls :func:`execute`, which loads the
settings, resolves the target (:mod:`runner.target`), sets up logs, metrics and
the deadline, runs the command (:func:`runner.commands.run_command`) or every
database (``--all``, :mod:`runner.fleet`), then writes the termination message,
the result document and the metrics. Every code and event comes from
:func:`runner.errors.outcome_of`; signals and the watchdog are :mod:`runner.process`'s.
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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import runner
from runner import process
from runner.errors import ConfigError, ExitCode, Outcome, outcome_of

if TYPE_CHECKING:
    from runner.report import RunReport
    from runner.settings import Settings
    from runner.target import Target

# Commands that take --all.
ALL_COMMANDS = ("upgrade", "check", "wait")
# Commands whose stdout is a document: their log lines go to stderr instead.
DOCUMENT_COMMANDS = {"current", "config", "plan", "history", "verify"}
# Commands whose stdout is their own document in every format (not the result document).
OWN_DOCUMENT = ("config", "plan", "history", "verify")


def execute(args: argparse.Namespace, settings_flags: dict[str, Any], document: TextIO, *, wants_json: bool) -> int:
    """Run the parsed command and report it; every way out is an exit code of :data:`runner.errors.MEANINGS`.

    Args:
        args: the parsed arguments (:func:`runner.cli.parse`): ``command``, ``all``, ``argv``, ``mark``, ``trace``.
        settings_flags: the settings given as flags, by field name (``None``: not given).
        document: where the command's document goes (stdout, or the descriptor claimed for it).
        wants_json: ``--output json`` as far as known before the settings are loaded.

    Returns:
        The process exit code.
    """
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
    target: Target | None = None
    stop_serving: Callable[[], None] = lambda: None  # noqa: E731
    failure: BaseException | None = None
    code = ExitCode.OK
    try:
        from runner import target as resolving  # noqa: PLC0415
        from runner.settings import load_settings  # noqa: PLC0415

        settings = load_settings(settings_flags, cwd=Path.cwd())
        target = resolving.resolve(settings)
        if target.database_index is not None:  # one line of MIGRATION_DATABASES_FILE: name it, never the URL
            report.database_index, report.database = target.database_index, target.light_url.database_name
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
            code = _run_all(args, settings, target, report, wants_json=wants_json)
        else:
            if settings.metrics_port is not None or settings.metrics_textfile or settings.pushgateway_url:
                from runner.metrics import Metrics  # noqa: PLC0415  (prometheus-client only when metrics go somewhere)

                report.metrics = Metrics(version=runner.__version__, command=args.command)
            if settings.metrics_port is not None:
                stop_serving = _serve_metrics(report, settings)
            code = _run(args, settings, target, report, document, run_id=run_id)
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


def _run_all(
    args: argparse.Namespace, settings: Settings, target: Target, report: RunReport, *, wants_json: bool
) -> ExitCode:
    """``--all``: every database of ``MIGRATION_DATABASES_FILE``, each in a child process (:mod:`runner.fleet`).

    Raises:
        ConfigError: no databases file, or an output only one process can own (a textfile, a metrics port).
    """
    from runner import fleet, logs, urls  # noqa: PLC0415

    if not target.databases:
        raise ConfigError(f"{args.command} --all runs every database of MIGRATION_DATABASES_FILE, which is not set")
    if settings.metrics_textfile is not None or settings.metrics_port is not None:
        raise ConfigError(
            "--all runs each database in a process of its own, which cannot share MIGRATION_METRICS_TEXTFILE or "
            "MIGRATION_METRICS_PORT: use MIGRATION_PUSHGATEWAY_URL (each database pushes its own group)"
        )
    databases = []
    for index, (_, raw) in enumerate(target.databases):
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
    _report(report, settings, document=document if command not in OWN_DOCUMENT else None)


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
    return sys.stderr if command in DOCUMENT_COMMANDS or wants_json else sys.stdout


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


def _run(
    args: argparse.Namespace, settings: Settings, target: Target, report: RunReport, document: TextIO, *, run_id: str
) -> ExitCode:
    """One database: its secrets registered, the deadline started, the run's fields bound, then the command."""
    from runner import commands, logs  # noqa: PLC0415
    from runner.commands.start import Start  # noqa: PLC0415

    if target.url_text is not None:
        for secret in target.light_url.secrets():
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
    if report.database_index is not None:  # one line of MIGRATION_DATABASES_FILE: name it, never the URL
        # `database_name`: run.started's `database` is the (redacted) URL.
        logs.bind_run(database_index=report.database_index, database_name=report.database)
    started: list[bool] = []

    def log_started(known: Target) -> None:
        if not started:
            started.append(True)
            _log_started(settings, known)

    start = Start(settings, target, report, run_id, host, log_started, document, args.mark, args.trace)
    return commands.run_command(args.command, start)


def _log_started(settings: Settings, target: Target) -> None:
    from runner import logs  # noqa: PLC0415

    logs.get_logger().info(
        "run.started",
        version=runner.__version__,
        tool=target.tool,
        target=settings.target,
        database=target.shown_url if target.url_text is not None else None,
        database_source=target.source or None,
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
