"""Careless inputs end in 78 with one line naming the input and the way out, never 70 with a traceback (issue 23).

Each case here exited 70 ("internal error ... a bug in migration-runner") on the code before
issue 23; the database is untouched afterwards.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from support import Cli, Result, make_project, query, rev_id

Edit = Callable[[Path], None]


def untouched(url: str) -> bool:
    """No version table and no ledger: nothing ran."""
    return query(url, "SELECT to_regclass('alembic_version'), to_regclass('migration_runner_history')") == [
        (None, None)
    ]


def refused(result: Result, *words: str) -> str:
    """The run exited 78 with one error line (no traceback) that holds ``words``; returns the line."""
    assert result.code == 78, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    failures = [e for e in result.events if e.get("level") == "error" and e.get("exit_code") == 78]
    assert len(failures) == 1, result.stdout + result.stderr
    message = failures[0]["error"]
    assert "\n" not in message and "internal error" not in message
    for word in words:
        assert word in message, message
    return message


def ini_edit(old: str, new: str) -> Edit:
    def edit(project: Path) -> None:
        ini = project / "alembic.ini"
        text = ini.read_text()
        assert old in text
        ini.write_text(text.replace(old, new, 1))

    return edit


def append_bytes(data: bytes) -> Edit:
    def edit(project: Path) -> None:
        with (project / "alembic.ini").open("ab") as file:
            file.write(data)

    return edit


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        pytest.param(lambda p: (p / "alembic.ini").write_text(""), ("alembic.ini", "[alembic]"), id="empty"),
        pytest.param(ini_edit("[alembic]\n", ""), ("MissingSectionHeaderError",), id="no-section-header"),
        pytest.param(
            ini_edit("script_location = ", "script_location = %(nope)s"), ("interpolation",), id="bad-interpolation"
        ),
        pytest.param(ini_edit("%(here)s/migrations", "50%/migrations"), ("%%",), id="lone-percent"),
        pytest.param(
            ini_edit("[alembic]\n", "[alembic]\nscript_location = migrations\n"),
            ("DuplicateOptionError",),
            id="duplicate-key",
        ),
        pytest.param(append_bytes(b"\n# caf\xe9\n"), ("UTF-8",), id="not-utf8"),
    ],
)
def test_a_malformed_alembic_ini_is_78_naming_the_file(cli: Cli, pg_url: str, edit: Edit, words: tuple[str]) -> None:
    make_project(cli.cwd, revisions=2)
    edit(cli.cwd)

    result = cli("upgrade", env={"MIGRATION_DATABASE_URL": pg_url})

    refused(result, *words)
    assert untouched(pg_url)


@pytest.mark.parametrize("command", ["upgrade", "downgrade", "plan", "check", "wait", "current"])
@pytest.mark.parametrize("target", ["@", "@@", "base@"])
def test_a_target_alembic_cannot_split_is_78(cli: Cli, pg_url: str, command: str, target: str) -> None:
    make_project(cli.cwd, revisions=2)

    result = cli(command, "--", target, env={"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_WAIT_TIMEOUT": "5"})

    if command == "current":  # current takes no target: argparse says so (2)
        assert result.code == 2
        return
    refused(result, repr(target))
    assert untouched(pg_url)


def test_a_revision_whose_down_revision_is_itself_is_78_naming_its_file(cli: Cli, pg_url: str) -> None:
    make_project(cli.cwd, revisions=3, down_revisions={2: rev_id(2)})

    result = cli("upgrade", env={"MIGRATION_DATABASE_URL": pg_url})

    refused(result, "0002_r.py", "loop")
    assert untouched(pg_url)


def test_two_files_with_one_revision_id_are_78_naming_both(cli: Cli, pg_url: str) -> None:
    """Alembic itself only warns and keeps whichever file the directory lists first."""
    make_project(cli.cwd, revisions=3)
    versions = cli.cwd / "migrations" / "versions"
    shutil.copy(versions / "0003_r.py", versions / "0003_copy.py")

    result = cli("upgrade", env={"MIGRATION_DATABASE_URL": pg_url})

    refused(result, "0003_r.py", "0003_copy.py", "'0003'")
    assert untouched(pg_url)
