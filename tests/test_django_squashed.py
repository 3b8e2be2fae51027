"""Squashed Django migrations: ``current`` names each app's applied leaf node, once (issue 28).

The example project's shop app gets two more migrations, which Django's own
``squashmigrations`` then squashes, as a team does after a release. A database
migrated before the squash has rows for the squashed migrations and none for the
squash; Django's loader puts the squash in their place. Each reading of "current"
(the ``current`` command, ``upgrade.noop``, ``check``, the plan's header) must then
list as many entries as the migration graph has leaf nodes, not one per row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import Cli, applied, copy_django_example
from test_django import add_migration, env

SQUASH = "shop.0004_product_price_squashed_0005_product_stock"
LEAVES = ["auth.0012_alter_user_first_name_max_length", "contenttypes.0002_remove_content_type_name", SQUASH]


@pytest.fixture
def project(cli: Cli) -> Path:
    """The example with shop 0004 and 0005 (plain AddFields, which squash without manual porting)."""
    cli.cwd.rmdir()
    copy_django_example(cli.cwd)
    add_migration(
        cli.cwd,
        "0004_product_price",
        "operations = [migrations.AddField('product', 'price', models.IntegerField(default=0))]",
    )
    add_migration(
        cli.cwd,
        "0005_product_stock",
        "operations = [migrations.AddField('product', 'stock', models.IntegerField(default=0))]",
        depends="0004_product_price",
    )
    return cli.cwd


def squash(project: Path, url: str) -> None:
    """``manage.py squashmigrations shop 0004 0005`` as a developer runs it; the old files stay, as Django leaves."""
    done = subprocess.run(
        [sys.executable, "manage.py", "squashmigrations", "shop", "0004", "0005", "--noinput"],
        cwd=project,
        env={**os.environ, **env(url)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (project / "shop" / "migrations" / f"{SQUASH.split('.')[1]}.py").is_file()


def readings_of_current(cli: Cli, url: str) -> dict[str, list[str]]:
    """ "current" as each command reports it, the database being at the heads."""
    noop = cli("upgrade", env=env(url))
    assert noop.code == 0, noop.stderr
    check = cli("check", env=env(url))
    assert check.code == 0, check.stderr
    current = cli("current", "--json", env=env(url))
    assert current.code == 0, current.stderr
    plan = cli("plan", "--output", "json", env=env(url))
    assert plan.code == 0, plan.stderr
    return {
        "upgrade.noop": noop.one("upgrade.noop")["current"],
        "check.ok": check.one("check.ok")["current"],
        "current": json.loads(current.stdout)["to"],
        "plan": json.loads(plan.stdout)["current"],
    }


def test_a_database_migrated_before_the_squash_lists_each_app_once(cli: Cli, project: Path, pg_url: str) -> None:
    """Rows for 0004 and 0005, none for the squash: the squash is the shop app's one current entry."""
    assert cli("upgrade", env=env(pg_url)).code == 0
    squash(project, pg_url)

    readings = readings_of_current(cli, pg_url)

    assert readings == dict.fromkeys(readings, LEAVES)
    heads = json.loads(cli("current", "--json", env=env(pg_url)).stdout)["heads"]
    assert len(heads) == len(LEAVES)


def test_a_fresh_database_applies_the_squash_and_lists_each_app_once(cli: Cli, project: Path, pg_url: str) -> None:
    """From empty with the squash on disk: Django applies it, and records it and what it replaces."""
    squash(project, pg_url)

    first = cli("upgrade", env=env(pg_url))

    assert first.code == 0, first.stderr
    assert SQUASH in [e["revision"] for e in first.named("revision.applied")]
    assert first.one("upgrade.finished")["current"] == LEAVES
    assert {SQUASH, "shop.0004_product_price", "shop.0005_product_stock"} <= set(applied(pg_url, "django"))
    readings = readings_of_current(cli, pg_url)
    assert readings == dict.fromkeys(readings, LEAVES)


def test_a_squash_half_applied_finishes_and_then_lists_the_squash(cli: Cli, project: Path, pg_url: str) -> None:
    """At 0004 when the squash arrives, the graph keeps 0004 and 0005 until 0005 is applied."""
    assert cli("upgrade", "shop:0004_product_price", env=env(pg_url)).code == 0
    squash(project, pg_url)
    half = cli("check", env=env(pg_url))
    assert half.code == 1, half.stderr
    pending = [step["revision"] for step in half.one("check.pending")["pending"]]
    assert "shop.0005_product_stock" in pending
    assert SQUASH not in pending

    finished = cli("upgrade", env=env(pg_url))

    assert finished.code == 0, finished.stderr
    done = [e["revision"] for e in finished.named("revision.applied")]
    assert "shop.0005_product_stock" in done
    assert SQUASH not in done
    readings = readings_of_current(cli, pg_url)
    assert readings == dict.fromkeys(readings, LEAVES)
