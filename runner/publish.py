"""What leaves the process when a run ends: metrics (textfile, Pushgateway) and the termination message.

Every step here is best effort: a failure is logged as ``publish.failed``
with what failed, and never changes the exit code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from runner.logs import get_logger
from runner.report import RunReport
from runner.settings import Settings

DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")


@contextmanager
def _best_effort(target: str) -> Iterator[None]:
    try:
        yield
    except Exception as error:
        get_logger().warning("publish.failed", target=target, error=f"{type(error).__name__}: {error}")


def grouping_key(settings: Settings, report: RunReport) -> dict[str, str]:
    """The Pushgateway group of this runner: environment, in Kubernetes namespace, and the database's index and name.

    The pod name is left out on purpose: a Job's pods get new names on every
    run, and the Pushgateway keeps every group forever, so a per-pod group
    would pile up and leave ``last_success`` stale in all but one. The pod and
    node are in ``migration_runner_run_info`` instead.
    """
    key: dict[str, str] = {"environment": settings.environment}
    if settings.pod_namespace:
        key["namespace"] = settings.pod_namespace
    if report.database_index is not None:  # one group per database of MIGRATION_DATABASES_FILE
        key["database_index"] = str(report.database_index)
        key["database"] = report.database or ""
    return key


def publish_metrics(report: RunReport, settings: Settings) -> None:
    """Write the textfile and push to the Pushgateway, as configured."""
    log = get_logger()
    metrics = report.metrics
    if metrics is None:  # no metrics output is configured
        return
    if settings.metrics_textfile is not None:
        with _best_effort("textfile"):
            metrics.write_textfile(settings.metrics_textfile)
            log.info("publish.textfile", path=str(settings.metrics_textfile))
    if settings.pushgateway_url:
        with _best_effort("pushgateway"):
            metrics.push(
                settings.pushgateway_url,
                job=settings.pushgateway_job,
                grouping_key=grouping_key(settings, report),
                username=settings.pushgateway_username,
                password=settings.pushgateway_password.get_secret_value() if settings.pushgateway_password else None,
                token=settings.pushgateway_token.get_secret_value() if settings.pushgateway_token else None,
            )
            log.info("publish.pushgateway", url=settings.pushgateway_url, grouping_key=grouping_key(settings, report))


def write_termination_message(report: RunReport, path: Path, *, explicit: bool) -> None:
    """Write the run's summary where Kubernetes reads the termination message.

    Args:
        report: the finished run.
        path: ``MIGRATION_TERMINATION_LOG`` (default ``/dev/termination-log``).
        explicit: the path was configured; then the file is created if missing.
            The default path is written only when it exists and is writable, as
            it does in a Kubernetes container.
    """
    if not explicit and not (path.exists() and os.access(path, os.W_OK)):
        return
    with _best_effort("termination-log"):
        path.write_text(report.termination_message())
