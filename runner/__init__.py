"""migration-runner: apply Alembic revisions or Django migrations under a database advisory lock.

The command line is the product (``migration-runner --help``). ``cli`` parses,
``invocation`` runs one command and reports it, ``process`` owns signals and the
deadline, ``errors`` is the exit-code contract, ``settings`` and ``target`` read
the configuration once, ``commands`` holds one module per command family, and
``drivers`` one module per migration system (docs/drivers.md).
"""

__all__ = ["DISTRIBUTION", "GC_THRESHOLDS", "__version__"]

# The name on PyPI. `migration-runner` there is an unrelated project (MySQL scripts), so the
# distribution has a name of its own; the command stays `migration-runner`, the package `runner`.
DISTRIBUTION = "kube-migration-runner"

# The one place the version is written: hatchling reads it from here for the package metadata
# (pyproject.toml, [tool.hatch.version]), and reading a constant costs nothing at start-up,
# unlike importlib.metadata, which scans site-packages.
__version__ = "0.1.0"

# A run is short, and most of what it allocates lives to the end (modules, classes, the revision
# map): CPython's default, a young collection every 700 allocations, mostly walks survivors.
# Set before the imports (runner.__main__), which make most of a no-op's objects, and kept by
# runner.process.run_program.
GC_THRESHOLDS = (50_000, 20, 20)
