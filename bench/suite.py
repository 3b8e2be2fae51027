"""The performance suite: every row of docs/performance.md, timed as whole processes.

Each row runs the runner (A) against its anchor (B: ``alembic upgrade head``,
``manage.py migrate``, or for ``verify`` pytest-alembic's four built-in tests,
``bench/pytest_alembic_four.py``) and, where there is one, the stack floor (F: the least any
runner on this stack can do, ``bench/floor_*.py``), in alternation (A B F A B F ...),
so a machine that drifts moves all of them alike. Wall time is measured around
the child; peak RSS is GNU time's ``%M`` for it. Medians are printed and ratios
are taken pair by pair. The runner's own modules are byte-compiled first, as an
installed wheel is (the machines and the image set ``PYTHONDONTWRITEBYTECODE=1``).
Usage::

    uv run python bench/suite.py [--runs 11] [--json bench/results.json]
        [--rows noop,layout,apply,followers,fleet,django,verify,django-verify]

Needs the PostgreSQL server of the tests (``TEST_POSTGRES_URL``, default the local
one); it creates its databases and drops them. It asserts nothing: the figures
are read against the targets in docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from support import make_project  # noqa: E402  (the tests' project generator)

BIN = Path(sys.executable).parent
PYTHON = sys.executable
ADMIN = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
THIRD_PARTY = REPO / "tests" / "projects" / "thirdparty"


GNU_TIME = shutil.which("time") or "/usr/bin/time"


def measure(command: list[str], cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run ``command`` once: wall seconds, and its peak RSS (MiB) from GNU time's ``%M``.

    GNU time, a small C program, starts the command: the peak of a child forked
    from this (large) Python process would count this process's pages too.
    """
    with tempfile.NamedTemporaryFile("r") as rss:
        started = time.perf_counter()
        done = subprocess.run(
            [GNU_TIME, "-f", "%M", "-o", rss.name, *command], cwd=cwd, env=env, capture_output=True, check=False
        )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout.decode(errors='replace')}")
        peak_kib = int(rss.read().split()[-1])
    return {"wall": wall, "rss_mib": peak_kib / 1024}


@contextlib.contextmanager
def database() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards: its URL."""
    name = f"mr_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield sqlalchemy.make_url(ADMIN).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def recreate(url: str) -> None:
    name = sqlalchemy.make_url(url).database
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')


def base_env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIGRATION_", "DJANGO_"))}
    env.pop("DATABASE_URL", None)
    return {**env, "MIGRATION_ENVIRONMENT": "production", **more}


def alternate(
    commands: dict[str, list[str]], cwd: Path, env: dict[str, str], runs: int, before: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Run the commands in turn, ``runs`` times each after one warm-up round; medians and pairwise ratios."""
    samples: dict[str, list[dict[str, Any]]] = {label: [] for label in commands}
    for round_ in range(runs + 1):
        for label, command in commands.items():
            if before:
                before()
            sample = measure(command, cwd, env)
            if round_:
                samples[label].append(sample)
    labels = list(commands)
    row: dict[str, Any] = {
        label: {
            "median_s": round(statistics.median(s["wall"] for s in samples[label]), 4),
            "median_rss_mib": round(statistics.median(s["rss_mib"] for s in samples[label]), 1),
        }
        for label in labels
    }
    for other in labels[1:]:
        ratios = [a["wall"] / b["wall"] for a, b in zip(samples[labels[0]], samples[other], strict=True)]
        row[f"ratio_to_{other}"] = round(statistics.median(ratios), 3)
    return row


def alembic_project(root: Path, revisions: int, url: str) -> Path:
    project = make_project(root, revisions=revisions)
    ini = project / "alembic.ini"
    text = ini.read_text().replace("driver://user:pass@localhost/dbname", url)
    assert url in text, "the quickstart's alembic.ini no longer has the placeholder URL"  # noqa: S101
    ini.write_text(text)
    return project


NOOP_SIZES = tuple(int(n) for n in os.environ.get("BENCH_NOOP_SIZES", "10,100,300,1000").split(","))


