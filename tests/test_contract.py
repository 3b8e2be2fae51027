"""The driver contract: every migration tool behaves the same on the same history, on each of the three databases.

Each tool in :data:`TOOLS` writes one history of three steps, each creating one
table (``t_0001`` to ``t_0003``), and says how its targets and ids are spelt.
Every test here runs against every tool on PostgreSQL, MariaDB and SQLite, and
asserts only what a user sees: exit codes, events, the result document, the
ledger and the tables. A third driver is proven by adding its :class:`Tool` to
:data:`TOOLS` (docs/drivers.md, "Tests").
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy
from support import Cli, make_project, rev_id

from runner import drivers

STEPS = 3
MISSING_TABLE = "SELECT * FROM no_such_table"


@dataclass(frozen=True)
class Tool:
    """One migration tool as the contract sees it.

    Attributes:
        name: the ``MIGRATION_TOOL`` value, and the ledger's ``tool``.
        write: writes the history into a directory (its step ``failing``, if given, runs
            :data:`MISSING_TABLE` instead of creating its table); returns the environment it needs.
        ids: the step ids, as events, documents and the ledger show them.
        target: the target that leaves steps 1..k applied (k = 0: none of them).
    """

    name: str
    write: Callable[[Path, int | None], dict[str, str]]
    ids: tuple[str, ...]
    target: Callable[[int], str]


def write_alembic(root: Path, failing: int | None) -> dict[str, str]:
    """make_project's history: revision k creates ``t_<k>``; revision 1 also creates applied_log."""
    bodies = {failing: f"op.execute({MISSING_TABLE!r})"} if failing else {}
    make_project(root, revisions=STEPS, bodies=bodies)
    return {}


DJANGO_SETTINGS = """
SECRET_KEY = "contract"
INSTALLED_APPS = ["contract"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "unused.sqlite3"}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
"""

DJANGO_MIGRATION = """
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = {initial}
    dependencies = {dependencies}
    operations = [{operation}]
"""


def django_step(number: int) -> str:
    """The migration name of step ``number`` in the contract app."""
    return f"{rev_id(number)}_step"


def write_django(root: Path, failing: int | None) -> dict[str, str]:
    """One app, ``contract``, whose migration k creates a model stored in ``t_<k>``."""
    (root / "contract_site").mkdir(parents=True)
    (root / "contract_site" / "__init__.py").write_text("")
    (root / "contract_site" / "settings.py").write_text(DJANGO_SETTINGS)
    migrations = root / "contract" / "migrations"
    migrations.mkdir(parents=True)
    (root / "contract" / "__init__.py").write_text("")
    (migrations / "__init__.py").write_text("")
    for number in range(1, STEPS + 1):
        if number == failing:
            operation = f"migrations.RunSQL({MISSING_TABLE!r})"
        else:
            operation = (
                f'migrations.CreateModel(name="T{number}", fields=[("id", models.AutoField(primary_key=True))], '
                f'options={{"db_table": "t_{rev_id(number)}"}})'
            )
        dependencies = [("contract", django_step(number - 1))] if number > 1 else []
        text = DJANGO_MIGRATION.format(initial=number == 1, dependencies=dependencies, operation=operation)
        (migrations / f"{django_step(number)}.py").write_text(textwrap.dedent(text))
    return {"DJANGO_SETTINGS_MODULE": "contract_site.settings"}


TOOLS = [
    Tool(
        name="alembic",
        write=write_alembic,
        ids=tuple(rev_id(n) for n in range(1, STEPS + 1)),
        target=lambda k: rev_id(k) if k else "base",
    ),
    Tool(
        name="django",
        write=write_django,
        ids=tuple(f"contract.{django_step(n)}" for n in range(1, STEPS + 1)),
        target=lambda k: f"contract:{rev_id(k)}" if k else "contract:zero",
    ),
]


@pytest.fixture(params=TOOLS, ids=lambda tool: tool.name)
def tool(request: pytest.FixtureRequest) -> Tool:
    """Each migration tool with a driver."""
    return request.param  # type: ignore[no-any-return]


def project(cli: Cli, tool: Tool, url: str, failing: int | None = None) -> dict[str, str]:
    """Write the tool's history into the CLI's directory: the environment that runs it on ``url``."""
    return {**tool.write(cli.cwd, failing), "MIGRATION_TOOL": tool.name, "MIGRATION_DATABASE_URL": url}


def step_tables(url: str) -> list[str]:
    """The contract's step tables (``t_<k>``) that exist in the database, sorted."""
    engine = sqlalchemy.create_engine(
        url.replace("mysql://", "mysql+pymysql://", 1).replace("postgresql://", "postgresql+psycopg://", 1)
    )
    try:
        return sorted(name for name in sqlalchemy.inspect(engine).get_table_names() if name.startswith("t_0"))
    finally:
        engine.dispose()


def tables_of(count: int) -> list[str]:
    """The step tables of steps 1..count."""
    return [f"t_{rev_id(n)}" for n in range(1, count + 1)]


def applied_ids(result: object) -> list[str]:
    """The revisions of a run's ``revision.applied`` events, in order."""
    return [event["revision"] for event in result.named("revision.applied")]  # type: ignore[attr-defined]


