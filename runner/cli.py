"""The ``migration-runner`` command line: the commands, their flags and help; parse, then run one invocation.

Everything after parsing is :func:`runner.invocation.execute`'s. Signals, the
deadline, the watchdog and the document's file descriptor are
:mod:`runner.process`'s; every code and event comes from :func:`runner.errors.outcome_of`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runner import invocation, process
from runner.errors import MEANINGS, ExitCode, Interrupted, RunTimeout, outcome_of


@dataclass(frozen=True)
class Command:
    """One command: what it does, the settings of its own it reads, and the exit codes it can return.

    Attributes:
        target: the help of the command's positional argument, in its own words; None when it takes none.
        metavar: that argument's name in the usage line (``TARGET``, ``REVISION``).
        target_required: the usage line shows it as required; argparse still takes it as optional,
            since ``--target`` or ``MIGRATION_TARGET`` may give it instead.
        not_at_target: what exit 1 means for this command, when it can return 1.
    """

    summary: str
    settings: tuple[str, ...]
    codes: tuple[int, ...]
    target: str | None = None
    metavar: str = "TARGET"
    target_required: bool = False
    not_at_target: str | None = None

    @property
    def takes_target(self) -> bool:
        """Whether the command takes a positional TARGET or REVISION."""
        return self.target is not None


# The forms a target takes, for the commands that move towards one or compare with one.
_FORWARD = (
    "heads (the default: every head), head, a revision id or unique prefix{relative}; Django: app_label "
    "(its leaf node) or app_label:migration_name; the same as --target and MIGRATION_TARGET"
)


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
        target="revision to upgrade to: " + _FORWARD.format(relative=", or +N (N revisions past the current one)"),
    ),
    "downgrade": Command(
        "revert revisions down to TARGET (required) under the advisory lock; refused in production unless allowed",
        (*_UPGRADE_SETTINGS, "allow_downgrade"),
        (0, 65, 66, 69, 75, 78, *_STOPPED),
        target="required: the revision to go down to: a revision id or unique prefix, -N (N revisions back), or base; "
        "Django: app_label:migration_name or app_label:zero; the same as --target and MIGRATION_TARGET",
        target_required=True,
    ),
    "plan": Command(
        "read-only, no lock: the pending revisions, their SQL and what it locks; exit 1 if any is pending "
        "(--output text | json | markdown)",
        ("target", "allow_trace", "lock_timeout", "lock_key"),
        (0, 1, 65, 66, 69, 75, 78, *_STOPPED),
        target="revision to plan up to: " + _FORWARD.format(relative=", or +N"),
        not_at_target="something is pending: the plan lists it",
    ),
    "check": Command(
        "exit 0 if the database is at (or past) the target, 1 and list what is pending if not; "
        "compares applied revisions' files with the ledger (MIGRATION_DRIFT)",
        ("target", "drift", "history_table", *_MANY),
        (0, 1, 65, 66, 69, 75, 78, *_STOPPED),
        target="revision the database must be at or past: " + _FORWARD.format(relative=""),
        not_at_target="the database is not at the target: what is pending is listed",
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
        target="revision to wait for, at or past: " + _FORWARD.format(relative=""),
    ),
    "resolve": Command(
        "record what you found about an interrupted revision: --mark applied | not-applied",
        ("lock_timeout", "lock_key", "history_table"),
        (0, 69, 75, 78, *_STOPPED),
    ),
    "history": Command(
        "print the ledger, newest first: who applied or reverted what, when, from where, with which checksum "
        "(REVISION: one revision's rows; --output json)",
        ("history_table",),
        (0, 69, 75, 78, *_STOPPED),
        target="show only this revision's rows: an Alembic revision id, or Django's app_label.migration_name",
        metavar="REVISION",
    ),
    "accept": Command(
        "record an applied revision's file as it is now, after you reviewed an edit: clears its drift "
        "(the ledger keeps the change)",
        ("lock_timeout", "lock_key", "history_table"),
        (0, 69, 75, 78, *_STOPPED),
        target="the applied revision whose file to record as it is now: an Alembic revision id, or Django's "
        "app_label:migration_name",
        metavar="REVISION",
    ),
    "verify": Command(
        "CI checks on a scratch database: one head, upgrade one revision at a time, models match the schema, "
        "the stairway down and up, no trace after a downgrade; exit 1 if a check failed "
        "(--output text | json | markdown, --junit-xml PATH)",
        (
            "verify_heads",
            "verify_irreversible",
            "noop_downgrades",
            "verify_allow_nonempty",
            "junit_xml",
            "verify_data_dir",
            "lock_timeout",
            "history_table",
        ),
        (0, 1, 65, 69, 75, 78, *_STOPPED),
        not_at_target="a check failed: the report names it",
    ),
    "config": Command("print the effective settings as JSON, secrets redacted, with where each came from", (), (0, 78)),
}
# Flags whose values are a closed list: argparse names them in --help and refuses others (exit 2).
_CHOICES = {
    "output": ("text", "json", "markdown"),
    "log_level": ("debug", "info", "warning", "error"),
    "log_format": ("json", "console", "auto"),
    "environment": ("development", "test", "staging", "production"),
}
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
_VERIFY_FLAGS = ("verify_allow_nonempty", "junit_xml", "verify_data_dir")


def _settings_help(names: Sequence[str] | None = None) -> str:
    from runner.settings import PREFIX, Settings  # noqa: PLC0415  (only --help needs the model)

    fields = Settings.model_fields
    chosen = list(fields) if names is None else list(names)
    return "\n".join(f"  {PREFIX + name.upper():<36} {fields[name].description or ''}" for name in chosen)


def _codes_help(command: Command | None = None) -> str:
    chosen = [ExitCode(code) for code in command.codes] if command is not None else list(MEANINGS)
    meanings = dict(MEANINGS)
    if command is not None and command.not_at_target:
        meanings[ExitCode.NOT_AT_TARGET] = command.not_at_target
    return "\n".join(f"  {int(code):>3}  {meanings[code]}" for code in chosen)


def _epilog() -> str:
    # The commands are listed once, by argparse above; `COMMAND --help` gives each one's arguments and codes.
    return (
        "migration-runner COMMAND --help: a command's arguments, its own settings and its exit codes.\n\n"
        f"settings (environment variables; flags above override them):\n{_settings_help()}\n"
        f"  {'MIGRATION_SECRETS_DIR':<36} directory of secret files (default /run/secrets), "
        "e.g. migration_database_url\n\n"
        f"exit codes:\n{_codes_help()}\n"
    )


def _command_epilog(command: Command) -> str:
    own = f"settings of its own:\n{_settings_help(command.settings)}\n\n" if command.settings else ""
    return (
        f"{own}and the settings every command reads (migration-runner --help).\n\nexit codes:\n{_codes_help(command)}\n"
    )


def _options() -> argparse.ArgumentParser:
    """The options every command takes, before or after its name (absent ones set nothing)."""
    options = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    options.add_argument("--json", action="store_true", help="the same as --output json")
    for name in _FLAGS:
        metavar = "SECONDS" if name.endswith("timeout") else name.split("_")[-1].upper()
        extra = " (visible in the process list: prefer the variable)" if name == "database_url" else ""
        closed: dict[str, Any] = {}
        if choices := _CHOICES.get(name):
            metavar = "{" + ",".join(choices) + "}"
            extra += "; markdown: plan and verify" if name == "output" else ""
            closed = {"choices": choices, "type": str.lower}  # as the variables: PRODUCTION is production
        options.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            metavar=metavar,
            help=f"overrides MIGRATION_{name.upper()}{extra}",
            **closed,
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
            # argparse would print an optional positional as [TARGET].
            usage=f"migration-runner {name} {command.metavar} [options]" if command.target_required else None,
            allow_abbrev=False,
            parents=[options],
            help=command.summary,
            description=command.summary,
            epilog=_command_epilog(command) if with_epilog else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if command.takes_target:
            sub.add_argument("revision", nargs="?", metavar=command.metavar, help=command.target)
        if name == "plan":
            sub.add_argument(
                "--trace",
                action="store_true",
                help="PostgreSQL: run the pending revisions under the lock in a transaction that is always rolled "
                "back, and report the locks each statement took (refused in production unless MIGRATION_ALLOW_TRACE)",
            )
        if name in invocation.ALL_COMMANDS:
            sub.add_argument(
                "--all",
                action="store_true",
                help="every database of MIGRATION_DATABASES_FILE, MIGRATION_PARALLELISM at a time, each in a "
                "process of its own; exit with the most severe code (docs/kubernetes.md, 'Many databases')",
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
            sub.add_argument(
                "--data-dir",
                dest="verify_data_dir",
                metavar="DIR",
                help="rows to put in place before each revision: DIR/REV.sql or DIR/REV.py (seed(connection))",
            )
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
    flags = {name: getattr(args, name) for name in (*_FLAGS, *_VERIFY_FLAGS)}
    try:
        return invocation.execute(args, flags, document, wants_json=wants_json)
    except (Interrupted, RunTimeout) as error:  # before the run's own handling was ready
        return _startup_stopped(error)


def _startup_stopped(error: Interrupted | RunTimeout) -> int:
    result = outcome_of(error)
    with contextlib.suppress(Exception):
        sys.stderr.write(json.dumps({"level": "warning", "event": result.event, "error": result.message}) + "\n")
    return int(result.code)
