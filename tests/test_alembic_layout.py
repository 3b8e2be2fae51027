"""The fast path's reading of an Alembic configuration is Alembic's own, for any ``version_locations`` text.

``runner/drivers/_alembic_layout.py`` reads ``alembic.ini`` and ``[tool.alembic]`` without
importing Alembic. Hypothesis writes ini files with arbitrary ``version_locations`` (any mix of
separators, spaces, commas, ``%(here)s``) and ``path_separator`` values, and the directories
the quick read finds must be exactly the ones Alembic's ``ScriptDirectory`` would look in; where
Alembic refuses the file, the quick read must give no answer (the full path then reports it).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_noop import both, history, write

from runner.drivers._alembic_layout import quick_layout
from runner.settings import load_settings

NAMES = st.sampled_from(["versions", "model_b", "a b", "x,y", "v:1", "v;2", "%(here)s/versions", "%(here)s/model_b"])
JOINS = st.sampled_from([" ", ",", ", ", ":", ";", "\n  ", "  ", os.pathsep])
SEPARATORS = st.sampled_from([None, "space", "newline", "os", ":", ";", "comma", ""])


def alembic_directories(project: Path) -> list[Path] | None:
    """The version directories Alembic's ScriptDirectory would look in (those that exist); None if it refuses."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy split's deprecation warning
            script = ScriptDirectory.from_config(Config(str(project / "alembic.ini")))
            # _version_locations is private; Alembic has no public accessor for where it looks.
            return [path for path in script._version_locations if path.exists()]
    except Exception:  # whatever Alembic refuses, the quick read must not answer
        return None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    names=st.lists(NAMES, min_size=1, max_size=4), joins=st.lists(JOINS, min_size=3, max_size=3), separator=SEPARATORS
)
def test_version_locations_are_read_as_alembic_reads_them(
    names: list[str], joins: list[str], separator: str | None
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "migrations").mkdir()
        (project / "migrations" / "env.py").write_text("")
        for name in ("versions", "model_b", "a b", "x,y", "v:1", "v;2", "x", "y", "a", "b", "v", "1", "2"):
            (project / name).mkdir(exist_ok=True)
        listed = names[0] + "".join(join + name for join, name in zip(joins, names[1:], strict=False))
        lines = ["[alembic]", "script_location = %(here)s/migrations", f"version_locations = {listed}"]
        if separator is not None:
            lines.append(f"path_separator = {separator}")
        (project / "alembic.ini").write_text("\n".join(lines) + "\n")
        previous = Path.cwd()
        os.chdir(project)  # Alembic makes relative locations absolute against the working directory
        try:
            theirs = alembic_directories(project)
            layout = quick_layout(load_settings(cwd=project), project)
        finally:
            os.chdir(previous)

        if layout is None:  # unsure: Alembic refuses it, or finds nothing to read
            assert not theirs
        else:
            assert [path.resolve() for path in layout.version_directories] == [path.resolve() for path in theirs or []]


PROSE = st.lists(
    st.sampled_from(["global", "globals()", "exec(", "eval", "import *", "sys.modules", "vars", "setattr(x)", "word"]),
    min_size=1,
    max_size=6,
).map(" ".join)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(doc=PROSE, comment=PROSE)
def test_prose_never_sends_the_fast_path_away(doc: str, comment: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Words of dynamic code in a docstring or a comment: the quick read still answers, with Alembic's heads."""
    with tempfile.TemporaryDirectory() as tmp:
        project = history(Path(tmp) / "project", lambda p: [write(p, "a", None, doc=doc), write(p, "b", "a", doc=doc)])
        path = project / "migrations" / "versions" / "b_x.py"
        path.write_text(path.read_text().replace("def upgrade():", f"# {comment}\ndef upgrade():"))

        quick, full = both(project, monkeypatch)

        assert quick == full == ("b",)