def test_every_driver_is_held_to_the_contract() -> None:
    """A driver module under runner/drivers/ without its Tool here fails: the contract covers every tool."""
    assert sorted(tool.name for tool in TOOLS) == drivers.tools()


def test_upgrade_in_steps_then_a_no_op(cli: Cli, tool: Tool, any_url: str) -> None:
    """check 1 lists every step; upgrade to step 2, then to the heads, applies each step once; then a no-op, check 0."""
    env = project(cli, tool, any_url)

    before = cli("check", env=env)
    partial = cli("upgrade", tool.target(2), "--json", env=env)
    tables_at_two = step_tables(any_url)
    rest = cli("upgrade", "--json", env=env)
    again = cli("upgrade", env=env)
    after = cli("check", env=env)

    assert before.code == 1, before.stderr
    assert [step["revision"] for step in before.one("check.pending")["pending"]] == list(tool.ids)
    assert partial.code == 0, partial.stderr
    assert applied_ids(partial) == list(tool.ids[:2])
    assert tables_at_two == tables_of(2)
    assert rest.code == 0, rest.stderr
    assert applied_ids(rest) == [tool.ids[2]]
    assert json.loads(rest.stdout)["to"] == [tool.ids[2]]
    assert step_tables(any_url) == tables_of(STEPS)
    assert again.code == 0, again.stderr
    assert again.one("upgrade.noop") and applied_ids(again) == []
    assert after.code == 0, after.stderr
    assert after.one("check.ok")["current"] == [tool.ids[2]]


def test_downgrade_in_steps_to_nothing(cli: Cli, tool: Tool, any_url: str) -> None:
    """downgrade to step 1 reverts steps 3 and 2 in that order; to nothing reverts step 1; the tables follow."""
    env = project(cli, tool, any_url)
    assert cli("upgrade", env=env).code == 0

    to_one = cli("downgrade", tool.target(1), env=env)
    tables_at_one = step_tables(any_url)
    to_none = cli("downgrade", tool.target(0), env=env)

    assert to_one.code == 0, to_one.stderr
    assert [e["revision"] for e in to_one.named("revision.reverted")] == [tool.ids[2], tool.ids[1]]
    assert tables_at_one == tables_of(1)
    assert to_none.code == 0, to_none.stderr
    assert [e["revision"] for e in to_none.named("revision.reverted")] == [tool.ids[0]]
    assert step_tables(any_url) == []


def test_the_ledger_records_each_step_and_each_revert(cli: Cli, tool: Tool, any_url: str) -> None:
    """history lists one applied row per step, then the revert of the last, newest first, under the tool's name."""
    env = project(cli, tool, any_url)
    assert cli("upgrade", env=env).code == 0
    assert cli("downgrade", tool.target(2), env=env).code == 0

    history = cli("history", "--json", env=env)

    assert history.code == 0, history.stderr
    document = json.loads(history.stdout)
    assert document["tool"] == tool.name
    rows = [(row["revision"], row["direction"], row["outcome"]) for row in document["rows"]]
    ours = [row for row in rows if row[0] in tool.ids]
    assert ours == [(tool.ids[2], "down", "reverted")] + [(i, "up", "applied") for i in reversed(tool.ids)]


def test_three_runners_at_once_apply_each_step_once(cli: Cli, tool: Tool, any_url: str) -> None:
    """Three runners started together all exit 0, and the steps are applied once in all, under the lock."""
    env = {**project(cli, tool, any_url), "MIGRATION_LOCK_TIMEOUT": "120"}

    started = time.monotonic()
    runners = [cli.start("upgrade", env=env) for _ in range(3)]
    results = [cli.finish(runner, started, timeout=180) for runner in runners]

    assert [r.code for r in results] == [0, 0, 0], [r.stderr[-2000:] for r in results]
    assert sorted(i for r in results for i in applied_ids(r) if i in tool.ids) == sorted(tool.ids)
    assert step_tables(any_url) == tables_of(STEPS)


def test_a_failing_step_exits_65_naming_it_and_keeps_the_earlier_ones(cli: Cli, tool: Tool, any_url: str) -> None:
    """Step 3 fails: 65 naming it, steps 1 and 2 kept; check lists step 3 (on MariaDB once resolve says what happened).

    MariaDB's DDL commits as it goes, so a failed step may be partly applied there: the runner
    says so, and check refuses (65) until ``resolve --mark`` records what the user found.
    """
    env = project(cli, tool, any_url, failing=3)
    commits_as_it_goes = any_url.startswith("mysql")

    result = cli("upgrade", env=env)
    check = cli("check", env=env)
    if commits_as_it_goes:
        assert check.code == 65, check.stderr
        assert cli("resolve", "--mark", "not-applied", env=env).code == 0
        check = cli("check", env=env)

    assert result.code == 65, result.stderr
    failed = result.one("revision.failed")
    assert (failed["revision"], failed["partially_applied"]) == (tool.ids[2], commits_as_it_goes)
    assert step_tables(any_url) == tables_of(2)
    assert check.code == 1, check.stderr
    assert [step["revision"] for step in check.one("check.pending")["pending"]] == [tool.ids[2]]
