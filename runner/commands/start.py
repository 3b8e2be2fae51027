"""What an invocation hands its command: the settings, the target, the report and where output goes.

:class:`runner.commands.run.Run` extends it with the project and the database;
the no-op answer (:mod:`.at_target`) needs only this, and so imports no SQLAlchemy.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from runner.report import RunReport
    from runner.settings import Settings
    from runner.target import Target


@dataclass
class Start:
    """One command's inputs, from :func:`runner.invocation.execute`.

    Attributes:
        settings: the validated, frozen settings.
        target: the tool and the database; a project that configures its own
            database (Django's ``DATABASES``) gives the URL once loaded.
        report: the record of the run; also feeds the metrics.
        run_id: a random id, in every log event and in ``application_name``.
        host: the pod's name (Downward API), or else this host's name.
        started: logs ``run.started`` once the database URL is known (it logs once, however often called).
        stdout: where a command's document goes (the real stdout, even when
            ``sys.stdout`` has been pointed at stderr).
        resolution: ``resolve``'s ``--mark``: ``applied`` or ``not-applied``.
        trace: ``plan --trace``.
    """

    settings: Settings
    target: Target
    report: RunReport
    run_id: str
    host: str
    started: Callable[[Target], None] = lambda _: None
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    resolution: str | None = None
    trace: bool = False
