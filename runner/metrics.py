"""Prometheus metrics for a short-lived run, and the three ways they leave the process.

A migration Job lives for seconds, so a scrape every 30 s mostly misses it.
The metrics live in the runner's own ``CollectorRegistry`` (prometheus-client
docs, "Exporting > Pushgateway": batch jobs use their own registry) and go
out as any mix of:

- an HTTP endpoint served while the run lasts, optionally for a while after;
- a push to a Pushgateway at the end of every run, successful or not;
- a textfile for node-exporter's textfile collector, written atomically.

A failure to publish is logged and never changes the exit code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    exposition,
    generate_latest,
    pushadd_to_gateway,
    start_http_server,
    write_to_textfile,
)

PREFIX = "migration_runner"
PUSH_TIMEOUT_SECONDS = 5.0  # within the CLI's bound on all of the reporting
# Revisions take from milliseconds (a column) to an hour (a backfill).
REVISION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class Metrics:
    """The runner's metrics, updated while the run goes on.

    Args:
        version: migration-runner's version, for ``build_info``.
        command: the command this run executes, a label of ``runs_total``.
    """

    def __init__(self, *, version: str, command: str) -> None:
        # *_created series describe a long-lived process; for a run of seconds they are noise.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.command = command
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs = Counter(
            f"{PREFIX}_runs", "Runs of migration-runner, by command and outcome.", ["command", "outcome"], registry=r
        )
        self.run_duration = Gauge(f"{PREFIX}_run_duration_seconds", "Wall time of the run in seconds.", registry=r)
        self.lock_wait = Gauge(
            f"{PREFIX}_lock_wait_seconds", "Seconds the run waited for the migration lock.", registry=r
        )
        self.revisions_applied = Counter(
            f"{PREFIX}_revisions_applied",
            "Revisions applied (direction up) or reverted (down) by the run.",
            ["direction"],
            registry=r,
        )
        self.revision_duration = Histogram(
            f"{PREFIX}_revision_duration_seconds",
            "Seconds to apply or revert one revision and record it.",
            ["direction"],
            buckets=REVISION_BUCKETS,
            registry=r,
        )
        self.pending = Gauge(
            f"{PREFIX}_pending_revisions", "Revisions between the database and the target, as last read.", registry=r
        )
        self.retries = Counter(
            f"{PREFIX}_retries", "Retries by reason: connect, reconnect or revision.", ["reason"], registry=r
        )
        self.database_revision = Gauge(
            f"{PREFIX}_database_revision_info", "The database's current revision (value 1).", ["revision"], registry=r
        )
        self.build = Gauge(f"{PREFIX}_build_info", "migration-runner's version (value 1).", ["version"], registry=r)
        self.run_info = Gauge(
            f"{PREFIX}_run_info", "Where the run ran (value 1).", ["run_id", "pod", "namespace", "node"], registry=r
        )
        # Registered only when the run succeeds, so a push after a failure
        # (a POST, which replaces only the names it carries) keeps the last one.
        self.last_success = Gauge(
            f"{PREFIX}_last_success_timestamp_seconds", "Unix time of the last successful run.", registry=None
        )
        # Registered only by a run that compared the files (upgrade, check), so that other
        # commands' pushes leave the last comparison's value in place.
        self.drifted = Gauge(
            f"{PREFIX}_drifted_revisions",
            "Applied revisions whose file's checksum differs from the one the ledger recorded, as last compared.",
            registry=None,
        )
        self._drift_registered = False
        self.build.labels(version=version).set(1)
        self.retries.labels(reason="connect")
        self.retries.labels(reason="reconnect")
        self.retries.labels(reason="revision")
        direction = "down" if command == "downgrade" else "up"
        self.revisions_applied.labels(direction=direction)
        self.revision_duration.labels(direction=direction)

    def database_at(self, revisions: Sequence[str]) -> None:
        """Record the database's current revisions (replacing the previous ones)."""
        self.database_revision.clear()
        for revision in revisions or ["base"]:
            self.database_revision.labels(revision=revision).set(1)

    def drifted_revisions(self, count: int) -> None:
        """Record how many applied revisions drifted, by the comparison just made."""
        self.drifted.set(count)
        if not self._drift_registered:
            self.registry.register(self.drifted)
            self._drift_registered = True

    def finish(self, *, outcome: str, duration_seconds: float) -> None:
        """Record the end of the run: its outcome and duration, and the success time on success."""
        self.runs.labels(command=self.command, outcome=outcome).inc()
        self.run_duration.set(duration_seconds)
        if outcome == "success":
            self.last_success.set(time.time())
            self.registry.register(self.last_success)

    def exposition(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)

    def serve(self, *, port: int, address: str) -> Callable[[], None]:
        """Serve ``/metrics`` from a background thread.

        Args:
            port: TCP port.
            address: address to bind, e.g. ``0.0.0.0`` or ``127.0.0.1``.

        Returns:
            A function that stops the server.
        """
        server, thread = start_http_server(port, addr=address, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(5)

        return stop

    def push(
        self,
        url: str,
        *,
        job: str,
        grouping_key: dict[str, str],
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
    ) -> None:
        """Push to a Pushgateway with POST (``pushadd_to_gateway``).

        Args:
            url: the Pushgateway's base URL.
            job: the ``job`` of the grouping key.
            grouping_key: the other labels of the group.
            username: basic-auth user, with ``password``.
            password: basic-auth password.
            token: a bearer token, sent as ``Authorization: Bearer``.

        Raises:
            OSError: the Pushgateway could not be reached or refused the push.
        """

        def handler(
            url: str, method: str, timeout: float | None, headers: list[tuple[str, str]], data: bytes
        ) -> Callable[[], None]:
            if username is not None:
                return exposition.basic_auth_handler(
                    url, method, timeout, headers, data, username=username, password=password or ""
                )
            if token is not None:
                headers = [*headers, ("Authorization", f"Bearer {token}")]
            return exposition.default_handler(url, method, timeout, headers, data)

        pushadd_to_gateway(
            url,
            job=job,
            registry=self.registry,
            grouping_key=grouping_key,
            timeout=PUSH_TIMEOUT_SECONDS,
            handler=handler,
        )

    def write_textfile(self, path: Path) -> None:
        """Write the metrics for node-exporter's textfile collector.

        ``write_to_textfile`` writes a temporary file beside ``path`` and renames
        it, so the collector never reads half a file.

        Raises:
            OSError: the directory is missing or not writable.
        """
        write_to_textfile(str(path), self.registry)
