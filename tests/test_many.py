"""Many databases: MIGRATION_DATABASES_FILE with an index (an Indexed Job's pod), and --all (a CI stage).

Real PostgreSQL databases, the runner as a user runs it.
"""

from __future__ import annotations

import io
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from support import REPO, Cli, advisory_locks_held, applied_counts, make_project, query, version, wait_until

from runner import errors, fleet, forkserver

RESULT_SCHEMA = json.loads((REPO / "docs" / "result.schema.json").read_text())


def with_password(url: str, password: str) -> str:
    """The same database with a password in the URL (the local server trusts any)."""
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@")


def databases_file(directory: Path, urls: list[str]) -> Path:
    path = directory / "databases"
    lines = ["# tenant databases, one URL per line", ""]
    for number, url in enumerate(urls):
        lines += [url, "" if number % 2 else "   # a comment line between tenants"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_index_picks_the_line_and_every_event_names_it(
    cli: Cli, pg_databases: Callable[[], str], tmp_path: Path
) -> None:
    """The index variable or JOB_COMPLETION_INDEX picks the file's line; events and the termination message name it."""
    make_project(cli.cwd, revisions=2)
    urls = [pg_databases() for _ in range(3)]
    env = {"MIGRATION_DATABASES_FILE": str(databases_file(tmp_path, urls))}
    termination = tmp_path / "termination"

    by_variable = cli(
        "upgrade", env={**env, "MIGRATION_DATABASE_INDEX": "1", "MIGRATION_TERMINATION_LOG": str(termination)}
    )
    by_kubernetes = cli("upgrade", env={**env, "JOB_COMPLETION_INDEX": "2"})

    assert by_variable.code == 0, by_variable.stderr
    assert by_kubernetes.code == 0, by_kubernetes.stderr
    assert query(urls[0], "SELECT to_regclass('alembic_version')") == [(None,)]  # not its index
    assert [version(url) for url in urls[1:]] == [["0002"], ["0002"]]
    name = urls[1].rsplit("/", 1)[1]
    assert all(e.get("database_index") == 1 and e.get("database_name") == name for e in by_variable.events)
    assert all(e.get("database_index") == 2 for e in by_kubernetes.events)
    started = by_variable.one("run.started")
    assert started["database_source"] == "MIGRATION_DATABASES_FILE index 1 (line 5)"
    summary = json.loads(termination.read_text())
    assert (summary["database_index"], summary["database"]) == (1, name)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"MIGRATION_DATABASE_INDEX": "3"}, "index 3 is past the end of MIGRATION_DATABASES_FILE"),
        ({"JOB_COMPLETION_INDEX": "x"}, "JOB_COMPLETION_INDEX='x' is not an index"),
        ({}, "set MIGRATION_DATABASE_INDEX"),
        ({"MIGRATION_DATABASE_INDEX": "0", "MIGRATION_DATABASE_URL": "postgresql://h/db"}, "not both"),
        ({"MIGRATION_DATABASE_INDEX": "-1"}, "MIGRATION_DATABASE_INDEX"),
    ],
)
def test_a_bad_index_is_78_naming_it(
    cli: Cli, pg_databases: Callable[[], str], tmp_path: Path, extra: dict[str, str], message: str
) -> None:
    """An index past the file, or not a number, is 78 naming it, and no password from the file is printed."""
    make_project(cli.cwd, revisions=1)
    urls = [with_password(pg_databases(), "s3cret-pw") for _ in range(3)]
    env = {"MIGRATION_DATABASES_FILE": str(databases_file(tmp_path, urls)), **extra}

    result = cli("upgrade", env=env)

    assert result.code == 78, result.stderr
    assert message in result.one("config.invalid")["error"]
    assert "s3cret-pw" not in result.stdout + result.stderr


def test_an_index_without_a_file_is_78(cli: Cli, pg_url: str) -> None:
    """MIGRATION_DATABASE_INDEX without MIGRATION_DATABASES_FILE is 78."""
    make_project(cli.cwd, revisions=1)

    result = cli("upgrade", env={"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_DATABASE_INDEX": "2"})

    assert result.code == 78
    assert "MIGRATION_DATABASES_FILE, which is not set" in result.one("config.invalid")["error"]


def test_a_missing_or_empty_file_is_78(cli: Cli, tmp_path: Path) -> None:
    """A databases file that cannot be read, or lists no URL, is 78."""
    make_project(cli.cwd, revisions=1)
    empty = tmp_path / "empty"
    empty.write_text("# nothing yet\n\n")

    missing = cli(
        "upgrade", env={"MIGRATION_DATABASES_FILE": str(tmp_path / "nowhere"), "MIGRATION_DATABASE_INDEX": "0"}
    )
    nothing = cli("upgrade", env={"MIGRATION_DATABASES_FILE": str(empty), "MIGRATION_DATABASE_INDEX": "0"})

    assert (missing.code, nothing.code) == (78, 78)
    assert "cannot be read" in missing.one("config.invalid")["error"]
    assert "no database URL" in nothing.one("config.invalid")["error"]


