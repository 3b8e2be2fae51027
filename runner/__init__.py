"""migration-runner: apply Alembic revisions or Django migrations under a database advisory lock.

The command line is the product (``migration-runner --help``). ``cli`` parses,
``invocation`` runs one command and reports it, ``process`` owns signals and the
deadline, ``errors`` is the exit-code contract, ``settings`` and ``target`` read
the configuration once, ``commands`` holds one module per command family, and
``drivers`` one module per migration system (docs/drivers.md).
"""

__all__ = ["DISTRIBUTION", "__version__"]

# The name on PyPI. `migration-runner` there is an unrelated project (MySQL scripts), so the
# distribution has a name of its own; the command stays `migration-runner`, the package `runner`.
DISTRIBUTION = "kube-migration-runner"

# The one place the version is written: hatchling reads it from here for the package metadata
# (pyproject.toml, [tool.hatch.version]), and reading a constant costs nothing at start-up,
# unlike importlib.metadata, which scans site-packages.
__version__ = "0.1.0"
