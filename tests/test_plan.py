"""`plan`: the pending revisions, their SQL and what it locks, read-only; exit 1 while something is pending."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import sqlalchemy
from support import REPO, Cli, copy_django_example, make_project, query, version

SCHEMA = json.loads((REPO / "docs" / "plan.schema.json").read_text())
BODIES = {
    3: 'op.create_table("orders", sa.Column("id", sa.Integer), sa.Column("total", sa.Integer))',
    4: 'op.alter_column("orders", "total", type_=sa.Numeric(12, 2))',
}


def at_three_of_five(cli: Cli, url: str, *, revisions: int = 5, fourth: str | None = None) -> dict[str, str]:
    """A database at revision 3 of 5 (or ``revisions``); revision 4 changes the type of a column of a table
    revision 3 made, unless ``fourth`` gives its body."""
    make_project(cli.cwd, revisions=revisions, bodies=BODIES if fourth is None else {**BODIES, 4: fourth})
    env = {"MIGRATION_DATABASE_URL": url}
    assert cli("upgrade", "0003", env=env).code == 0
    return env


def unchanged(url: str) -> None:
    assert version(url) == ["0003"]
    column = "SELECT data_type FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'total'"
    assert query(url, column) == [("integer",)]
    assert query(url, "SELECT to_regclass('t_0005')") == [(None,)]


def test_plan_shows_the_sql_and_the_lock_then_exits_1(cli: Cli, pg_url: str) -> None:
    """plan shows each pending revision's SQL and the lock it takes, as text, JSON and markdown, and exits 1."""
    env = at_three_of_five(cli, pg_url)

    text = cli("plan", env=env)
    document = cli("plan", "--output", "json", env=env)
    markdown = cli("plan", "--output", "markdown", env=env)

    assert (text.code, document.code, markdown.code) == (1, 1, 1), text.stderr
    assert "ALTER TABLE orders ALTER COLUMN total TYPE NUMERIC(12, 2)" in text.stdout
    assert "CREATE TABLE t_0005" in text.stdout
    assert "ACCESS EXCLUSIVE" in text.stdout
    plan = json.loads(document.stdout)
    jsonschema.validate(plan, SCHEMA)
    assert plan["current"] == ["0003"]
    assert [step["revision"] for step in plan["pending"]] == ["0004", "0005"]
    four, five = plan["pending"]
    assert [(f["kind"], f["table"]) for f in four["flags"]] == [("rewrite", "public.orders")]
    assert four["risk"] == "rewrite"
    assert five["flags"] == []  # a table created by the plan itself is not an existing one
    assert four["transactional"] is True
    assert "CREATE TABLE t_0005" in five["sql"]
    assert markdown.stdout.startswith("### Migration plan")
    assert "| `0004` | revision 4 | yes | ⚠️ rewrite |" in markdown.stdout
    assert "**Risk: rewrite (public.orders)**" in markdown.stdout
    assert "- ⚠️ **rewrite** `public.orders`: changes the type of total (int4 to numeric(12,2))" in markdown.stdout
    assert "```sql" in markdown.stdout
    assert not text.stdout.lstrip().startswith("{")  # the logs went to stderr
    assert text.one("plan.finished")["pending"] == 2
    unchanged(pg_url)


def test_a_password_in_a_revision_error_is_never_in_the_plan(cli: Cli, pg_url: str) -> None:
    """The not_rendered reason is the revision's own error, which may carry the URL: redacted like the logs."""
    leaks = 'raise RuntimeError("no offline copy from " + op.get_context().config.get_main_option("sqlalchemy.url"))'
    make_project(cli.cwd, revisions=2, bodies={2: leaks})
    secret = "Sup3r-S3cret-pw"  # noqa: S105  (trust authentication takes any password)
    url = sqlalchemy.make_url(pg_url).set(password=secret).render_as_string(hide_password=False)

    outputs = [cli("plan", "--output", output, env={"MIGRATION_DATABASE_URL": url}) for output in ("json", "text")]

    assert [result.code for result in outputs] == [1, 1], outputs[0].stderr
    assert "no offline copy from" in outputs[0].stdout
    assert all(secret not in result.stdout + result.stderr for result in outputs)


