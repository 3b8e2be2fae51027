"""migration-runner: apply Alembic revisions under a database advisory lock.

The command line is the product (``migration-runner --help``); the modules are
``settings`` (configuration), ``locks`` (advisory and file locks),
``migrations`` (the Alembic driver), ``commands`` (what each command does),
``errors`` (the exit-code contract), ``logs`` and ``cli``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("migration-runner")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
