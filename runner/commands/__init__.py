"""The commands a run executes, from ``upgrade`` to ``config``, one module per family.

Each takes a :class:`Run` and returns an exit code, or raises one of the errors
in :mod:`runner.errors`; :mod:`runner.cli` turns those into exit codes.

- :mod:`.run`: the :class:`Run` context;
- :mod:`.migrate`: ``upgrade`` and ``downgrade``, one code path;
- :mod:`.inspect`: ``check``, ``current``, ``wait``, ``history`` and ``config``;
- :mod:`.plan`: ``plan`` and ``plan --trace``;
- :mod:`.ledger_ops`: ``accept`` and ``resolve``;
- :mod:`.verify`: ``verify``.
"""

from runner.commands.inspect import check, current, history, show_config, wait
from runner.commands.ledger_ops import accept, resolve
from runner.commands.migrate import downgrade, upgrade
from runner.commands.plan import plan
from runner.commands.run import Run
from runner.commands.verify import verify

__all__ = [
    "Run",
    "accept",
    "check",
    "current",
    "downgrade",
    "history",
    "plan",
    "resolve",
    "show_config",
    "upgrade",
    "verify",
    "wait",
]
