"""Rolling-deploy compatibility (issue 26, point 6): would pods of the release still running work after a revision?

``plan`` warns (a ``backward_incompatible`` flag); ``verify`` fails its ``backward_compatible``
case, for the newest revision, or every one after ``MIGRATION_VERIFY_RELEASED``. A revision opts
out for a deliberate contract step with ``MIGRATION_ACCEPT_FLAGS=REV:backward_incompatible`` or a
``# migration-runner: accept backward_incompatible`` line in its file. Django's migration state
tells what the running release reads: a column removed from the state by an earlier, deployed
migration (``SeparateDatabaseAndState``) is dropped safely later.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from support import Cli, copy_django_example, query
from test_verify import add_revision, case_named, chain, verify

ORDERS = '    op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True), sa.Column("note", sa.Text))'
ORDERS_DOWN = '    op.drop_table("orders")'
CHANGES = {
    "drop a column": (
        '    op.drop_column("orders", "note")',
        '    op.add_column("orders", sa.Column("note", sa.Text))',
    ),
    "rename a column": (
        '    op.alter_column("orders", "note", new_column_name="remark")',
        '    op.alter_column("orders", "remark", new_column_name="note")',
    ),
    "NOT NULL without a default": (
        '    op.add_column("orders", sa.Column("total", sa.Integer, nullable=False))',
        '    op.drop_column("orders", "total")',
    ),
    "narrow a type": (
        '    op.alter_column("orders", "note", type_=sa.String(10))',
        '    op.alter_column("orders", "note", type_=sa.Text)',
    ),
}
ADDITIVE = ('    op.add_column("orders", sa.Column("total", sa.Integer))', '    op.drop_column("orders", "total")')


def orders_project(root: Path, up: str, down: str) -> Path:
    """0001 makes t1, 0002 makes orders(id, note), 0003 is the change under test."""
    chain(root, 1)
    add_revision(root, "0002", "0001", ORDERS, ORDERS_DOWN)
    add_revision(root, "0003", "0002", up, down)
    return root


def compatible(report: dict[str, Any]) -> dict[str, Any]:
    return case_named(report, "backward_compatible")


@pytest.mark.parametrize("change", list(CHANGES))
def test_verify_fails_a_change_that_breaks_the_running_release(
    cli: Cli, pg_url: str, tmp_path: Path, change: str
) -> None:
    """Dropping, renaming, NOT NULL without a default, narrowing: backward_compatible fails, naming it; exit 1."""
    root = orders_project(tmp_path / "p", *CHANGES[change])

    result, report = verify(cli, pg_url, cwd=root)

    assert result.code == 1, result.stdout + result.stderr
    case = compatible(report)
    assert case["status"] == "failed", case
    assert case["message"].startswith("1 change(s) break the release still running during a rolling update: 0003: ")
    assert "MIGRATION_ACCEPT_FLAGS=REVISION:backward_incompatible" in case["message"]
    assert [c["name"] for c in report["cases"] if c["status"] == "failed"] == ["backward_compatible"]


def test_an_additive_change_passes_and_the_plan_stays_quiet(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """A nullable column added: backward_compatible passes; plan shows no backward_incompatible flag."""
    root = orders_project(tmp_path / "p", *ADDITIVE)

    result, report = verify(cli, pg_url, cwd=root)

    assert result.code == 0, result.stdout + result.stderr
    assert compatible(report)["status"] == "passed"
    assert compatible(report)["details"] == ["checked: 0003"]


def test_a_contract_step_opts_out_by_marker_or_setting(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """The same drop passes when 0003 accepts the flag, by a line in its file or by MIGRATION_ACCEPT_FLAGS."""
    root = orders_project(tmp_path / "p", *CHANGES["drop a column"])
    by_setting, setting_report = verify(
        cli, pg_url, cwd=root, env={"MIGRATION_ACCEPT_FLAGS": "0003:backward_incompatible"}
    )
    three = root / "migrations" / "versions" / "0003_r.py"
    three.write_text("# migration-runner: accept backward_incompatible\n" + three.read_text())
    _reset(cli, pg_url, root)
    by_marker, marker_report = verify(cli, pg_url, cwd=root)

    assert by_setting.code == 0, by_setting.stdout + by_setting.stderr
    assert by_marker.code == 0, by_marker.stdout + by_marker.stderr
    assert compatible(setting_report)["status"] == compatible(marker_report)["status"] == "passed"


def test_released_names_what_production_runs_and_every_revision_after_it_is_checked(
    cli: Cli, pg_url: str, tmp_path: Path
) -> None:
    """MIGRATION_VERIFY_RELEASED=0002: 0003 (a rename) and 0004 (additive) are both checked; 0003 fails."""
    root = orders_project(tmp_path / "p", *CHANGES["rename a column"])
    add_revision(
        root,
        "0004",
        "0003",
        '    op.add_column("orders", sa.Column("total", sa.Integer))',
        '    op.drop_column("orders", "total")',
    )

    default, default_report = verify(cli, pg_url, cwd=root)
    _reset(cli, pg_url, root)
    released, released_report = verify(cli, pg_url, cwd=root, env={"MIGRATION_VERIFY_RELEASED": "0002"})

    assert default.code == 0, compatible(default_report)  # the newest, 0004, alone: additive
    assert released.code == 1
    case = compatible(released_report)
    assert case["details"] == [
        "0003: renames column note of public.orders to remark: the running release still uses "
        "the old name; add the new column and copy, then drop the old one in a later release"
    ]


def test_plan_warns_and_names_the_accepted(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """plan at 0002: 0003's drop is flagged backward_incompatible (plan only warns: exit 1 for pending, as ever);
    with the marker it is listed under accepted instead, and the risk goes by the other flags."""
    root = orders_project(tmp_path / "p", *CHANGES["drop a column"])
    env = {"MIGRATION_DATABASE_URL": pg_url}
    assert cli("upgrade", "0002", env=env, cwd=root).code == 0

    flagged = json.loads(cli("plan", "--json", env=env, cwd=root).stdout)["pending"][0]
    three = root / "migrations" / "versions" / "0003_r.py"
    three.write_text(three.read_text() + "\n# migration-runner: accept backward_incompatible, destroys\n")
    accepted = json.loads(cli("plan", "--json", env=env, cwd=root).stdout)["pending"][0]

    assert [(f["kind"], f["table"]) for f in flagged["flags"]] == [
        ("destroys", "public.orders"),
        ("backward_incompatible", "public.orders"),
    ]
    assert flagged["risk"] == "destroys"
    assert accepted["flags"] == [] and accepted["risk"] is None
    assert [f["kind"] for f in accepted["accepted"]] == ["destroys", "backward_incompatible"]


def test_a_marker_naming_no_kind_is_78(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """A typo in the marker is one line and exit 78, naming the file and the kinds."""
    root = orders_project(tmp_path / "p", *ADDITIVE)
    three = root / "migrations" / "versions" / "0003_r.py"
    three.write_text("# migration-runner: accept backwards_incompatible\n" + three.read_text())

    result = cli("plan", env={"MIGRATION_DATABASE_URL": pg_url}, cwd=root)

    assert result.code == 78, result.stderr
    assert "names no flag kind; use one of destroys, rewrite" in result.one("config.invalid")["error"]


def test_an_unknown_kind_in_the_setting_is_78(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    root = orders_project(tmp_path / "p", *ADDITIVE)

    result = cli("plan", env={"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_ACCEPT_FLAGS": "0003:nope"}, cwd=root)

    assert result.code == 78
    assert "MIGRATION_ACCEPT_FLAGS" in result.stderr and "'0003:nope' is not REVISION:KIND" in result.stderr


DJANGO_MIGRATIONS = {
    "0004_product_legacy": """
        operations = [migrations.AddField("product", "legacy", models.TextField(null=True))]
    """,
    # Expand/contract, release 1: the code stops using the column; the state forgets it, the table keeps it.
    "0005_forget_legacy": """
        operations = [
            migrations.SeparateDatabaseAndState(state_operations=[migrations.RemoveField("product", "legacy")])
        ]
    """,
    # Release 2: the column goes, which no running code reads any more.
    "0006_drop_legacy": """
        operations = [migrations.RunSQL('ALTER TABLE shop_product DROP COLUMN legacy', migrations.RunSQL.noop)]
    """,
}


def django_expand_contract(root: Path) -> Path:
    project = copy_django_example(root)
    previous = "0003_product_name_index"
    for name, body in DJANGO_MIGRATIONS.items():
        (project / "shop" / "migrations" / f"{name}.py").write_text(
            "from django.db import migrations, models\n\n\nclass Migration(migrations.Migration):\n"
            f"    dependencies = [('shop', '{previous}')]\n" + textwrap.indent(textwrap.dedent(body), "    ")
        )
        previous = name
    return project


def test_django_expand_contract_across_releases(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """Django: the drop after a release that forgot the column passes; the same drop shipped with the release
    that still reads it is flagged, from the migration state of the running release."""
    project = django_expand_contract(tmp_path / "django")
    env = {"MIGRATION_DATABASE_URL": pg_url, "DJANGO_SETTINGS_MODULE": "mysite.settings"}

    def plan_at(target: str) -> dict[str, Any]:
        assert cli("upgrade", target, env=env, cwd=project).code == 0
        result = cli("plan", "--json", env=env, cwd=project)
        assert result.code == 1, result.stderr
        return {step["revision"]: step for step in json.loads(result.stdout)["pending"]}

    together = plan_at("shop:0004")
    after_release = plan_at("shop:0005")

    drop = "shop.0006_drop_legacy"
    assert [f["kind"] for f in together[drop]["flags"]] == ["destroys", "backward_incompatible"]
    assert "drops column legacy of public.shop_product" in together[drop]["flags"][1]["detail"]
    assert [f["kind"] for f in after_release[drop]["flags"]] == ["destroys"]


def _reset(cli: Cli, url: str, root: Path) -> None:
    """Back to an empty database for a second verify (verify leaves it at the heads)."""
    assert (
        cli(
            "downgrade", "base", env={"MIGRATION_DATABASE_URL": url, "MIGRATION_ALLOW_DOWNGRADE": "true"}, cwd=root
        ).code
        == 0
    )
    query(url, "DROP TABLE IF EXISTS alembic_version, migration_runner_history")


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_django_not_null_is_flagged_from_the_sql_or_the_operations(
    cli: Cli, pg_url: str, tmp_path: Path, database: str
) -> None:
    """An AlterField to null=False on a column the running release writes: on PostgreSQL the SQL says SET NOT
    NULL; on SQLite Django renders a table remake, which hides it, and the migration's operations say it."""
    project = copy_django_example(tmp_path / "django")
    for name, body, previous in (
        ("0004_product_legacy", DJANGO_MIGRATIONS["0004_product_legacy"], "0003_product_name_index"),
        (
            "0005_legacy_required",
            'operations = [migrations.AlterField("product", "legacy", models.TextField(default=""))]',
            "0004_product_legacy",
        ),
    ):
        (project / "shop" / "migrations" / f"{name}.py").write_text(
            "from django.db import migrations, models\n\n\nclass Migration(migrations.Migration):\n"
            f"    dependencies = [('shop', '{previous}')]\n"
            + textwrap.indent(textwrap.dedent(body).strip(), "    ")
            + "\n"
        )
    url = pg_url if database == "postgresql" else f"sqlite:///{tmp_path / 'db.sqlite3'}"
    env = {"MIGRATION_DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "mysite.settings"}
    assert cli("upgrade", "shop:0004", env=env, cwd=project).code == 0

    result = cli("plan", "--json", env=env, cwd=project)

    assert result.code == 1, result.stderr
    (step,) = [s for s in json.loads(result.stdout)["pending"] if s["revision"] == "shop.0005_legacy_required"]
    breaking = [f for f in step["flags"] if f["kind"] == "backward_incompatible"]
    if database == "sqlite":
        assert len(breaking) == 1, step["flags"]
        assert breaking[0]["detail"].startswith("makes Product.legacy NOT NULL with no database default")
        assert breaking[0]["detail"].endswith("(from the migration's operations)")
    else:  # SET DEFAULT '', SET NOT NULL, DROP DEFAULT: two statements that break it, each said once
        assert [f["detail"].split(":")[0] for f in breaking] == [
            "makes legacy NOT NULL with no server default",
            "drops the default of legacy, which is NOT NULL",
        ]


def test_an_unknown_released_target_is_78_before_anything_runs(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """MIGRATION_VERIFY_RELEASED naming no revision: one line, 78, the scratch database untouched."""
    root = orders_project(tmp_path / "p", *ADDITIVE)

    result, _ = verify(cli, pg_url, cwd=root, env={"MIGRATION_VERIFY_RELEASED": "v2.0.0"})

    assert result.code == 78, result.stdout + result.stderr
    assert result.one("config.invalid")["error"].startswith("MIGRATION_VERIFY_RELEASED: ")
    assert query(pg_url, "SELECT to_regclass('alembic_version')") == [(None,)]


def test_a_revision_without_offline_sql_is_never_passed(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """A newest revision that inspects the database (as Optuna's do) has no offline SQL: the case is skipped,
    saying so, never passed."""
    reads = '    if "note" in [c["name"] for c in sa.inspect(op.get_bind()).get_columns("orders")]:\n'
    reads += '        op.drop_column("orders", "note")'
    root = orders_project(tmp_path / "p", reads, CHANGES["drop a column"][1])

    _, report = verify(cli, pg_url, cwd=root)

    case = compatible(report)
    assert case["status"] == "skipped"
    assert case["message"].startswith("not checked: 0003 (cannot be rendered offline")


def test_a_newest_revision_that_cannot_go_down_is_read_on_a_rebuild(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """0003 drops a column and its downgrade raises by design: the released state is rebuilt instead of reached
    by a downgrade, and the drop is still found; the database ends at the head again."""
    up, _ = CHANGES["drop a column"]
    root = orders_project(tmp_path / "p", up, '    raise NotImplementedError("the column is gone for good")')

    result, report = verify(cli, pg_url, cwd=root)

    assert result.code == 1, result.stdout + result.stderr
    assert compatible(report)["status"] == "failed"
    assert compatible(report)["details"][0].startswith("0003: drops column note of public.orders")
    assert report["rebuilds"][-1]["at"] == "0002"
    assert report["rebuilds"][-1]["after"].startswith("backward_compatible: going down to 0002 failed")
    assert query(pg_url, "SELECT version_num FROM alembic_version") == [("0003",)]
