"""For arbitrary settings values, every run ends in a documented exit code, with no traceback and no 70.

Issue 23, point 12. Hypothesis draws one to three ``MIGRATION_*`` variables with odd values
(empty, blanks, signs, huge and tiny numbers, ``nan``, JSON fragments, other scripts' digits,
long and non-ASCII text) and runs ``upgrade`` or ``check`` as a user would, on a real database.
Settings that would reach outside this test (another database or host, a program to run, files
to write) are left out: their own tests cover them. The seeds that found bugs are explicit examples.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support import Cli, make_project

from runner.cli import COMMANDS
from runner.settings import Settings

# Reaching outside the test: another server, a program, a file or a port on this machine.
OUTSIDE = {
    "database_url",
    "databases_file",
    "before_apply_command",
    "pushgateway_url",
    "metrics_textfile",
    "termination_log",
    "junit_xml",
    "metrics_port",
    "metrics_bind_address",
    "alembic_config",
    "script_location",
}
NAMES = sorted(f"MIGRATION_{name.upper()}" for name in Settings.model_fields if name not in OUTSIDE)
ODD = st.sampled_from(
    [
        "",
        " ",
        "0",
        "-0",
        "-1",
        "+0",
        "1e309",
        "nan",
        "inf",
        "0.0000001",
        "99999999999999999999",
        "true",
        "null",
        "[]",
        "{}",
        '["a"]',
        "\u0661",
        "@",
        "heads",
        "x" * 300,
        "p\u00e4ss'w\"rd\\%+",
    ]
)
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
ENVIRONMENTS = st.dictionaries(st.sampled_from(NAMES), st.one_of(ODD, TEXT), min_size=1, max_size=3)


@pytest.mark.timeout(900)
@settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(env=ENVIRONMENTS, command=st.sampled_from(["upgrade", "check"]))
@example(env={"MIGRATION_TARGET": "@"}, command="upgrade")  # 70: Alembic's resolver asserted
@example(env={"MIGRATION_TARGET": "-999"}, command="check")  # 0: read as base
@example(env={"MIGRATION_POD_NAME": "p" * 300}, command="upgrade")  # 70: the ledger column overflowed
@example(env={"MIGRATION_HISTORY_TABLE": "pg_class"}, command="upgrade")  # 70, and a stray public.pg_class
@example(env={"MIGRATION_HISTORY_TABLE": "alembic_version"}, command="upgrade")  # 65
@example(env={"MIGRATION_VERSION_TABLE_SCHEMA": "nope"}, command="upgrade")  # 70: no such schema
@example(env={"MIGRATION_STATEMENT_TIMEOUT": "0.0001"}, command="upgrade")  # 70: the runner's own query cancelled
@example(env={"MIGRATION_DATABASE_INDEX": "\u0661"}, command="upgrade")
def test_any_settings_end_in_a_documented_code_without_a_traceback(
    cli: Cli, pg_databases: Callable[[], str], tmp_path: Path, env: dict[str, str], command: str
) -> None:
    """Any settings values end upgrade and check in a documented code, never 70, never a traceback."""
    project = tmp_path / f"project-{len(list(tmp_path.iterdir()))}"
    make_project(project, revisions=2)
    base = {"MIGRATION_DATABASE_URL": pg_databases(), "MIGRATION_CONNECT_TIMEOUT": "1", "MIGRATION_TIMEOUT": "60"}

    result = cli(command, env={**base, **env}, cwd=project, timeout=120)

    text = result.stdout + result.stderr
    assert result.code in COMMANDS[command].codes, f"{command} {env!r}: exit {result.code}\n{text[-2000:]}"
    assert result.code != 70 and "Traceback" not in text, f"{command} {env!r}\n{text[-2000:]}"
    assert not result.named("run.crashed"), f"{command} {env!r}\n{text[-2000:]}"
