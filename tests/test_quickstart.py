"""The quickstart a newcomer runs, the console script, --help, and README's exit-code table."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
from support import QUICKSTART, REPO, Cli

import runner
from runner.cli import COMMANDS
from runner.errors import MEANINGS

CONSOLE_SCRIPT = Path(sys.executable).with_name("migration-runner")


def copy_quickstart(destination: Path) -> Path:
    shutil.copytree(QUICKSTART, destination, ignore=shutil.ignore_patterns("*.db", "*.lock", "__pycache__"))
    return destination


def test_quickstart_on_the_embedded_default_with_no_settings(tmp_path: Path) -> None:
    """`migration-runner` with nothing configured migrates ./migration-runner.db to head, then is a no-op."""
    project = copy_quickstart(tmp_path / "quickstart")
    cli = Cli(project)
    cli.base_env.pop("MIGRATION_LOG_FORMAT")

    first = subprocess.run([CONSOLE_SCRIPT], cwd=project, env=cli.base_env, capture_output=True, text=True, timeout=60)
    second = subprocess.run([CONSOLE_SCRIPT], cwd=project, env=cli.base_env, capture_output=True, text=True, timeout=60)

    assert first.returncode == 0, first.stdout + first.stderr
    assert second.returncode == 0
    assert '"upgrade.noop"' in second.stdout
    with sqlite3.connect(project / "migration-runner.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("0003",)]
        assert db.execute("SELECT email, display_name FROM accounts ORDER BY id").fetchall() == [
            ("ada@example.com", "ada"),
            ("grace@example.com", "grace"),
        ]
        assert db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_autoindex%'"
        ).fetchall() == [("ix_accounts_email",)]


def test_quickstart_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    """The same project migrates PostgreSQL (the backfill uses split_part there)."""
    cli = Cli(copy_quickstart(tmp_path / "quickstart"))

    result = cli(env={"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_ENVIRONMENT": "production"})

    assert result.code == 0, result.stdout
    with psycopg.connect(pg_url) as db:
        rows = db.execute("SELECT display_name FROM accounts ORDER BY id").fetchall()
    assert rows == [("ada",), ("grace",)]


def test_help_lists_commands_settings_and_exit_codes() -> None:
    """--help names every command, every MIGRATION_* setting and every exit code."""
    result = subprocess.run([CONSOLE_SCRIPT, "--help"], capture_output=True, text=True, timeout=30)

    assert result.returncode == 0
    for command in ("upgrade", "check", "current", "wait", "config"):
        assert f"  {command} " in result.stdout
    for name in ("MIGRATION_DATABASE_URL", "MIGRATION_LOCK_TIMEOUT", "MIGRATION_ENVIRONMENT", "MIGRATION_SECRETS_DIR"):
        assert name in result.stdout
    for code in MEANINGS:
        assert re.search(rf"^\s+{int(code)}\s", result.stdout, re.MULTILINE), code


def test_python_dash_m_runner_is_the_same_command() -> None:
    """`python -m runner --version` answers like the console script."""
    module = subprocess.run([sys.executable, "-m", "runner", "--version"], capture_output=True, text=True, timeout=30)
    script = subprocess.run([CONSOLE_SCRIPT, "--version"], capture_output=True, text=True, timeout=30)

    assert module.returncode == script.returncode == 0
    assert module.stdout == script.stdout
    assert module.stdout.startswith("migration-runner ")


def test_the_command_table_gives_each_commands_exit_codes() -> None:
    """docs/commands.md lists every command with the codes its --help gives (runner.cli.COMMANDS), signals aside."""
    readme = (REPO / "docs" / "commands.md").read_text()
    section = readme.split("# Commands", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([\w-]+)[^\n]*\| ([0-9, ]+) \|$", section, re.MULTILINE)
    documented = {name: tuple(int(code) for code in codes.split(", ")) for name, codes in rows}

    assert documented == {
        name: tuple(code for code in command.codes if code not in (130, 143)) for name, command in COMMANDS.items()
    }


def test_the_exit_code_tables_match_the_code() -> None:
    """README's and docs/exit-codes.md's tables, and docs/troubleshooting.md's entries, list exactly MEANINGS' codes."""
    codes = {int(code) for code in MEANINGS}
    for page, heading in (("README.md", "## Exit codes"), ("docs/exit-codes.md", "# Exit codes")):
        section = (REPO / page).read_text().split(heading, 1)[1].split("\n## ", 1)[0]
        documented = {int(code) for code in re.findall(r"^\|\s*(\d+)\s*\|", section, re.MULTILINE)}
        assert documented == codes, page
    entries = re.findall(r"^## (\d+)(?: and (\d+))?:", (REPO / "docs" / "troubleshooting.md").read_text(), re.MULTILINE)
    assert {int(code) for pair in entries for code in pair if code} == codes


def test_the_constraints_file_readme_installs_from_is_the_lock() -> None:
    """README's quickstart installs with docs/constraints.txt: it must be uv.lock as `uv export` writes it."""
    uv = shutil.which("uv") or str(REPO / ".tools" / "uv" / "bin" / "uv")
    exported = subprocess.run(
        [uv, "export", "--locked", "--no-dev", "--all-extras", "--no-hashes", "--no-emit-project", "--no-header",
         "--quiet"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip

    assert exported == (REPO / "docs" / "constraints.txt").read_text(), "run the uv export line in README"


def test_the_version_is_written_once_and_the_package_metadata_says_the_same() -> None:
    """runner.__version__ is a constant (no importlib.metadata at start-up); hatchling builds the metadata from it."""
    assert importlib.metadata.version(runner.DISTRIBUTION) == runner.__version__
    assert 'path = "runner/__init__.py"' in (REPO / "pyproject.toml").read_text()
