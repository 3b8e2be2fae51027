"""This process's own sessions on a MySQL server, registered without importing SQLAlchemy.

The lock connection cancels what they still run on the server before it releases
the lock (:mod:`runner.locks`), so a statement a stopped run left behind cannot go
on under the next holder. The runner's own engines (:mod:`runner.database`) and
Django's connections (:mod:`runner.drivers.django`, on every Django run, the
no-op included) add their ids here; importing SQLAlchemy for that would cost the
Django no-op about 0.16 s.

It also holds how the sessions are named (``application_name``) and the units
of the session settings the runner gives every session (``lock_timeout``,
``statement_timeout``, ``lock_wait_timeout``).
"""

import math

mysql_connection_ids: set[int] = set()  # CONNECTION_ID() of each
# PostgreSQL keeps at most NAMEDATALEN - 1 = 63 bytes of application_name
# (PostgreSQL docs, "20.11.3 Other Defaults > application_name").
APPLICATION_NAME_MAX_BYTES = 63


def application_name(*, host: str, namespace: str | None, run_id: str) -> str:
    """How the runner's sessions appear in ``pg_stat_activity``: ``migration-runner <namespace/pod> <run id>``."""
    where = f"{namespace}/{host}" if namespace else host
    return f"migration-runner {where} {run_id}"


def milliseconds(seconds: float) -> int:
    """A duration for a server setting in whole milliseconds: 0 stays 0 ("none"), any positive one is at least 1.

    PostgreSQL reads ``lock_timeout = 0`` and ``statement_timeout = 0`` as "no timeout" (PostgreSQL docs,
    "Client Connection Defaults"), so rounding 0.0004 s down would turn a bound into none.
    """
    return 0 if seconds <= 0 else max(1, math.ceil(seconds * 1000))


def whole_seconds(seconds: float) -> int:
    """A duration in whole seconds, rounded up, for MySQL's ``lock_wait_timeout`` (at least 1)."""
    return max(1, math.ceil(seconds))