def test_all_migrates_the_five_reachable_databases_and_exits_with_the_failure(
    cli: Cli, pg_databases: Callable[[], str], tmp_path: Path
) -> None:
    """Six databases, one of them missing: the other five end at head; the exit code is the failure's."""
    make_project(cli.cwd, revisions=3)
    urls = [with_password(pg_databases(), "s3cret-pw") for _ in range(6)]
    urls[3] = urls[3].rsplit("/", 1)[0] + "/mr_test_no_such_database"
    env = {"MIGRATION_DATABASES_FILE": str(databases_file(tmp_path, urls)), "MIGRATION_PARALLELISM": "3"}

    result = cli("upgrade", "--all", "--output", "json", env=env, timeout=120)

    assert result.code == 78, result.stderr  # 3D000: the database does not exist
    document = json.loads(result.stdout)
    jsonschema.validate(document, RESULT_SCHEMA)
    assert document["exit_code"] == 78
    entries = document["databases"]
    assert [e["database_index"] for e in entries] == [0, 1, 2, 3, 4, 5]
    assert [e["exit_code"] for e in entries] == [0, 0, 0, 78, 0, 0]
    assert entries[3]["database"] == "mr_test_no_such_database"
    assert entries[3]["error"]["class"] == "ConfigError"
    assert all(e["applied"] == ["0001", "0002", "0003"] for i, e in enumerate(entries) if i != 3)
    for number, url in enumerate(urls):
        if number != 3:
            assert version(url) == ["0003"], number
    assert "s3cret-pw" not in result.stdout + result.stderr
    assert "://" not in result.stdout  # not even a redacted URL: the entry names the database
    assert "mr_test_no_such_database" in entries[3]["error"]["message"]
    finished = {e["database_index"]: e for e in result.named("database.finished")}
    assert finished[3]["exit_code"] == 78 and finished[0]["exit_code"] == 0
    assert result.one("all.finished")["failed"] == [3]
    assert result.one("all.started")["children"] == "forked"  # from the fork server (runner.forkserver)
    # The children's own lines are relayed, each naming its database.
    applied = result.named("revision.applied")
    assert sorted({e["database_index"] for e in applied}) == [0, 1, 2, 4, 5]


def test_check_and_wait_take_all_too(cli: Cli, pg_databases: Callable[[], str], tmp_path: Path) -> None:
    """check --all reports each database's code; wait --all returns 0 once every database is at head."""
    make_project(cli.cwd, revisions=2)
    urls = [pg_databases() for _ in range(3)]
    env = {"MIGRATION_DATABASES_FILE": str(databases_file(tmp_path, urls))}
    assert cli("upgrade", env={**env, "MIGRATION_DATABASE_INDEX": "0"}).code == 0

    checked = cli("check", "--all", "--json", env=env)
    assert cli("upgrade", "--all", env=env).code == 0
    waited = cli("wait", "--all", env={**env, "MIGRATION_WAIT_TIMEOUT": "5"})

    assert checked.code == 1, checked.stderr  # two databases are behind
    assert [e["exit_code"] for e in json.loads(checked.stdout)["databases"]] == [0, 1, 1]
    assert waited.code == 0, waited.stderr


def test_all_refuses_what_one_process_cannot_share(cli: Cli, pg_databases: Callable[[], str], tmp_path: Path) -> None:
    """--all refuses a metrics textfile (78), needs the databases file (78), and is not a history flag (2)."""
    make_project(cli.cwd, revisions=1)
    env = {"MIGRATION_DATABASES_FILE": str(databases_file(tmp_path, [pg_databases()]))}

    textfile = cli("upgrade", "--all", env={**env, "MIGRATION_METRICS_TEXTFILE": str(tmp_path / "m.prom")})
    no_file = cli("upgrade", "--all", env={"MIGRATION_DATABASE_URL": "postgresql://h/db"})
    not_here = cli("history", "--all", env=env)

    assert (textfile.code, no_file.code, not_here.code) == (78, 78, 2)
    assert "MIGRATION_PUSHGATEWAY_URL" in textfile.one("config.invalid")["error"]
    assert "MIGRATION_DATABASES_FILE" in no_file.one("config.invalid")["error"]


