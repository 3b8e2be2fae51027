"""migration-runner: apply Alembic revisions under a database advisory lock.

The command line is the product (``migration-runner --help``); the modules are
``settings`` (configuration), ``locks`` (advisory and file locks),
``drivers`` (one module per migration system behind one protocol:
``drivers.alembic``), ``ledger`` (the runner's history table), ``commands``
(what each command does), ``errors`` (the exit-code contract), ``logs`` and ``cli``.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["__version__"]


@functools.cache
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415  (not on every import)

    try:
        return version("migration-runner")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0.0.0"


def __getattr__(name: str) -> Any:
    # ``__version__`` is looked up lazily (PEP 562): the CLI installs its signal
    # handlers before anything slow is imported.
    if name == "__version__":
        return _version()
    raise AttributeError(name)