def test_plan_at_head_exits_0(cli: Cli, pg_url: str) -> None:
    """plan at head exits 0 with nothing pending."""
    env = at_three_of_five(cli, pg_url)
    assert cli("upgrade", env=env).code == 0

    result = cli("plan", "--json", env=env)

    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["pending"] == []


def test_a_revision_that_reads_data_is_shown_as_not_rendered(cli: Cli, pg_url: str) -> None:
    """A revision that reads data is shown as not rendered, the plan goes on, and nothing is applied."""
    reads = 'count = op.get_bind().execute(sa.text("SELECT count(*) FROM applied_log")).scalar()\nprint(count)'
    make_project(cli.cwd, revisions=4, bodies={3: reads})
    env = {"MIGRATION_DATABASE_URL": pg_url}
    assert cli("upgrade", "0002", env=env).code == 0

    result = cli("plan", "--json", env=env)

    assert result.code == 1, result.stderr
    three, four = json.loads(result.stdout)["pending"]
    assert three["sql"] is None
    assert "cannot be rendered offline" in three["not_rendered"]
    assert "CREATE TABLE t_0004" in four["sql"]  # the plan goes on after it
    assert version(pg_url) == ["0002"]


def test_an_irreversible_revision_is_flagged(cli: Cli, pg_url: str) -> None:
    """plan flags a revision whose downgrade does nothing as irreversible."""
    make_project(cli.cwd, revisions=2)
    two = cli.cwd / "migrations" / "versions" / "0002_r.py"
    two.write_text(two.read_text().replace('    op.drop_table("t_0002")', "    pass"))

    result = cli("plan", "--json", env={"MIGRATION_DATABASE_URL": pg_url})

    assert result.code == 1, result.stderr
    steps = {step["revision"]: step for step in json.loads(result.stdout)["pending"]}
    assert steps["0002"]["irreversible"] == "its downgrade() does nothing"
    assert steps["0001"]["irreversible"] is None


