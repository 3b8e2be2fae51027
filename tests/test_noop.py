"""The no-op fast path (runner/noop.py, quick_heads) gives the full path's answer, or no answer at all.

Each history is read both ways: by ``quick_heads`` (the files' text, no Alembic
import) and by the Alembic driver (Alembic's own revision map). Where the quick
read answers, it must name the same heads; the cases it cannot read plainly
must give no answer. End to end, the fast path must exit and report as the full
path does, and import neither SQLAlchemy nor Alembic.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import Cli, make_project, query, rev_id, version

import runner
from runner.drivers import _alembic_files as files
from runner.drivers import alembic as driver
from runner.settings import load_settings

FILE = '''"""{doc}"""
from alembic import op

revision{annotation} = {rev!r}
down_revision{annotation} = {down!r}
branch_labels = {labels!r}
depends_on = {depends!r}
{extra}

def upgrade():
    op.execute("SELECT 1")


def downgrade():
    pass
'''


def write(project: Path, rev: str, down: object, *, labels: object = None, depends: object = None, **more: str) -> None:
    text = FILE.format(
        doc=more.get("doc", f"revision {rev}"),
        rev=rev,
        down=down,
        labels=labels,
        depends=depends,
        extra=more.get("extra", ""),
        annotation=more.get("annotation", ""),
    )
    (project / "migrations" / "versions" / f"{rev}_x.py").write_text(text)


def both(project: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    """The heads read both ways; where the quick read answers, it must also have read Alembic's files."""
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "path", list(sys.path))  # prepend_sys_path: Alembic's from_config changes sys.path
    settings = load_settings(cwd=project)
    sources: dict[str, tuple[str, bytes]] = {}
    quick = driver.quick_heads(settings, project, sources)
    loaded = driver.Project(settings=settings, cwd=project)
    scripts = {script.revision: script.path for script in loaded.script.walk_revisions()}
    if quick is not None:
        assert {revision: path for revision, (path, _) in sources.items()} == scripts
        assert all(Path(path).read_bytes() == data for path, data in sources.values())
    return quick, loaded.heads()


def configure(project: Path, *lines: str, drop: str = "") -> None:
    """Add ``lines`` to alembic.ini's [alembic] section (after dropping the lines that start with ``drop``)."""
    ini = project / "alembic.ini"
    kept = [line for line in ini.read_text().splitlines() if not (drop and line.startswith(drop))]
    text = "\n".join(kept).replace("[alembic]", "[alembic]\n" + "\n".join(lines), 1)
    ini.write_text(text + "\n")


def move(project: Path, revision: str, directory: str) -> None:
    """Move revision ``revision``'s file from migrations/versions to ``directory`` (relative to the project)."""
    target = project / directory
    target.mkdir(parents=True, exist_ok=True)
    (project / "migrations" / "versions" / f"{revision}_x.py").rename(target / f"{revision}_x.py")


def linear(project: Path, count: int = 4) -> None:
    for number in range(1, count + 1):
        write(project, f"r{number}", f"r{number - 1}" if number > 1 else None)


def two_locations(project: Path, separator: str, joined: str) -> None:
    """r1 and r2 in migrations/versions, r3 and r4 in model_b/versions; version_locations names both."""
    linear(project)
    move(project, "r3", "model_b/versions")
    move(project, "r4", "model_b/versions")
    lines = [f"version_locations = %(here)s/migrations/versions{joined}%(here)s/model_b/versions"]
    configure(project, *lines, *([f"path_separator = {separator}"] if separator else []), drop="path_separator")


def package_resource(project: Path) -> None:
    """Revisions in a package's directory, named as package:resource, the package found through prepend_sys_path."""
    linear(project)
    package = project / "src" / "shop_schema"
    (package / "versions").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for number in (2, 3, 4):
        (project / "migrations" / "versions" / f"r{number}_x.py").rename(package / "versions" / f"r{number}_x.py")
    configure(
        project,
        "version_locations = %(here)s/migrations/versions shop_schema:versions",
        "path_separator = space",
        "prepend_sys_path = src",
        drop="p",
    )