def noop_rows(runs: int, tmp: Path) -> dict[str, Any]:
    rows = {}
    for revisions in NOOP_SIZES:
        with database() as url:
            project = alembic_project(tmp / f"noop{revisions}", revisions, url)
            rows[f"noop, {revisions} revisions"] = noop_row(project, url, runs)
    first, last = rows["noop, 10 revisions"], rows["noop, 1000 revisions"]
    rows["noop, runner at 1000 revisions against 10"] = {
        "ratio": round(last["runner"]["median_s"] / first["runner"]["median_s"], 3)
    }
    for row in rows.values():
        if "floor" in row:
            row["rss_ratio_to_floor"] = round(row["runner"]["median_rss_mib"] / row["floor"]["median_rss_mib"], 3)
    return rows


def noop_row(project: Path, url: str, runs: int) -> dict[str, Any]:
    """The project's database brought to head by Alembic, then the runner's no-op, Alembic's and the floor's."""
    env = base_env(MIGRATION_DATABASE_URL=url, MIGRATION_LOG_FORMAT="json")
    measure([str(BIN / "alembic"), "upgrade", "head"], project, env)
    return alternate(
        {
            "runner": [str(BIN / "migration-runner"), "upgrade"],
            "alembic": [str(BIN / "alembic"), "upgrade", "head"],
            "floor": [PYTHON, str(REPO / "bench" / "floor_alembic.py")],
        },
        project,
        env,
        runs,
    )


def per_revision_transactions(project: Path, *, durable_at_end: bool = False) -> Path:
    """A copy of ``project`` whose env.py asks Alembic for a transaction per revision, as the runner keeps.

    With ``durable_at_end``, env.py also ends with one synchronous commit that writes WAL (the version
    row, rewritten as it is): run with ``PGOPTIONS='-c synchronous_commit=off'``, that is the runner's
    recipe (asynchronous commits, then one flush, runner/ledger.py ``make_durable``).
    """
    suffix = "-like-for-like" if durable_at_end else "-per-revision"
    copy = Path(shutil.copytree(project, project.with_name(project.name + suffix)))
    env_py = copy / "migrations" / "env.py"
    plain = "context.configure(connection=connection, target_metadata=target_metadata)"
    run = "        with context.begin_transaction():\n            context.run_migrations()\n"
    text = env_py.read_text()
    assert plain in text and run in text, "the quickstart's env.py no longer configures the connection this way"  # noqa: S101
    text = text.replace(plain, plain[:-1] + ", transaction_per_migration=True)")
    if durable_at_end:
        text = text.replace(
            run,
            run  # noqa: S608  (a constant statement, written into env.py)
            + "        with connection.begin():\n"
            '            connection.exec_driver_sql("SET LOCAL synchronous_commit = on")\n'
            '            connection.exec_driver_sql("UPDATE alembic_version SET version_num = version_num")\n',
        )
    env_py.write_text(text)
    return copy


LIKE_FOR_LIKE = "alembic, like for like"