@pytest.mark.timeout(180)
def test_two_all_runs_at_once_apply_each_revision_once_per_database(
    cli: Cli, pg_databases: Callable[[], str], tmp_path: Path
) -> None:
    """Two --all runs at once apply each revision once on every database."""
    make_project(cli.cwd, revisions=5)
    urls = [pg_databases() for _ in range(5)]
    env = {"MIGRATION_DATABASES_FILE": str(databases_file(tmp_path, urls)), "MIGRATION_PARALLELISM": "3"}

    started = time.monotonic()
    first, second = cli.start("upgrade", "--all", env=env), cli.start("upgrade", "--all", env=env)
    results = [cli.finish(process, started, timeout=170) for process in (first, second)]

    assert [r.code for r in results] == [0, 0], [r.stderr[-2000:] for r in results]
    for url in urls:
        assert applied_counts(url) == {f"{k:04d}": 1 for k in range(1, 6)}
        assert version(url) == ["0005"]


@pytest.mark.timeout(120)
def test_sigterm_stops_every_database_and_exits_143(cli: Cli, pg_databases: Callable[[], str], tmp_path: Path) -> None:
    """The children get the signal, roll back and release their locks; the parent waits for them."""
    make_project(cli.cwd, revisions=2, bodies={2: 'op.execute("SELECT pg_sleep(60)")'})
    urls = [pg_databases() for _ in range(3)]
    env = {"MIGRATION_DATABASES_FILE": str(databases_file(tmp_path, urls)), "MIGRATION_PARALLELISM": "2"}
    started = time.monotonic()
    runner = cli.start("upgrade", "--all", "--json", env=env)

    names = [url.rsplit("/", 1)[1] for url in urls]

    def sleeping() -> int:
        sql = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%%' AND datname = ANY(%s)"
        return int(query(urls[0], sql, (names,))[0][0])

    wait_until(lambda: sleeping() == 2, 60, "two databases' revision 2 to run")
    runner.send_signal(signal.SIGTERM)
    result = cli.finish(runner, started, timeout=60)

    assert result.code == 143, result.stderr[-3000:]
    assert result.stdout, result.stderr[-6000:]
    document = json.loads(result.stdout)
    assert sorted(e["exit_code"] for e in document["databases"]) == [143, 143, 143]
    assert sleeping() == 0
    assert all(advisory_locks_held(url) == 0 for url in urls)
    assert all(version(url) == ["0001"] for url in urls[:2])  # revision 2 rolled back where it ran


MISBEHAVING = """\
import signal, sys
index = os.environ["MIGRATION_DATABASE_INDEX"]
if index == "1":
    os.kill(os.getpid(), signal.SIGKILL)
if index == "2":
    os._exit(3)
if index == "3":
    sys.exit(4)
op.create_table("t_0001", sa.Column("id", sa.Integer))
"""


def run_all_in_process(databases: list[str], *, fork: bool, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """``upgrade --all`` through runner.fleet itself, with the fork server or with a new process per database."""
    monkeypatch.setattr(forkserver, "available", lambda: fork)
    entries: list[dict[str, Any]] = []
    relayed = io.StringIO()
    listed = [fleet.Database(index=i, name=url.rsplit("/", 1)[1]) for i, url in enumerate(databases)]
    code = fleet.run_all(
        ["upgrade"], listed, parallelism=1, log_format="json", log_stream=relayed, grace_seconds=10, into=entries
    )
    assert code == errors.most_severe(e["exit_code"] for e in entries)
    started = [json.loads(line) for line in relayed.getvalue().splitlines() if '"run.started"' in line]
    assert sorted(e["database_index"] for e in started) == list(range(len(databases)))  # each child's lines relayed
    return entries


@pytest.mark.timeout(180)
def test_a_child_that_is_killed_or_exits_ends_alone_forked_or_not(
    cli: Cli, pg_databases: Callable[[], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL, os._exit and sys.exit in three children: the others migrate, the codes are as without the fork server.

    One at a time, so the databases after the killed child show that the fork server lived on.
    """
    make_project(cli.cwd, revisions=2, bodies={1: MISBEHAVING})
    monkeypatch.chdir(cli.cwd)
    results = {}
    for fork in (True, False):  # the fork server, then a new process per database, each on new databases
        urls = [pg_databases() for _ in range(5)]
        monkeypatch.setenv("MIGRATION_DATABASES_FILE", str(databases_file(tmp_path, urls)))
        results[fork] = [e["exit_code"] for e in run_all_in_process(urls, fork=fork, monkeypatch=monkeypatch)]
        assert version(urls[0]) == version(urls[4]) == ["0002"]
        assert [query(url, "SELECT to_regclass('t_0001')")[0][0] for url in urls[1:4]] == [None] * 3

    assert results[True] == results[False]
    codes = results[True]
    assert codes[0] == codes[4] == 0
    assert codes[1] == -signal.SIGKILL
    assert 0 not in codes[1:4]