def pyproject(project: Path, body: str) -> None:
    """[tool.alembic] in pyproject.toml instead of an alembic.ini."""
    (project / "alembic.ini").unlink()
    (project / "pyproject.toml").write_text(f'[project]\nname = "shop"\n\n[tool.alembic]\n{body}')


def recursive(project: Path) -> None:
    """Revisions in dated subdirectories of versions/, as recursive_version_locations reads them."""
    linear(project)
    move(project, "r2", "migrations/versions/2025")
    move(project, "r3", "migrations/versions/2026/q1")
    (project / "migrations" / "versions" / "2026" / "__pycache__").mkdir()
    (project / "migrations" / "versions" / "2026" / "__pycache__" / "stale.py").write_text("revision = 'x'\n")
    configure(project, "recursive_version_locations = true")


def history(project: Path, build: Callable[[Path], None]) -> Path:
    make_project(project, revisions=0)
    build(project)
    return project


HISTORIES: dict[str, Callable[[Path], None]] = {
    "linear": lambda p: [write(p, f"r{i}", f"r{i - 1}" if i > 1 else None) for i in range(1, 6)],
    "two branches": lambda p: [write(p, "a", None), write(p, "b", "a"), write(p, "c", "a")],
    "merge point": lambda p: [write(p, "a", None), write(p, "b", "a"), write(p, "c", "a"), write(p, "m", ("b", "c"))],
    "merge as a list": lambda p: [
        write(p, "a", None),
        write(p, "b", "a"),
        write(p, "c", "a"),
        write(p, "m", ["b", "c"]),
    ],
    "two bases": lambda p: [write(p, "a", None), write(p, "b", None), write(p, "m", ("a", "b"))],
    "branch labels": lambda p: [
        write(p, "a", None, labels=("core",)),
        write(p, "b", None, labels="plugin"),
        write(p, "c", "b"),
    ],
    "depends_on another branch": lambda p: [
        write(p, "a", None),
        write(p, "b", None),
        write(p, "c", "b", depends="a"),
    ],
    "annotated, as newer templates write it": lambda p: [
        write(p, "a", None, annotation=": str"),
        write(p, "b", "a", annotation=": str | None"),
    ],
    "a docstring that mentions def at column 0": lambda p: [
        write(p, "a", None, doc="first\ndef of the schema\n"),
        write(p, "b", "a"),
    ],
    # Layouts (issue 28): where Alembic finds the files.
    "version_locations over two directories, path_separator = os": lambda p: two_locations(p, "os", ":"),
    "version_locations, path_separator = ;": lambda p: two_locations(p, ";", ";"),
    "version_locations, no path_separator (Alembic's legacy split on spaces and commas)": lambda p: two_locations(
        p, "", ", "
    ),
    "version_locations with a package:resource location": package_resource,
    "[tool.alembic] in pyproject.toml": lambda p: [
        linear(p),
        pyproject(p, 'script_location = "%(here)s/migrations"\n'),
    ],
    "[tool.alembic] with version_locations as a list": lambda p: [
        two_locations(p, "os", ":"),
        pyproject(
            p,
            'script_location = "migrations"\n'
            'version_locations = ["%(here)s/migrations/versions", "%(here)s/model_b/versions"]\n',
        ),
    ],
    "alembic.ini beside [tool.alembic]: the ini's options come first": lambda p: [
        two_locations(p, "os", ":"),
        (p / "pyproject.toml").write_text(
            '[tool.alembic]\nscript_location = "nowhere"\nrecursive_version_locations = true\n'
        ),
    ],
    "recursive_version_locations": recursive,
    # Prose is not code (issue 28): these words in a docstring, a comment or a function body decide nothing.
    "a docstring that says global": lambda p: [
        write(p, "a", None, doc="Add deployment to global concurrency limit FK"),
        write(p, "b", "a", doc="uses globals(), exec() and sys.modules, in words"),
    ],
    "a comment and a function body that use the words": lambda p: [
        write(p, "a", None, extra="# from x import *; globals()['revision'] = 'z'"),
        write(p, "b", "a", extra="def helper(row):\n    setattr(row, 'x', eval('1'))\n    return vars(row)"),
    ],
}
UNSURE: dict[str, Callable[[Path], None]] = {
    "revision is not a literal": lambda p: [write(p, "a", None), write(p, "b", "a", extra="revision = 'b'.upper()")],
    "down_revision computed": lambda p: [
        write(p, "a", None),
        (p / "migrations" / "versions" / "b_x.py").write_text(
            "from alembic import op\nrevision = 'b'\ndown_revision = ''.join(['a'])\n"
        ),
    ],
    "set twice": lambda p: [write(p, "a", None), write(p, "b", "a", extra="down_revision = None")],
    "set in an if": lambda p: [write(p, "a", None), write(p, "b", "a", extra="if True:\n    down_revision = None")],
    "set through globals()": lambda p: [write(p, "a", None), write(p, "b", "a", extra="globals()['revision'] = 'z'")],
    "a star import": lambda p: [write(p, "a", None), write(p, "b", "a", extra="from os.path import *")],
    "depends_on a branch label": lambda p: [
        write(p, "a", None, labels="core"),
        write(p, "b", None),
        write(p, "c", "b", depends="core"),
    ],
    "a function called at import that sets revision": lambda p: [
        write(p, "a", None),
        write(p, "b", "a", extra="def _name():\n    global revision\n    revision = 'z'\n\n_name()"),
    ],
    "a class body that declares revision global": lambda p: [
        write(p, "a", None),
        write(p, "b", "a", extra="class Rename:\n    global down_revision\n    down_revision = None"),
    ],
    "exec at import": lambda p: [write(p, "a", None), write(p, "b", "a", extra="exec('revision = 1')")],
    "sys.modules at import": lambda p: [
        write(p, "a", None),
        write(p, "b", "a", extra="import sys\nsys.modules[__name__].down_revision = None"),
    ],
    "a file listed by two overlapping locations": lambda p: [
        linear(p),
        configure(p, "version_locations = %(here)s/migrations/versions %(here)s/migrations/./versions"),
    ],
    "sourceless": lambda p: [linear(p), configure(p, "sourceless = true")],
}