def apply_rows(runs: int, tmp: Path) -> dict[str, Any]:
    """Apply from empty at 300 and 1000 revisions, against Alembic with the runner's transactions and durability.

    The like-for-like anchor is ``alembic upgrade head`` with ``transaction_per_migration=True``,
    ``synchronous_commit=off`` through ``PGOPTIONS`` and one synchronous commit at the end. Plain
    ``alembic upgrade head`` (one transaction for the whole history) is reported beside it.
    """
    rows = {}
    for revisions in (300, 1000):
        with database() as url:
            project = alembic_project(tmp / f"apply{revisions}", revisions, url)
            ini = per_revision_transactions(project) / "alembic.ini"
            like = per_revision_transactions(project, durable_at_end=True) / "alembic.ini"
            env = base_env(MIGRATION_DATABASE_URL=url, MIGRATION_LOG_FORMAT="json")
            asynchronous = ["env", "PGOPTIONS=-c synchronous_commit=off"]
            rows[f"apply {revisions} revisions to an empty database"] = alternate(
                {
                    "runner": [str(BIN / "migration-runner"), "upgrade"],
                    LIKE_FOR_LIKE: [*asynchronous, str(BIN / "alembic"), "-c", str(like), "upgrade", "head"],
                    "alembic": [str(BIN / "alembic"), "upgrade", "head"],
                    "alembic, a transaction per revision": [str(BIN / "alembic"), "-c", str(ini), "upgrade", "head"],
                },
                project,
                env,
                max(3, runs // 3),
                before=lambda url=url: recreate(url),
            )
    small, large = rows["apply 300 revisions to an empty database"], rows["apply 1000 revisions to an empty database"]
    slopes = {label: (large[label]["median_s"] - small[label]["median_s"]) / 700 for label in ("runner", LIKE_FOR_LIKE)}
    rows["apply, seconds per revision between 300 and 1000"] = {
        "runner": {"median_s": round(slopes["runner"], 6)},
        LIKE_FOR_LIKE: {"median_s": round(slopes[LIKE_FOR_LIKE], 6)},
        f"ratio_to_{LIKE_FOR_LIKE}": round(slopes["runner"] / slopes[LIKE_FOR_LIKE], 3),
    }
    return rows


SLOW_MODELS = """\"\"\"A stand-in for an application's models: importing it takes 300 ms.\"\"\"
import time

time.sleep(0.3)
"""


def layout_row(runs: int, tmp: Path) -> dict[str, Any]:
    """A no-op on 150 revisions over two version_locations, each revision importing a 300 ms ``app.models``."""
    with database() as url:
        project = alembic_project(tmp / "layout", 150, url)
        versions, second = project / "migrations" / "versions", project / "model_b" / "versions"
        second.mkdir(parents=True)
        for number, path in enumerate(sorted(versions.glob("*.py"))):
            text = path.read_text().replace(
                "import sqlalchemy as sa\n", "import sqlalchemy as sa\n\nimport app.models\n", 1
            )
            assert "import app.models" in text, "the revision template no longer imports sqlalchemy as sa"  # noqa: S101
            (second if number % 2 else versions).joinpath(path.name).write_text(text)
            if number % 2:
                path.unlink()
        (project / "app").mkdir()
        (project / "app" / "__init__.py").write_text("")
        (project / "app" / "models.py").write_text(SLOW_MODELS)
        ini = project / "alembic.ini"
        ini.write_text(
            ini.read_text().replace(
                "[alembic]\n",
                "[alembic]\nversion_locations = %(here)s/migrations/versions:%(here)s/model_b/versions\n",
                1,
            )
        )
        row = noop_row(project, url, runs)
        row["rss_ratio_to_floor"] = round(row["runner"]["median_rss_mib"] / row["floor"]["median_rss_mib"], 3)
        return {"noop, 150 revisions in two version_locations, each importing a 300 ms app.models": row}


def followers_row(runs: int, tmp: Path) -> dict[str, Any]:
    """8 runners at once on 100 revisions: seconds from the winner's upgrade.finished to the last run.finished.

    Measured on the machine as it is, then beside two busy-loop processes (a busy node).
    """
    rows = {}
    with database() as url:
        project = alembic_project(tmp / "followers", 100, url)
        env = base_env(MIGRATION_DATABASE_URL=url, MIGRATION_LOG_FORMAT="json")
        for busy in (0, 2):
            gaps = []
            with busy_loops(busy):
                for _ in range(max(3, runs // 3)):
                    recreate(url)
                    gaps.append(followers_gap(project, env))
            beside = f", beside {busy} busy loops" if busy else ""
            rows[f"8 followers, 100 revisions{beside}: last exit after the winner's upgrade.finished"] = {
                "median_s": round(statistics.median(gaps), 4),
                "max_s": round(max(gaps), 4),
            }
    return rows


@contextlib.contextmanager
def busy_loops(count: int) -> Iterator[None]:
    """``count`` processes that spin on the CPU until the block ends."""
    loops = [subprocess.Popen([PYTHON, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def followers_gap(project: Path, env: dict[str, str]) -> float:
    """Start 8 runners at once; seconds from the one upgrade.finished to the last run.finished."""
    processes = [
        subprocess.Popen(
            [str(BIN / "migration-runner"), "upgrade"], cwd=project, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(8)
    ]
    events = []
    for process in processes:
        out, _ = process.communicate(timeout=300)
        if process.returncode != 0:
            raise SystemExit(f"a follower exited {process.returncode}")
        events += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    (winner,) = moments(events, "upgrade.finished")
    return (max(moments(events, "run.finished")) - winner).total_seconds()


FLEET_SIZE, FLEET_REVISIONS, FLEET_PARALLELISM = 200, 20, 4


def fleet_row(runs: int, tmp: Path) -> dict[str, Any]:
    """``upgrade --all`` over 200 databases against ``xargs -P 4`` running ``alembic upgrade head`` once per database.

    Each round applies 20 revisions to every database (all at base), then runs again with every
    database at head (the no-op pass). Wall time, and the peak memory of the whole process tree
    (the sum of its processes' PSS, sampled): pages a fork shares count once.
    """
    names = [f"mr_fleet_{uuid.uuid4().hex[:8]}_{i}" for i in range(FLEET_SIZE)]
    admin_url = sqlalchemy.make_url(ADMIN)
    urls_ = [admin_url.set(database=name).render_as_string(hide_password=False) for name in names]
    project = alembic_project(tmp / "fleet", FLEET_REVISIONS, urls_[0])
    (project / "databases.txt").write_text("\n".join(urls_) + "\n")
    inis = project / "inis"
    inis.mkdir()
    template = (project / "alembic.ini").read_text().replace("%(here)s/migrations", str(project / "migrations"))
    for number, url in enumerate(urls_):
        (inis / f"{number}.ini").write_text(template.replace(urls_[0], url))
    (project / "inis.txt").write_text("".join(f"{inis / f'{n}.ini'}\n" for n in range(FLEET_SIZE)))
    env = base_env(
        MIGRATION_DATABASES_FILE=str(project / "databases.txt"),
        MIGRATION_PARALLELISM=str(FLEET_PARALLELISM),
        MIGRATION_LOG_FORMAT="json",
    )
    commands = {
        "runner --all": [str(BIN / "migration-runner"), "upgrade", "--all"],
        "xargs -P 4 alembic": [
            *("xargs", "-a", str(project / "inis.txt"), "-P", str(FLEET_PARALLELISM), "-I{}"),
            *(str(BIN / "alembic"), "-c", "{}", "upgrade", "head"),
        ],
    }
    samples: dict[str, list[dict[str, Any]]] = {f"{label}{p}": [] for p in ("", ", no-op") for label in commands}

    def recreate_all() -> None:
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            for name in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                admin.execute(f'CREATE DATABASE "{name}"')

    try:
        for _ in range(max(2, runs // 4)):  # no warm-up round: each round is minutes of work
            for label, command in commands.items():
                recreate_all()
                samples[label].append(measure_tree(command, project, env))
                samples[f"{label}, no-op"].append(measure_tree(command, project, env))
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            for name in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    rows = {}
    for suffix in ("", ", no-op"):
        runner, anchor = samples[f"runner --all{suffix}"], samples[f"xargs -P 4 alembic{suffix}"]
        rows[f"{FLEET_SIZE} databases, {FLEET_REVISIONS} revisions, parallelism 4{suffix or ', from base'}"] = {
            "runner --all": summary(runner),
            "xargs -P 4 alembic": summary(anchor),
            "ratio_to_xargs": round(
                statistics.median(a["wall"] / b["wall"] for a, b in zip(runner, anchor, strict=True)), 3
            ),
        }
    return rows


def summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "median_s": round(statistics.median(s["wall"] for s in samples), 4),
        "median_rss_mib": round(statistics.median(s["rss_mib"] for s in samples), 1),
    }


def measure_tree(command: list[str], cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run ``command`` once: wall seconds, and the peak over time of its process tree's summed PSS (MiB)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.1):
            peak = max(peak, tree_pss_kib(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, errors = process.communicate()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {process.returncode}:\n{errors.decode(errors='replace')[-3000:]}")
    return {"wall": wall, "rss_mib": peak / 1024}


def tree_pss_kib(root: int) -> int:
    """The summed PSS (KiB) of ``root`` and its descendants now; processes that end meanwhile count 0."""
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{pid}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
    return total


def moments(events: list[dict[str, Any]], name: str) -> list[dt.datetime]:
    """When the events called ``name`` were logged (the runners' own timestamps)."""
    return [dt.datetime.fromisoformat(e["timestamp"]) for e in events if e["event"] == name]


def third_party_env(url: str, **more: str) -> dict[str, str]:
    """The third-party site's own variables, as its settings.py reads them, for the database at ``url``."""
    parsed = sqlalchemy.make_url(url)
    return base_env(
        DJANGO_SETTINGS_MODULE="site_settings.settings",
        DJANGO_DB_NAME=parsed.database or "",
        DJANGO_DB_HOST=parsed.host or "",
        DJANGO_DB_PORT=str(parsed.port or ""),
        DJANGO_DB_USER=parsed.username or "",
        MIGRATION_LOG_FORMAT="json",
        **more,
    )


def django_row(runs: int, tmp: Path) -> dict[str, Any]:
    with database() as url:
        project = Path(shutil.copytree(THIRD_PARTY, tmp / "thirdparty"))
        env = third_party_env(url)
        measure([PYTHON, "manage.py", "migrate"], project, env)
        migrations = psycopg.connect(url).execute("SELECT count(*) FROM django_migrations").fetchone()
        return {
            f"Django no-op, {migrations[0] if migrations else '?'} migrations": alternate(
                {
                    "runner": [str(BIN / "migration-runner"), "upgrade"],
                    "manage.py migrate": [PYTHON, "manage.py", "migrate"],
                    "floor": [PYTHON, str(REPO / "bench" / "floor_django.py")],
                },
                project,
                env,
                runs,
            )
        }


VERIFY_REVISION = '''"""table t{number}"""
from alembic import op
import sqlalchemy as sa

revision = "{revision}"
down_revision = {down!r}


def upgrade():
    op.create_table(
        "t{number}",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
    )
    op.create_index("ix_t{number}_name", "t{number}", ["name"])


def downgrade():
    op.drop_index("ix_t{number}_name", table_name="t{number}")
    op.drop_table("t{number}")
'''


def verify_project(root: Path, revisions: int, url: str) -> Path:
    """An Alembic history of ``revisions`` revisions (a table and an index each) with models that match it.

    Written for both: ``env.py`` is ``alembic init``'s, with ``target_metadata`` from ``models.py``, and a
    ``tests/conftest.py`` gives pytest-alembic the database.
    """
    project = alembic_project(root, 0, url)
    versions = project / "migrations" / "versions"
    for number in range(1, revisions + 1):
        down = f"{number - 1:04}" if number > 1 else None
        text = VERIFY_REVISION.format(number=number, revision=f"{number:04}", down=down)
        (versions / f"{number:04}_t{number}.py").write_text(text)
    tables = "".join(
        f'sa.Index("ix_t{n}_name", sa.Table("t{n}", metadata, sa.Column("id", sa.Integer, primary_key=True), '
        f'sa.Column("name", sa.String(100), nullable=False)).c.name)\n'
        for n in range(1, revisions + 1)
    )
    (project / "models.py").write_text(f"import sqlalchemy as sa\n\nmetadata = sa.MetaData()\n{tables}")
    env_py = project / "migrations" / "env.py"
    text = env_py.read_text()
    assert "target_metadata = None" in text, "the quickstart's env.py no longer sets target_metadata = None"  # noqa: S101
    env_py.write_text(
        text.replace(
            "target_metadata = None",
            "import os, sys\nsys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))\n"
            "from models import metadata as target_metadata",
        )
    )
    return project


def verify_rows(runs: int, tmp: Path) -> dict[str, Any]:
    """verify against pytest-alembic's four built-in tests, on one 100-revision history and one database."""
    with database() as url:
        project = verify_project(tmp / "verify100", 100, url)
        env = base_env(MIGRATION_DATABASE_URL=url, MIGRATION_LOG_FORMAT="json", MIGRATION_ENVIRONMENT="test")
        return {
            "verify, 100 revisions": alternate(
                {
                    "runner": [str(BIN / "migration-runner"), "verify"],
                    "pytest-alembic": [PYTHON, str(REPO / "bench" / "pytest_alembic_four.py")],
                },
                project,
                env,
                max(3, runs // 3),
                before=lambda: recreate(url),
            )
        }


def django_verify_row(runs: int, tmp: Path) -> dict[str, Any]:
    """verify's upgrade case against ``migrate`` from empty, both timed in-process, on the third-party site."""
    with database() as url:
        project = Path(shutil.copytree(THIRD_PARTY, tmp / "thirdparty-verify"))
        env = third_party_env(url, MIGRATION_ENVIRONMENT="test")
        upgrade_case, migrate = [], []
        for round_ in range(max(3, runs // 3) + 1):
            recreate(url)
            # check=False: verify exits 1 here, on the traces it finds in allauth and django-oauth-toolkit
            done = subprocess.run(
                [str(BIN / "migration-runner"), "verify", "--output", "json"],
                cwd=project,
                env=env,
                capture_output=True,
                check=False,
            )
            report = json.loads(done.stdout)
            recreate(url)
            timed = subprocess.run(
                [PYTHON, str(REPO / "bench" / "django_migrate_timed.py")],
                cwd=project,
                env=env,
                capture_output=True,
                check=True,
            )
            if round_:  # the first round warms the caches
                upgrade_case.append(next(c["seconds"] for c in report["cases"] if c["name"] == "upgrade"))
                migrate.append(json.loads(timed.stdout)["seconds"])
        ratios = [a / b for a, b in zip(upgrade_case, migrate, strict=True)]
        return {
            f"verify's upgrade case, Django, {len(report['cases']) // 2 - 2} migrations": {
                "runner": {"median_s": round(statistics.median(upgrade_case), 4)},
                "manage.py migrate (call_command)": {"median_s": round(statistics.median(migrate), 4)},
                "ratio_to_migrate": round(statistics.median(ratios), 3),
            }
        }


def environment() -> dict[str, Any]:
    with psycopg.connect(ADMIN) as connection:
        server = connection.execute("SHOW server_version").fetchone()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "postgresql": server[0] if server else None,
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", ""),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=11, help="timed runs of each command per row (default 11)")
    parser.add_argument(
        "--rows",
        default="noop,layout,apply,followers,fleet,django,verify,django-verify",
        help="which rows, comma-separated",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    builders = {
        "noop": noop_rows,
        "apply": apply_rows,
        "followers": followers_row,
        "layout": layout_row,
        "fleet": fleet_row,
        "django": django_row,
        "verify": verify_rows,
        "django-verify": django_verify_row,
    }
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(REPO / "runner")], check=True)
    results: dict[str, Any] = {"environment": environment(), "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.rows.split(","):
            results["rows"].update(builders[name](args.runs, Path(tmp)))
    print(json.dumps(results["environment"]))
    print(f"{'row':<60} {'command':<36} {'median s':>9} {'RSS MiB':>8}  ratios (runner to ...)")
    for row, figures in results["rows"].items():
        ratios = "  ".join(
            f"{k.removeprefix('ratio_to_').replace('rss_ratio_to_', 'RSS, ')} {v}"
            for k, v in figures.items()
            if not isinstance(v, dict)
        )
        commands = [(command, values) for command, values in figures.items() if isinstance(values, dict)]
        for number, (command, values) in enumerate(commands or [("", {})]):
            shown = (row, ratios) if number == 0 else ("", "")
            seconds, rss = values.get("median_s", ""), values.get("median_rss_mib", "")
            print(f"{shown[0]:<60} {command:<36} {seconds:>9} {rss:>8}  {shown[1]}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
