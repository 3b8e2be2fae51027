"""docs/drivers.md, the guide to adding a migration tool, names every member of the protocols a driver implements."""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest
from support import REPO

from runner import drivers, noop

GUIDE = (REPO / "docs" / "drivers.md").read_text()


def members(protocol: type) -> list[str]:
    """The public methods and annotated attributes a protocol declares."""
    methods = [name for name, _ in inspect.getmembers(protocol, inspect.isfunction) if not name.startswith("_")]
    return sorted({*methods, *(name for name in protocol.__annotations__ if not name.startswith("_"))})


@pytest.mark.parametrize(
    "protocol",
    [drivers.History, drivers.Executor, drivers.Driver, noop.FilesFastPath, noop.LoadedFastPath],
    ids=lambda p: p.__name__,
)
def test_the_driver_guide_names_every_member_of_each_protocol(protocol: type) -> None:
    """A method or attribute added to a protocol without a word in the guide fails here."""
    missing = [name for name in members(protocol) if not re.search(rf"`{name}[`(]", GUIDE)]
    assert members(protocol), protocol
    assert not missing, f"docs/drivers.md does not name {protocol.__name__}.{', '.join(missing)}"


def test_the_driver_guide_names_every_migrate_option() -> None:
    """Each field of MigrateOptions, the value upgrade and downgrade take, is named in the guide."""
    fields = [field.name for field in dataclasses.fields(drivers.MigrateOptions)]
    missing = [name for name in fields if not re.search(rf"`{name}[`(]", GUIDE)]
    assert fields and not missing, f"docs/drivers.md does not name MigrateOptions.{', '.join(missing)}"


def test_the_readme_layout_names_every_module() -> None:
    """README's layout tree has one line for each module of runner/, and none for a module that is gone."""
    readme = (REPO / "README.md").read_text()
    tree = readme[readme.index("Layout, one line per module") :].split("```")[1]
    named, parents = set(), []  # paths from the indentation: two spaces per directory
    for line in tree.strip("\n").splitlines():
        depth, name = (len(line) - len(line.lstrip())) // 2, line.split()[0]
        del parents[depth:]
        if name.endswith("/"):
            parents.append(name.rstrip("/"))
        else:
            named.add("/".join([*parents, name]))
    modules = {str(path.relative_to(REPO)) for path in (REPO / "runner").rglob("*.py")}
    assert named == modules, f"README layout: missing {sorted(modules - named)}, gone {sorted(named - modules)}"