@pytest.mark.parametrize("name", list(HISTORIES))
def test_quick_heads_are_alembics_heads(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path's heads equal Alembic's for each history of the corpus."""
    project = history(tmp_path / "project", HISTORIES[name])

    quick, full = both(project, monkeypatch)

    assert quick == full


@pytest.mark.parametrize("name", list(UNSURE))
def test_what_the_quick_read_cannot_be_sure_of_it_leaves_to_alembic(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revision file the quick read cannot be sure of gives None, so Alembic decides."""
    project = history(tmp_path / "project", UNSURE[name])
    monkeypatch.chdir(project)

    assert driver.quick_heads(load_settings(cwd=project), project) is None


def test_a_package_resource_is_found_without_importing_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alembic imports the package of a package:resource location; the quick read must not (an app's models)."""
    project = history(tmp_path / "project", package_resource)
    (project / "src" / "shop_schema" / "__init__.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.delitem(sys.modules, "shop_schema", raising=False)  # another test's full path imported its own
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "path", list(sys.path))

    assert driver.quick_heads(load_settings(cwd=project), project) == ("r4",)
    assert "shop_schema" not in sys.modules


def test_broken_histories_get_no_quick_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dangling down_revision, a duplicate id, a cycle: Alembic's own errors must be what the user sees."""
    for number, build in enumerate(
        [
            lambda p: [write(p, "a", None), write(p, "b", "nowhere")],
            lambda p: [
                write(p, "a", None),
                (p / "migrations" / "versions" / "a2_x.py").write_text("revision = 'a'\ndown_revision = None\n"),
            ],
            lambda p: [write(p, "a", "b"), write(p, "b", "a")],
        ]
    ):
        project = history(tmp_path / f"p{number}", build)
        monkeypatch.chdir(project)
        assert driver.quick_heads(load_settings(cwd=project), project) is None, number


def run_upgrade(cli: Cli, env: dict[str, str], command: str = "upgrade") -> tuple[int, list[str], bool]:
    """Run a command in a child that reports its exit code, its event names and whether SQLAlchemy was imported."""
    code = (
        "import sys, runner.cli\n"
        f"code = runner.cli.main([{command!r}])\n"
        "print('RESULT', code, 'sqlalchemy' in sys.modules or 'alembic' in sys.modules, file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cli.cwd, env=cli.env(env), capture_output=True, text=True, timeout=60
    )
    events = [json.loads(line)["event"] for line in done.stdout.splitlines() if line.startswith("{")]
    result = done.stderr.strip().splitlines()[-1].split()
    return int(result[1]), events, result[2] == "True"


def test_at_head_the_run_imports_neither_sqlalchemy_nor_alembic(cli: Cli, pg_url: str) -> None:
    """At head, upgrade answers without importing SQLAlchemy or Alembic, with the full path's events."""
    make_project(cli.cwd, revisions=3)
    env = {"MIGRATION_DATABASE_URL": pg_url}
    assert cli(env=env).code == 0

    code, events, imported = run_upgrade(cli, env)

    assert (code, imported) == (0, False)
    assert events == ["run.started", "upgrade.noop", "run.finished"]


START_UP_PROBE = """
import atexit, gc, json, runpy, sys, tokenize
def report():
    imported = sorted(m for m in ("sqlalchemy", "alembic", "runner.flags", "app.models") if m in sys.modules)
    found = [imported, tokenize._compile.cache_info().currsize, list(gc.get_threshold())]
    print("PROBE", json.dumps(found), file=sys.stderr)
atexit.register(report)
sys.argv = ["migration-runner", "upgrade"]
runpy.run_module("runner", run_name="__main__", alter_sys=True)
"""


def probe_start_up(cli: Cli, env: dict[str, str]) -> tuple[int, list[str], list[Any]]:
    """Run ``migration-runner upgrade`` as the program starts it; its exit code, events, and what it paid for.

    The last is ``[modules imported of sqlalchemy, alembic, runner.flags, app.models; regular expressions
    tokenize compiled; the GC thresholds at exit]``.
    """
    done = subprocess.run(
        [sys.executable, "-c", START_UP_PROBE],
        cwd=cli.cwd,
        env=cli.env(env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    events = [json.loads(line)["event"] for line in done.stdout.splitlines() if line.startswith("{")]
    probe = next(line for line in done.stderr.splitlines() if line.startswith("PROBE "))
    return done.returncode, events, json.loads(probe.removeprefix("PROBE "))


def test_a_no_op_pays_for_nothing_it_does_not_use(cli: Cli, pg_url: str) -> None:
    """Start-up costs found by profiling (issue 28) stay gone: each was 5-30 ms of a 0.4 s no-op.

    - ``tokenize``'s large pattern is never compiled (pydantic's signature of a builtin default factory did);
    - ``runner.flags`` is not imported (the accept_flags validator ran on the default);
    - the GC thresholds are the runner's from the start (``runner.__main__``), not only after the imports.
    """
    make_project(cli.cwd, revisions=3)
    env = {"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_LOG_FORMAT": "json"}
    assert cli(env=env).code == 0

    code, events, (imported, compiled, thresholds) = probe_start_up(cli, env)

    assert (code, events) == (0, ["run.started", "upgrade.noop", "run.finished"])
    assert imported == []
    assert compiled == 0
    assert tuple(thresholds) == runner.GC_THRESHOLDS


def test_a_no_op_over_version_locations_imports_no_revision_file(cli: Cli, pg_url: str) -> None:
    """The real-project layout of issue 28: two version_locations, each revision importing the app's models."""
    make_project(cli.cwd, revisions=4)
    (cli.cwd / "app").mkdir()
    (cli.cwd / "app" / "__init__.py").write_text("")
    (cli.cwd / "app" / "models.py").write_text("")
    versions, second = cli.cwd / "migrations" / "versions", cli.cwd / "model_b" / "versions"
    second.mkdir(parents=True)
    for number, path in enumerate(sorted(versions.glob("*.py"))):
        text = path.read_text().replace("import os\n", 'import os\n\nimport app.models  # "global" settings\n', 1)
        (second if number % 2 else versions).joinpath(path.name).write_text(text)
        if number % 2:
            path.unlink()
    configure(cli.cwd, "version_locations = %(here)s/migrations/versions:%(here)s/model_b/versions")
    env = {"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_LOG_FORMAT": "json"}
    assert cli(env=env).code == 0
    assert query(pg_url, "SELECT count(*) FROM applied_log") == [(4,)]

    code, events, (imported, _, _) = probe_start_up(cli, env)

    assert (code, events) == (0, ["run.started", "upgrade.noop", "run.finished"])
    assert imported == []


def test_the_fast_path_reports_what_the_full_path_reports(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """Result document, termination message and metrics of a no-op are the same on both paths."""
    make_project(cli.cwd, revisions=3)
    assert cli(env={"MIGRATION_DATABASE_URL": pg_url}).code == 0
    documents = []
    for path, extra in (("fast", {}), ("full", {"MIGRATION_TARGET": rev_id(3)})):
        termination = tmp_path / f"termination-{path}"
        termination.touch()
        result = cli(
            "upgrade",
            "--json",
            env={"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_TERMINATION_LOG": str(termination), **extra},
        )
        assert result.code == 0, result.stderr
        document = json.loads(result.stdout)
        documents.append(
            ({k: v for k, v in document.items() if k != "duration_seconds"}, json.loads(termination.read_text()))
        )
        assert result.one("upgrade.noop")["reason"] == "already at target"
    (fast, fast_termination), (full, full_termination) = documents
    assert fast_termination == full_termination
    assert {**fast, "target": None} == {**full, "target": None}  # the full path was asked for one revision
    assert fast["target"] == fast["heads"] == [rev_id(3)]


@pytest.mark.parametrize(
    ("case", "expected"),
    [("behind", 0), ("unknown revision", 66), ("no version table", 0), ("pending, then applies", 0)],
)
def test_anything_but_at_head_takes_the_full_path(cli: Cli, pg_url: str, case: str, expected: int) -> None:
    """Behind head, an unknown revision or no version table: the full path decides, with its code."""
    make_project(cli.cwd, revisions=3)
    env = {"MIGRATION_DATABASE_URL": pg_url}
    if case != "no version table":
        assert cli(env={**env, "MIGRATION_TARGET": rev_id(2)}).code == 0
    if case == "unknown revision":
        query(pg_url, "UPDATE alembic_version SET version_num = 'f00d'")

    code, events, imported = run_upgrade(cli, env)

    assert code == expected
    assert imported  # the full path decided
    if expected == 0:
        assert version(pg_url) == [rev_id(3)]
        assert "upgrade.finished" in events


def test_sqlite_and_mariadb_take_the_fast_path_too(cli: Cli, mysql_url: str, tmp_path: Path) -> None:
    """The no-op fast path answers on SQLite and MariaDB too."""
    make_project(cli.cwd, revisions=2)
    for url in (f"sqlite:///{tmp_path / 'db.sqlite3'}", mysql_url):
        env = {"MIGRATION_DATABASE_URL": url}
        assert cli(env=env).code == 0

        code, events, imported = run_upgrade(cli, env)

        assert (code, imported, events[-2]) == (0, False, "upgrade.noop"), url


def test_a_missing_sqlite_file_is_not_created_by_the_fast_path(cli: Cli, tmp_path: Path) -> None:
    """The fast path never creates a missing SQLite file; the full path creates and migrates it."""
    make_project(cli.cwd, revisions=1)
    database = tmp_path / "new.sqlite3"

    code, _, imported = run_upgrade(cli, {"MIGRATION_DATABASE_URL": f"sqlite:///{database}"})

    assert (code, imported) == (0, True)
    assert database.exists()  # created by the full path, which then migrated it


def test_revision_files_written_by_alembic_revision_are_read_quickly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files `alembic revision` writes with every shipped template: the quick read must answer for them."""
    subprocess.run(
        [Path(sys.executable).with_name("alembic"), "init", "-t", "generic", "migrations"],
        cwd=tmp_path, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    for message in ("one", "two"):
        subprocess.run(
            [Path(sys.executable).with_name("alembic"), "revision", "-m", message],
            cwd=tmp_path, check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    monkeypatch.chdir(tmp_path)
    settings = load_settings(cwd=tmp_path)

    quick = driver.quick_heads(settings, tmp_path)

    assert quick is not None
    assert quick == driver.Project(settings=settings, cwd=tmp_path).heads()


def test_the_line_reader_and_the_parser_agree(tmp_path: Path) -> None:
    """_plain_head reads the usual file without the parser; where it answers, the parser answers the same."""
    heads = [
        '"""doc\n\nRevision ID: a\n"""\nfrom typing import Sequence, Union\n\nfrom alembic import op\n'
        "import sqlalchemy as sa\n\nrevision: str = 'a1'\ndown_revision: Union[str, Sequence[str], None] = None\n"
        "branch_labels: Union[str, Sequence[str], None] = None\ndepends_on = ('x', 'y')  # a comment\n\n",
        "revision = \"b\"\ndown_revision = ['a', 'c',]\n",
        "import os, sys as system\nrevision = 'c'\ndown_revision = ('a',)\n",
        "revision = 'd'\nrevision = 'e'\n",  # set twice: no answer from either
        "revision = 'f' if True else 'g'\ndown_revision = None\n",  # not plain: the parser decides
        "import revision\n",
        '"""a \\\\ backslash"""\nrevision = "h"\n',
        "revision = 'i'\nfrom m import a, revision\n",  # the import binds it last: the parser says unsure
        "revision = 'j'\nimport down_revision.x\n",
        "revision = 'k'\r\ndown_revision = None\r\n",  # CRLF line endings read as LF
        "revision = 'l'\rdown_revision = None\r",  # a lone CR: the parser decides
        "\n  revision = 'm'\n",  # an indented first line does not parse
    ]
    answered = 0
    for head in heads:
        plain = files._plain_head(head)
        if plain is None:
            continue
        answered += 1
        assert plain == files._top_level_values(ast.parse(head)), head
    assert answered == 4


@pytest.mark.parametrize(("command", "event"), [("check", "check.ok"), ("wait", "wait.finished")])
def test_check_and_wait_at_head_take_the_fast_path_too(cli: Cli, pg_url: str, command: str, event: str) -> None:
    """An application's `wait` init-container pays the same no-op as the migration's `upgrade`."""
    make_project(cli.cwd, revisions=3)
    env = {"MIGRATION_DATABASE_URL": pg_url}
    assert cli(env=env).code == 0

    code, events, imported = run_upgrade(cli, env, command)
    full = cli(command, env={**env, "MIGRATION_TARGET": rev_id(3)})

    assert (code, imported) == (0, False)
    assert events == ["run.started", event, "run.finished"]
    assert full.code == 0
    assert full.one(event)["current"] == [rev_id(3)]


def test_check_behind_head_still_exits_1(cli: Cli, pg_url: str) -> None:
    """check behind head takes the full path and exits 1 naming what is pending."""
    make_project(cli.cwd, revisions=3)
    env = {"MIGRATION_DATABASE_URL": pg_url}
    assert cli(env={**env, "MIGRATION_TARGET": rev_id(2)}).code == 0

    code, events, imported = run_upgrade(cli, env, "check")

    assert (code, imported) == (1, True)
    assert "check.pending" in events
