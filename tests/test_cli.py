"""The command line Alembic users already know: `upgrade [TARGET]`, `+N`, `COMMAND --help`, usage errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import Cli, make_project, rev_id, version

from runner.cli import COMMANDS
from runner.errors import MEANINGS


def test_upgrade_takes_the_target_as_alembic_does(cli: Cli, pg_url: str) -> None:
    """`upgrade 0001`, then `upgrade +1`, then `upgrade head`: each lands where Alembic's would."""
    make_project(cli.cwd, revisions=4)
    env = {"MIGRATION_DATABASE_URL": pg_url}

    assert cli("upgrade", rev_id(1), env=env).code == 0
    assert version(pg_url) == [rev_id(1)]
    assert cli("upgrade", "+2", env=env).code == 0
    assert version(pg_url) == [rev_id(3)]
    assert cli("upgrade", "head", env=env).code == 0
    assert version(pg_url) == [rev_id(4)]
    too_far = cli("upgrade", "+1", env=env)
    assert too_far.code == 78, too_far.stdout  # nothing is one past the head


def test_a_relative_target_is_for_upgrade_only(cli: Cli, pg_url: str) -> None:
    """`check +1` would move with the database: 78."""
    make_project(cli.cwd, revisions=2)

    result = cli("check", "+1", env={"MIGRATION_DATABASE_URL": pg_url})

    assert result.code == 78
    assert "relative target applies to upgrade only" in result.one("config.invalid")["error"]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_has_its_own_help(command: str) -> None:
    """`COMMAND --help` names its arguments, its own settings and the exit codes it can return."""
    result = subprocess.run(
        [sys.executable, "-m", "runner", command, "--help"], capture_output=True, text=True, timeout=30
    )

    assert result.returncode == 0
    assert COMMANDS[command].summary in result.stdout
    for name in COMMANDS[command].settings:
        assert f"MIGRATION_{name.upper()}" in result.stdout
    listed = {int(line.split()[0]) for line in result.stdout.split("exit codes:", 1)[1].strip().splitlines()}
    assert listed == set(COMMANDS[command].codes)
    assert listed <= {int(code) for code in MEANINGS}
    if COMMANDS[command].takes_target:
        assert COMMANDS[command].metavar in result.stdout
        argument = " ".join(result.stdout.split("positional arguments:", 1)[1].split("options:", 1)[0].split())
        assert " ".join(str(COMMANDS[command].target).split()) in argument
        if command != "upgrade":
            assert "+N (upgrade)" not in result.stdout and "(downgrade)" not in argument
    one = [line for line in result.stdout.splitlines() if line.strip().startswith("1  ")]
    if 1 in COMMANDS[command].codes:
        assert one == [f"    1  {COMMANDS[command].not_at_target}"]
    assert "--output {text,json,markdown}" in result.stdout


def test_downgrade_shows_its_target_as_required() -> None:
    """`downgrade --help` says `downgrade TARGET`, not `[TARGET]`; without one it names the ways to give it."""
    result = subprocess.run(
        [sys.executable, "-m", "runner", "downgrade", "--help"], capture_output=True, text=True, timeout=30
    )

    assert result.stdout.startswith("usage: migration-runner downgrade TARGET [options]\n")
    assert "[TARGET]" not in result.stdout


def test_the_top_level_help_lists_each_command_once() -> None:
    result = subprocess.run([sys.executable, "-m", "runner", "--help"], capture_output=True, text=True, timeout=30)

    for name, command in COMMANDS.items():
        listed = [line for line in result.stdout.splitlines() if line.split()[:1] == [name]]
        assert len(listed) == 1, (name, listed)
        assert command.summary.split()[0] in listed[0]


def test_a_flag_outside_its_choices_is_a_usage_error_naming_them(cli: Cli) -> None:
    result = cli("check", "--output", "xml")

    assert result.code == 2
    assert "invalid choice: 'xml' (choose from 'text', 'json', 'markdown')" in result.stderr
    assert cli("config", "--environment", "PRODUCTION", env={"MIGRATION_DATABASE_URL": "sqlite:///x.db"}).code == 0


@pytest.mark.parametrize("arguments", [["bogus"], ["upgrade", "--frobnicate"], ["resolve"]])
def test_unknown_arguments_are_a_usage_error_naming_the_valid_ones(arguments: list[str]) -> None:
    """Exit 2, with argparse naming what is valid."""
    result = subprocess.run([sys.executable, "-m", "runner", *arguments], capture_output=True, text=True, timeout=30)

    assert result.returncode == 2
    assert "usage: migration-runner" in result.stderr
    if arguments == ["bogus"]:
        commands = ", ".join(f"'{name}'" for name in COMMANDS)
        assert list(COMMANDS)[:3] == ["upgrade", "downgrade", "plan"] and "accept" in COMMANDS
        assert f"choose from {commands}" in result.stderr