def test_django_plan(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """plan of a Django project: each pending migration's SQL and flags, valid against the schema."""
    project = copy_django_example(tmp_path / "django")
    env = {"MIGRATION_DATABASE_URL": pg_url, "DJANGO_SETTINGS_MODULE": "mysite.settings"}
    assert cli("upgrade", "shop:0001", env=env, cwd=project).code == 0

    result = cli("plan", "--json", env=env, cwd=project)

    assert result.code == 1, result.stderr
    plan = json.loads(result.stdout)
    jsonschema.validate(plan, SCHEMA)
    steps = {step["revision"]: step for step in plan["pending"]}
    assert [step for step in steps if step.startswith("shop.")] == [
        "shop.0002_product_slug",
        "shop.0003_product_name_index",
    ]  # and the contrib apps' migrations, which shop:0001 does not need
    slug = steps["shop.0002_product_slug"]
    assert 'ALTER TABLE "shop_product" ADD COLUMN "slug"' in slug["sql"]
    assert "runs Python" in slug["not_rendered"]
    assert {flag["table"] for flag in slug["flags"]} == {"public.shop_product"}
    # Django adds the column with a default, then drops the default: the running release, which does not know
    # slug, inserts rows without it into a NOT NULL column (django-migration-linter's NOT NULL rule).
    assert [flag["kind"] for flag in slug["flags"]] == ["backward_incompatible", "blocks_writes"]
    # AddField with a default renders two ALTER TABLEs of one table: one warning, not the same one twice.
    said = [(flag["kind"], flag["table"], flag["detail"]) for flag in slug["flags"]]
    assert len(said) == len(set(said)), said
    index = steps["shop.0003_product_name_index"]
    assert [flag["kind"] for flag in index["flags"]] == ["blocks_writes"]
    assert query(pg_url, "SELECT count(*) FROM django_migrations WHERE app = 'shop'") == [(1,)]

    # As a reviewer reads it: each kind once per revision, in the risk line and among the warnings.
    shown = cli("plan", env=env, cwd=project).stdout
    index_text = shown.split("shop.0003_product_name_index", 1)[1]
    assert "  risk: blocks_writes (public.shop_product)\n" in index_text
    assert index_text.count("! blocks_writes:") == 1
    slug_text = shown.split("shop.0002_product_slug", 1)[1].split("shop.0003", 1)[0]
    assert "  risk: blocks_writes (public.shop_product); backward_incompatible (public.shop_product)\n" in slug_text


@pytest.mark.parametrize("command", ["upgrade", "check"])
def test_markdown_is_for_plan_and_verify_only(cli: Cli, pg_url: str, command: str) -> None:
    """--output markdown for another command is 78, and nothing is applied."""
    make_project(cli.cwd, revisions=1)

    result = cli(command, "--output", "markdown", env={"MIGRATION_DATABASE_URL": pg_url})

    assert result.code == 78
    assert "markdown is for plan and verify" in result.one("config.invalid")["error"]
    assert query(pg_url, "SELECT to_regclass('alembic_version')") == [(None,)]


def test_trace_names_the_lock_and_the_rewrite_and_changes_nothing(cli: Cli, pg_url: str) -> None:
    """plan --trace names each statement's locks and table rewrites, and leaves the database as it was."""
    env = at_three_of_five(cli, pg_url)

    result = cli("plan", "--trace", "--json", env=env)

    assert result.code == 1, result.stderr
    plan = json.loads(result.stdout)
    jsonschema.validate(plan, SCHEMA)
    assert plan["traced"] is True
    four, five = plan["pending"]
    (alter,) = [s for s in four["trace"] if s["statement"].startswith("ALTER TABLE orders")]
    assert {"table": "public.orders", "mode": "AccessExclusiveLock"} in alter["locks"]
    assert alter["rewritten"] == ["public.orders"]
    assert alter["blocks_reads"] == ["public.orders"]
    assert all(not s["blocks_writes"] for s in five["trace"])  # it only touches its own new table
    (closed,) = four["blocked"]  # how long orders stayed closed: through every statement after the ALTER
    assert closed["table"] == "public.orders" and closed["reads_seconds"] == closed["writes_seconds"] > 0
    assert closed["writes_seconds"] >= alter["duration_seconds"]
    assert five["blocked"] == []
    assert five["trace"], "revision 5 ran in the rehearsal too"
    assert result.one("lock.acquired")
    unchanged(pg_url)
    assert query(pg_url, "SELECT count(*) FROM applied_log WHERE revision IN ('0004', '0005')") == [(0,)]


def test_trace_is_refused_in_production_unless_allowed(cli: Cli, pg_url: str) -> None:
    """plan --trace in production is 78 unless MIGRATION_ALLOW_TRACE=true."""
    env = {**at_three_of_five(cli, pg_url), "MIGRATION_ENVIRONMENT": "production"}

    refused = cli("plan", "--trace", env=env)
    allowed = cli("plan", "--trace", env={**env, "MIGRATION_ALLOW_TRACE": "true"})

    assert refused.code == 78
    assert "MIGRATION_ALLOW_TRACE=true" in refused.one("config.invalid")["error"]
    assert allowed.code == 1, allowed.stderr
    unchanged(pg_url)


def test_trace_needs_postgresql(cli: Cli, mysql_url: str) -> None:
    """plan --trace on MariaDB is 78: it reads pg_locks."""
    make_project(cli.cwd, revisions=1)

    result = cli("plan", "--trace", env={"MIGRATION_DATABASE_URL": mysql_url})

    assert result.code == 78
    assert "only PostgreSQL" in result.one("config.invalid")["error"]


def test_trace_does_not_run_a_revision_outside_a_transaction(cli: Cli, pg_url: str) -> None:
    """plan --trace never runs an autocommit_block, nor any revision after it."""
    concurrently = (
        "with op.get_context().autocommit_block():\n"
        '    op.create_index("ix_total", "orders", ["total"], postgresql_concurrently=True)'
    )
    env = at_three_of_five(cli, pg_url, fourth=concurrently)

    result = cli("plan", "--trace", "--json", env=env)

    assert result.code == 1, result.stderr
    four, five = json.loads(result.stdout)["pending"]
    assert four["transactional"] is False
    assert "autocommit_block" in four["not_traced"]
    assert "not run" in five["not_traced"]
    assert query(pg_url, "SELECT to_regclass('ix_total')") == [(None,)]
    assert version(pg_url) == ["0003"]


def test_django_trace(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """plan --trace of a Django migration names the table it blocks, and applies nothing."""
    project = copy_django_example(tmp_path / "django")
    env = {"MIGRATION_DATABASE_URL": pg_url, "DJANGO_SETTINGS_MODULE": "mysite.settings"}
    assert cli("upgrade", env=env, cwd=project).code == 0
    assert cli("downgrade", "shop:0001", env=env, cwd=project).code == 0

    result = cli("plan", "--trace", "--json", env=env, cwd=project)

    assert result.code == 1, result.stderr
    steps = {step["revision"]: step for step in json.loads(result.stdout)["pending"]}
    slug = steps["shop.0002_product_slug"]
    assert any("public.shop_product" in s["blocks_reads"] for s in slug["trace"])
    assert query(pg_url, "SELECT count(*) FROM django_migrations WHERE app = 'shop'") == [(1,)]
    column = (
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'shop_product' AND column_name = 'slug'"
    )
    assert query(pg_url, column) == [(0,)]


def test_the_markdown_plan_fits_a_comment_by_folding_the_idle_trace_rows_then_the_sql() -> None:
    """Over the limit, the trace rows that take no lock and rewrite nothing go first, then the SQL; flags stay."""
    from runner import plan as planning  # noqa: PLC0415

    idle = {"statement": "SELECT 1", "duration_seconds": 0.001, "locks": [], "held": [], "rewritten": []}
    idle |= {"blocks_reads": [], "blocks_writes": []}
    alter = {
        "statement": "ALTER TABLE orders ADD x int",
        "duration_seconds": 0.002,
        "locks": [{"table": "public.orders", "mode": "AccessExclusiveLock"}],
        "held": [{"table": "public.orders", "mode": "AccessExclusiveLock", "since": "0002"}],
        "rewritten": [],
        "blocks_reads": ["public.orders"],
        "blocks_writes": ["public.orders"],
    }
    flag = {"kind": "rewrite", "table": "public.orders", "detail": "rewrites it", "statement": "ALTER", "parsed": True}
    step = planning.PlannedStep("0002", "big", True, "SELECT 1;\n" * 2000, flags=[], trace=[alter] + [idle] * 400)
    document = planning.document(
        traced=True, tool="alembic", database="db", current=["0001"], target=["0002"], steps=[step]
    )
    document["pending"][0]["flags"] = [flag]
    document["pending"][0]["risk"] = "rewrite"

    whole = planning.markdown(document, limit=10**7)
    no_idle_rows = planning.markdown(document, limit=len(whole) - 1)
    no_sql = planning.markdown(document, limit=5_000)

    assert "```sql" in whole and whole.count("| `SELECT 1` |") == 400
    assert "```sql" in no_idle_rows and "| *400 statements left out: no lock" in no_idle_rows
    assert "```sql" not in no_sql and "SQL left out (20000 characters)." in no_sql and len(no_sql) <= 5_000
    assert all("⚠️ **rewrite** `public.orders`: rewrites it" in out for out in (whole, no_idle_rows, no_sql))


def test_a_revision_without_offline_sql_is_read_from_what_the_trace_ran(cli: Cli, pg_url: str) -> None:
    """A revision that inspects the database has no offline SQL: plan says it is not read (never 'none');
    plan --trace reads the statements it ran instead, and flags the index it builds (seen on MLflow)."""
    inspects = (
        'if "orders" in sa.inspect(op.get_bind()).get_table_names():\n'
        '    op.create_index("ix_orders_total", "orders", ["total"])'
    )
    env = at_three_of_five(cli, pg_url, revisions=4, fourth=inspects)

    static = json.loads(cli("plan", "--json", env=env).stdout)["pending"][0]
    markdown = cli("plan", "--output", "markdown", env=env).stdout
    traced = json.loads(cli("plan", "--trace", "--json", env=env).stdout)["pending"][0]

    assert static["sql"] is None and static["flags"] == [] and static["risk"] is None
    assert "| `0004` | revision 4 | yes | ❓ not read |" in markdown
    assert "**1 pending** (alembic), **1 to review**." in markdown
    assert "**Risk: not read: its SQL cannot be rendered offline" in markdown
    assert [(f["kind"], f["table"]) for f in traced["flags"]] == [("blocks_writes", "public.orders")]
    assert traced["not_rendered"].endswith("its flags are read from the statements plan --trace ran")
    unchanged_index = "SELECT count(*) FROM pg_indexes WHERE indexname = 'ix_orders_total'"
    assert query(pg_url, unchanged_index) == [(0,)]
