"""The record of one run, and the documents made from it.

The commands report what happens as it happens (:class:`RunReport` keeps the
metrics current for a scrape mid-run). When the run ends, the same record
gives the result document (``--output json``, schema in
``docs/result.schema.json``) and the Kubernetes termination message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runner.drivers import Applied, Step
from runner.errors import MigrationFailed
from runner.logs import redact_text

if TYPE_CHECKING:
    from runner.metrics import Metrics

# 2: a revision is under "revision", as in every document and log event; "id" repeats it until version 3.
SCHEMA_VERSION = 2
# The kubelet keeps at most 4096 bytes of a termination message (Kubernetes
# docs, "Determine the Reason for Pod Failure > Customizing the termination message").
TERMINATION_MESSAGE_MAX_BYTES = 4096


@dataclass
class RunReport:
    """What one run did, filled in by the commands while they work.

    Attributes:
        command: ``upgrade``, ``check``, ``current``, ``wait`` or ``config``.
        metrics: updated on every event, for a scrape during the run; ``None``
            when no metrics output is configured (prometheus-client is then never imported).
        before: the database's revisions when the run first read them.
        after: its revisions when the run last read them.
        target: the revisions the run aimed at.
        heads: the script directory's heads.
        applied: revisions this run applied (or reverted), in order.
        pending: revisions still between the database and the target.
        lock_wait_seconds: time spent waiting for the lock; ``None`` if not taken.
        exit_code: set by :meth:`finish`.
        error: ``{class, sqlstate, revision, message}`` of the failure, if any.
        drift: applied revisions whose file changed (:meth:`runner.drift.Drift.document`);
            ``None`` when the run did not compare (``MIGRATION_DRIFT=off``, other commands).
        database_index, database: the database's index in ``MIGRATION_DATABASES_FILE`` and its name.
        databases: ``--all``: one entry per database (:func:`runner.fleet.run_all`).
    """

    command: str
    metrics: Metrics | None = None
    started: float = field(default_factory=time.monotonic)
    before: list[str] | None = None
    after: list[str] | None = None
    target: list[str] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)
    applied: list[Applied] = field(default_factory=list)
    pending: list[dict[str, str]] = field(default_factory=list)
    lock_wait_seconds: float | None = None
    exit_code: int | None = None
    outcome: str | None = None
    duration_seconds: float | None = None
    error: dict[str, Any] | None = None
    drift: list[dict[str, Any]] | None = None
    database_index: int | None = None
    database: str | None = None
    databases: list[dict[str, Any]] | None = None

    @property
    def direction(self) -> str:
        """``up``, or ``down`` for ``downgrade`` (``applied`` then lists what it reverted)."""
        return "down" if self.command == "downgrade" else "up"

    def database_at(self, revisions: Sequence[str]) -> None:
        """The database was read at these revisions."""
        if self.before is None:
            self.before = list(revisions)
        self.after = list(revisions)
        if self.metrics:
            self.metrics.database_at(revisions)

    def planned(self, pending: Sequence[Step]) -> None:
        """These revisions are pending, in order."""
        self.pending = [{"revision": s.revision, "id": s.revision, "message": s.message} for s in pending]
        if self.metrics:
            self.metrics.pending.set(len(self.pending))

    def drift_compared(self, drifted: Sequence[dict[str, Any]]) -> None:
        """The applied revisions were compared with their files; these drifted."""
        self.drift = list(drifted)
        if self.metrics:
            self.metrics.drifted_revisions(len(self.drift))

    def lock_acquired(self, wait_seconds: float) -> None:
        """The lock was taken after ``wait_seconds``."""
        self.lock_wait_seconds = wait_seconds
        if self.metrics:
            self.metrics.lock_wait.set(wait_seconds)

    def revision_applied(self, applied: Applied) -> None:
        """A revision was applied and committed."""
        self.applied.append(applied)
        # Committed: the database's heads move on without another query.
        if self.direction == "up":
            self.after = sorted((set(self.after or []) - set(applied.parents)) | {applied.revision})
        else:
            self.after = sorted((set(self.after or []) - {applied.revision}) | set(applied.parents))
        if self.pending and self.pending[0]["revision"] == applied.revision:  # the usual case: in plan order
            del self.pending[0]
        else:
            self.pending = [p for p in self.pending if p["revision"] != applied.revision]
        if self.metrics:
            self.metrics.database_at(self.after)
            self.metrics.revisions_applied.labels(direction=self.direction).inc()
            self.metrics.revision_duration.labels(direction=self.direction).observe(applied.duration_seconds)
            self.metrics.pending.set(len(self.pending))

    def retried(self, reason: str) -> None:
        """Something was retried: ``connect``, ``reconnect`` or ``revision``."""
        if self.metrics:
            self.metrics.retries.labels(reason=reason).inc()

    def failed(self, error: BaseException, message: str, details: dict[str, Any] | None = None) -> None:
        """The run ends with ``error``.

        Args:
            error: what ended it.
            message: the one line the log shows; redacted here again, as every output is.
            details: ``revision``, ``sqlstate``, ``partially_applied``; ``stderr`` and
                ``command_exit_status`` (the before-apply command); where they apply.
        """
        details = details or {}
        self.error = {
            "class": type(error).__name__,
            "sqlstate": details.get("sqlstate"),
            "revision": details.get("revision"),
            "message": redact_text(message),
        }
        if "partially_applied" in details and (details.get("revision") or isinstance(error, MigrationFailed)):
            self.error["partially_applied"] = details["partially_applied"]
        if "stderr" in details:  # MIGRATION_BEFORE_APPLY_COMMAND's
            self.error["command_exit_status"] = details.get("command_exit_status")
            self.error["stderr"] = [redact_text(line) for line in details["stderr"]]

    def finish(self, exit_code: int, outcome: str) -> None:
        """The run is over: record its exit code, outcome and duration."""
        self.exit_code = exit_code
        self.outcome = outcome
        self.duration_seconds = time.monotonic() - self.started
        if self.metrics:
            self.metrics.finish(outcome=outcome, duration_seconds=self.duration_seconds)

    def _where(self) -> dict[str, Any]:
        """The database's index and name, for a run of ``MIGRATION_DATABASES_FILE``; nothing otherwise."""
        if self.database_index is None:
            return {}
        return {"database_index": self.database_index, "database": self.database}

    def document(self) -> dict[str, Any]:
        """The result document (schema version :data:`SCHEMA_VERSION`, ``docs/result.schema.json``)."""
        extra: dict[str, Any] = self._where()
        if self.databases is not None:
            extra["databases"] = self.databases
        return extra | {
            "schema_version": SCHEMA_VERSION,
            "success": self.exit_code == 0,
            "command": self.command,
            "direction": self.direction,
            "exit_code": self.exit_code,
            "outcome": self.outcome,
            "from": self.before,
            "to": self.after,
            "target": self.target,
            "heads": self.heads,
            "applied": [
                {
                    "revision": a.revision,
                    "id": a.revision,
                    "message": a.message,
                    "duration_seconds": round(a.duration_seconds, 6),
                }
                for a in self.applied
            ],
            "pending": self.pending,
            "lock_wait_seconds": None if self.lock_wait_seconds is None else round(self.lock_wait_seconds, 6),
            "duration_seconds": round(self.duration_seconds or 0.0, 6),
            "error": self.error,
            "drift": self.drift,
        }

    def termination_message(self) -> str:
        """A compact JSON summary for ``/dev/termination-log``, at most 4096 bytes.

        ``kubectl describe pod`` shows it as the container's last state message.
        The error message is shortened, never the JSON structure.
        """
        error = self.error or {}
        summary: dict[str, Any] = self._where() | {
            "outcome": self.outcome,
            "exit_code": self.exit_code,
            "from": self.before,
            "to": self.after,
            "failed_revision": error.get("revision"),
            "sqlstate": error.get("sqlstate"),
            "error": error.get("message"),
        }
        if self.databases is not None:  # --all: which databases failed, by index
            summary["failed_indexes"] = [e["database_index"] for e in self.databases if e["exit_code"] != 0]
        text = json.dumps(summary, separators=(",", ":"))
        message = summary["error"] or ""
        while len(text.encode()) > TERMINATION_MESSAGE_MAX_BYTES and message:
            excess = len(text.encode()) - TERMINATION_MESSAGE_MAX_BYTES
            message = message[: max(0, len(message) - excess - 1)]
            summary["error"] = message + "…"
            text = json.dumps(summary, separators=(",", ":"))
        return text
