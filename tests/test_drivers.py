"""The seam: the orchestration never imports a migration tool; drivers load lazily; the lock key is stable."""

from __future__ import annotations

import subprocess
import sys

from runner import drivers, locks

# derive_key("app", None, "alembic_version") as migration-runner 0.1.0 (commit d903b2e) computed it.
KEY_OF_VERSION_0_1 = -9092776214951335027


def test_the_tool_agnostic_modules_import_no_migration_tool() -> None:
    """commands, report, locks, metrics, publish and database import neither Alembic nor Django."""
    code = (
        "import sys, runner.commands, runner.report, runner.locks, runner.metrics, runner.publish, runner.database\n"
        "print(sorted(m for m in ('alembic', 'django') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)

    assert result.stdout.strip() == "[]"


def test_the_drivers_are_the_modules_of_the_package() -> None:
    """A new migration system is one new module in runner/drivers/."""
    assert "alembic" in drivers.tools()


def test_the_default_lock_key_is_what_earlier_versions_derive() -> None:
    """A runner of this version and one of the last exclude each other: the derivation must not move."""
    key = locks.derive_key(database_name="app", schema=None, version_table="alembic_version")

    assert key == KEY_OF_VERSION_0_1
