"""This process's own sessions on a MySQL server, registered without importing SQLAlchemy.

The lock connection cancels what they still run on the server before it releases
the lock (:mod:`runner.locks`), so a statement a stopped run left behind cannot go
on under the next holder. The runner's own engines (:mod:`runner.database`) and
Django's connections (:mod:`runner.drivers.django`, on every Django run, the
no-op included) add their ids here; importing SQLAlchemy for that would cost the
Django no-op about 0.16 s.
"""

mysql_connection_ids: set[int] = set()  # CONNECTION_ID() of each
