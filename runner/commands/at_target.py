"""The no-op answer of ``upgrade``, ``check`` and ``wait``: already at the heads, said without SQLAlchemy.

What every pod start asks (``upgrade`` in the migration init-container or Job,
``wait`` in the application's), and the answer is almost always yes.
:mod:`runner.noop` answers it, when it can, without importing SQLAlchemy or the
tool; this module logs what the full path would log for the same answer, so a
reader of the events cannot tell the two paths apart. It imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runner import logs, noop, sessions

if TYPE_CHECKING:
    from runner.commands.start import Start
    from runner.settings import Settings

# What each command logs when the database is at the target, as the full path logs it.
EVENTS: dict[str, tuple[str, Callable[[Settings], dict[str, Any]]]] = {
    "upgrade": ("upgrade.noop", lambda settings: {"target": settings.target, "reason": "already at target"}),
    "check": ("check.ok", lambda settings: {"target": settings.target}),
    "wait": ("wait.finished", lambda _: {"waited_seconds": 0.0}),
}


def answer(command: str, start: Start) -> noop.Verdict:
    """Ask :func:`runner.noop.at_target` for ``command``; when it answers yes, log and record it as the full path does.

    Args:
        command: ``upgrade``, ``check`` or ``wait`` (any other gets no answer).
        start: the command's inputs; on a yes, ``start.report`` gets the target, heads,
            current revisions and an empty plan.

    Returns:
        The verdict: ``at_target`` is set when the command is done (exit 0); otherwise the
        full path runs, reusing a project the check loaded and the target it gave.

    Raises:
        ConfigError: the project cannot be loaded (Django), as on the full path.
    """
    if command not in EVENTS:
        return noop.Verdict(None)
    settings, report = start.settings, start.report
    name = sessions.application_name(host=start.host, namespace=settings.pod_namespace, run_id=start.run_id)
    verdict = noop.at_target(
        settings,
        start.target,
        name=name,
        ready=start.started,
        ledger=command in ("upgrade", "check"),
        unfinished_only=command == "wait",
    )
    if verdict.at_target is not None:
        found = verdict.at_target
        report.target, report.heads = list(found.heads), list(found.heads)
        report.database_at(found.current)
        report.planned([])
        if found.compared:
            report.drift_compared([])
        event, fields = EVENTS[command]
        logs.get_logger().info(event, current=list(found.current), **fields(settings))
    return verdict
