"""plan --trace never changes the database: whatever a revision does to end or split the transaction is stopped first.

Issue 26, point 1. Each case is a revision 0004 that adds a column, then does something
that would commit (or leave the one transaction the trace rolls back): ``COMMIT`` in any
spelling, ``ROLLBACK``, a savepoint of its own, ``VACUUM``, ``CREATE INDEX CONCURRENTLY``, a
commit through the connection. After the trace the database must be byte-identical: the
catalog fingerprint verify uses, and the row count of every table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy
from support import Cli, copy_django_example, make_project, query, version
from test_templates import alembic_init

from runner import catalog

BODIES = {
    3: 'op.create_table("orders", sa.Column("id", sa.Integer), sa.Column("total", sa.Integer))',
    5: 'op.create_table("t_after", sa.Column("id", sa.Integer))',
}
ADD = 'op.add_column("orders", sa.Column("note", sa.Text))\n'
CASES = {
    "COMMIT": 'op.execute("COMMIT")',
    "commit lower case with a comment": 'op.execute("/* done */ commit")',
    "END": 'op.execute("END")',
    "COMMIT between two statements": 'op.execute("ALTER TABLE orders ADD x int; COMMIT; ALTER TABLE orders ADD y int")',
    "ROLLBACK": 'op.execute("ROLLBACK")',
    "SAVEPOINT": 'op.execute("SAVEPOINT mine")',
    "RELEASE": 'op.execute("SAVEPOINT mine")\nop.execute("RELEASE mine")',
    "ROLLBACK TO": 'op.execute("SAVEPOINT mine")\nop.execute("ROLLBACK TO SAVEPOINT mine")',
    "BEGIN": 'op.execute("BEGIN")',
    "VACUUM": 'op.execute("VACUUM orders")',
    "CREATE INDEX CONCURRENTLY": 'op.create_index("ix_total", "orders", ["total"], postgresql_concurrently=True)',
    "DROP INDEX CONCURRENTLY": 'op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_none")',
    "commit through the connection": "op.get_bind().commit()",
    "PREPARE TRANSACTION": "op.execute(\"PREPARE TRANSACTION 'x'\")",
}


def state(url: str) -> tuple[str, dict[str, int]]:
    """The catalog's fingerprint and the row count of every table: what 'byte-identical' is checked by."""
    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as connection:
            fingerprint = catalog.fingerprint(connection, ())
            tables = connection.exec_driver_sql(
                "SELECT schemaname || '.' || tablename FROM pg_tables WHERE schemaname = 'public'"
            ).scalars()
            counts = {
                table: int(connection.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())
                for table in sorted(tables)
            }
    finally:
        engine.dispose()
    return fingerprint, counts


@pytest.mark.parametrize("case", list(CASES))
def test_a_revision_that_would_leave_the_transaction_is_not_traced_and_nothing_changes(
    cli: Cli, pg_url: str, case: str
) -> None:
    """The revision and those after it are reported as not traced, with the reason; the database is as it was."""
    make_project(cli.cwd, revisions=5, bodies={**BODIES, 4: ADD + CASES[case]})
    env = {"MIGRATION_DATABASE_URL": pg_url}
    assert cli("upgrade", "0003", env=env).code == 0
    before = state(pg_url)

    result = cli("plan", "--trace", "--json", env=env)

    assert state(pg_url) == before
    assert version(pg_url) == ["0003"]
    assert query(pg_url, "SELECT count(*) FROM pg_prepared_xacts") == [(0,)]
    assert result.code == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    four, five = json.loads(result.stdout)["pending"]
    assert four["not_traced"], four
    assert four["trace"] == [], "a revision stopped half-way is not shown as traced"
    assert "not run" in five["not_traced"] and five["trace"] == []


def test_a_revision_without_any_of_them_is_still_traced(cli: Cli, pg_url: str) -> None:
    """The guard is no blanket refusal: a plain revision (a literal '%', a parameter) is traced as before."""
    body = ADD + "op.execute(\"UPDATE orders SET note = '50%' WHERE total > 0\")"
    make_project(cli.cwd, revisions=5, bodies={**BODIES, 4: body})
    env = {"MIGRATION_DATABASE_URL": pg_url}
    assert cli("upgrade", "0003", env=env).code == 0

    result = cli("plan", "--trace", "--json", env=env)

    assert result.code == 1, result.stderr
    four, five = json.loads(result.stdout)["pending"]
    assert four["not_traced"] is None and five["not_traced"] is None
    assert [s["statement"] for s in four["trace"]][:1] == ["ALTER TABLE orders ADD COLUMN note TEXT"]


