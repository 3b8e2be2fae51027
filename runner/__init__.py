"""migration-runner: apply Alembic revisions under a database advisory lock.

The command line is the product (``migration-runner --help``); the modules are
``settings`` (configuration), ``locks`` (advisory and file locks),
``drivers`` (one module per migration system behind one protocol:
``drivers.alembic``), ``ledger`` (the runner's history table), ``commands``
(what each command does), ``errors`` (the exit-code contract), ``logs`` and ``cli``.
"""

__all__ = ["__version__"]

# The one place the version is written: hatchling reads it from here for the package metadata
# (pyproject.toml, [tool.hatch.version]), and reading a constant costs nothing at start-up,
# unlike importlib.metadata, which scans site-packages.
__version__ = "0.1.0"
