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
    from runner.report import RunReport
    from runner.settings import Settings
    from runner.target import Target

# What each command logs when the database is at the target, as the full path logs it.
EVENTS: dict[str, tuple[str, Callable[[Settings], dict[str, Any]]]] = {
    "upgrade": ("upgrade.noop", lambda settings: {"target": settings.target, "reason": "already at target"}),
    "check": ("check.ok", lambda settings: {"target": settings.target}),
    "wait": ("wait.finished", lambda _: {"waited_seconds": 0.0}),
}


def answer(
    command: str,
    settings: Settings,
    target: Target,
    *,
    report: RunReport,
    run_id: str,
    host: str,
    started: Callable[[Target], None],
) -> noop.Verdict:
    """Ask :func:`runner.noop.at_target` for ``command``; when it answers yes, log and record it as the full path does.

    Args:
        command: ``upgrade``, ``check`` or ``wait`` (any other gets no answer).
        settings: the run's settings.
        target: the run's tool and database.
        report: the run's record: the target, heads, current revisions and an empty plan on a yes.
        run_id: the run's id, in the sessions' ``application_name``.
        host: the pod's or host's name, in ``application_name``.
        started: logs ``run.started`` with the target (once the URL is known).

    Returns:
        The verdict: ``at_target`` is set when the command is done (exit 0); otherwise the
        full path runs, reusing a project the check loaded and the target it gave.

    Raises:
        ConfigError: the project cannot be loaded (Django), as on the full path.
    """
    if command not in EVENTS:
        return noop.Verdict(None)
    name = sessions.application_name(host=host, namespace=settings.pod_namespace, run_id=run_id)
    verdict = noop.at_target(
        settings,
        target,
        name=name,
        ready=started,
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