DJANGO_COMMIT = """from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("shop", "0003_product_name_index")]
    operations = [
        migrations.RunSQL("ALTER TABLE shop_product ADD COLUMN note text"),
        migrations.RunSQL("COMMIT"),
    ]
"""


def test_a_django_migration_that_commits_is_not_traced_and_nothing_changes(
    cli: Cli, pg_url: str, tmp_path: Path
) -> None:
    """RunSQL("COMMIT") in a Django migration: stopped before the server sees it; the database is as it was."""
    project = copy_django_example(tmp_path / "django")
    env = {"MIGRATION_DATABASE_URL": pg_url, "DJANGO_SETTINGS_MODULE": "mysite.settings"}
    assert cli("upgrade", env=env, cwd=project).code == 0
    (project / "shop" / "migrations" / "0004_commit.py").write_text(DJANGO_COMMIT)
    before = state(pg_url)

    result = cli("plan", "--trace", "--json", env=env, cwd=project)

    assert state(pg_url) == before
    assert result.code == 1, result.stdout + result.stderr
    steps = {step["revision"]: step for step in json.loads(result.stdout)["pending"]}
    assert list(steps) == ["shop.0004_commit"]
    assert "COMMIT" in steps["shop.0004_commit"]["not_traced"] and steps["shop.0004_commit"]["trace"] == []


@pytest.mark.parametrize("driver", ["postgresql+asyncpg", "postgresql+psycopg"])  # the async env.py makes it async
def test_an_async_env_py_is_traced_and_nothing_changes(cli: Cli, pg_url: str, tmp_path: Path, driver: str) -> None:
    """`alembic init -t async`, unmodified, on asyncpg and async psycopg: each statement traced with its locks.

    Before, the trace read pg_locks through the driver's raw connection: asyncpg's has no cursor() like
    psycopg's (exit 65), and async psycopg's returned a coroutine.
    """
    root = alembic_init(tmp_path / "async", "async", with_models=False)
    (root / "migrations" / "versions" / "0004_r.py").write_text(
        (root / "migrations" / "versions" / "0003_r.py")
        .read_text()
        .replace("revision = '0003'", "revision = '0004'")
        .replace("down_revision = '0002'", "down_revision = '0003'")
        .replace(
            'op.create_table("t_0003", sa.Column("id", sa.Integer))',
            'op.add_column("t_0001", sa.Column("n", sa.Integer))',
        )
    )
    url = pg_url.replace("postgresql://", f"{driver}://")
    env = {"MIGRATION_DATABASE_URL": url}
    assert cli("upgrade", "0003", env=env, cwd=root).code == 0
    before = state(pg_url)

    result = cli("plan", "--trace", "--json", env=env, cwd=root)

    assert state(pg_url) == before
    assert result.code == 1, result.stdout + result.stderr
    (four,) = json.loads(result.stdout)["pending"]
    assert four["not_traced"] is None, four
    (alter,) = [s for s in four["trace"] if s["statement"].startswith("ALTER TABLE t_0001")]
    assert alter["blocks_reads"] == ["public.t_0001"]


def test_a_lock_taken_earlier_in_the_revision_is_shown_as_held_by_the_statements_after_it(
    cli: Cli, pg_url: str
) -> None:
    """ALTER TABLE then CREATE INDEX on the same table: the index build keeps the table locked for reads.

    Before, only locks newly taken were shown, so the CREATE INDEX showed none. A lock taken by an earlier
    revision of the same trace is listed as held since that revision, and does not count as this one's.
    """
    body = ADD + 'op.create_index("ix_orders_total", "orders", ["total"])'
    make_project(
        cli.cwd, revisions=5, bodies={**BODIES, 4: body, 5: 'op.create_index("ix_orders_id", "orders", ["id"])'}
    )
    env = {"MIGRATION_DATABASE_URL": pg_url}
    assert cli("upgrade", "0003", env=env).code == 0

    result = cli("plan", "--trace", "--json", env=env)

    assert result.code == 1, result.stderr
    four, five = json.loads(result.stdout)["pending"]
    (index,) = [s for s in four["trace"] if s["statement"].startswith("CREATE INDEX ix_orders_total")]
    assert "AccessExclusiveLock" not in [lock["mode"] for lock in index["locks"]], "the ALTER before it took it"
    assert {"table": "public.orders", "mode": "AccessExclusiveLock", "since": "0004"} in index["held"]
    assert index["blocks_reads"] == ["public.orders"]
    (later,) = [s for s in five["trace"] if s["statement"].startswith("CREATE INDEX ix_orders_id")]
    assert {"table": "public.orders", "mode": "AccessExclusiveLock", "since": "0004"} in later["held"]
    assert later["blocks_reads"] == [], "revision 0004's lock is not revision 0005's doing"
