"""The commands a run executes, from ``upgrade`` to ``config``, one module per family.

Each takes a :class:`Run` and returns an exit code, or raises one of the errors
in :mod:`runner.errors`; :func:`run_command` is the one way in.

- :mod:`.at_target`: the no-op answer of ``upgrade``, ``check`` and ``wait``, without SQLAlchemy;
- :mod:`.run`: the :class:`Run` context;
- :mod:`.migrate`: ``upgrade`` and ``downgrade``, one code path;
- :mod:`.inspect`: ``check``, ``current``, ``wait``, ``history`` and ``config``;
- :mod:`.plan`: ``plan`` and ``plan --trace``;
- :mod:`.ledger_ops`: ``accept`` and ``resolve``;
- :mod:`.verify`: ``verify``.

The modules of the full path import SQLAlchemy, which costs a pod start about
0.2 s; :func:`run_command` imports them only when the no-op check did not answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from runner.commands import at_target

if TYPE_CHECKING:
    from runner.commands.start import Start
    from runner.errors import ExitCode

COMMANDS = (
    "upgrade",
    "downgrade",
    "plan",
    "check",
    "current",
    "wait",
    "history",
    "config",
    "resolve",
    "accept",
    "verify",
)


def run_command(command: str, start: Start) -> ExitCode:
    """Run ``command``: the no-op answer when it has one, else the command on a :class:`Run`.

    Args:
        command: one of :data:`COMMANDS`.
        start: the command's inputs.

    Returns:
        The command's exit code.

    Raises:
        RunnerError: any error of :mod:`runner.errors`, turned into its code by the caller.
    """
    verdict = at_target.answer(command, start)
    if verdict.at_target is not None:
        from runner.errors import ExitCode  # noqa: PLC0415  (a type above; the value only here)

        return ExitCode.OK
    # The full path: these import SQLAlchemy.
    from runner.commands import inspect, ledger_ops, migrate, plan, verify  # noqa: PLC0415
    from runner.commands.run import Run  # noqa: PLC0415

    handlers: dict[str, Callable[[Run], ExitCode]] = {
        "upgrade": migrate.upgrade,
        "downgrade": migrate.downgrade,
        "plan": plan.plan,
        "check": inspect.check,
        "current": inspect.current,
        "wait": inspect.wait,
        "history": inspect.history,
        "config": inspect.show_config,
        "resolve": ledger_ops.resolve,
        "accept": ledger_ops.accept,
        "verify": verify.verify,
    }

    run = Run.after(start, preloaded=verdict.project, target=verdict.target)
    if run.target.url_text is None and command != "config":
        run.project()  # a project that configures its own database (Django's DATABASES) supplies the URL
    run.started(run.target)
    return handlers[command](run)
