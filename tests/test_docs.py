"""The documentation: the site builds strictly, its generated reference is complete, the driver guide is current."""

from __future__ import annotations

import dataclasses
import html
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO

from runner import drivers, noop, settings

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


def test_the_development_layout_names_every_module() -> None:
    """docs/development.md's layout tree has one line for each module of runner/, and none for a module that is gone."""
    readme = (REPO / "docs" / "development.md").read_text()
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
    assert named == modules, f"layout: missing {sorted(modules - named)}, gone {sorted(named - modules)}"


def test_the_site_builds_strict_and_its_configuration_reference_names_every_setting(tmp_path: Path) -> None:
    """`mkdocs build --strict`: no broken link or anchor, no page outside the nav; every MIGRATION_* is documented.

    The configuration reference is generated from the settings model (docs/hooks.py), so a setting
    added to the model appears with its description, and one removed disappears.
    """
    site = tmp_path / "site"
    done = subprocess.run(
        [str(Path(sys.executable).with_name("mkdocs")), "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr
    reference = html.unescape((site / "configuration" / "index.html").read_text())
    missing = [name for name in settings.known_variables() if f"<code>{name}</code>" not in reference]
    assert not missing, f"not in the configuration reference: {missing}"
    text = re.sub(r"<[^>]+>", "", reference)
    for name, field in settings.Settings.model_fields.items():
        assert (field.description or "").replace("`", "")[:40] in text, name
    home = (site / "index.html").read_text()
    assert "kube-migration-runner" in home and 'href="troubleshooting/"' in home


def test_every_page_is_in_the_nav_and_the_readme_stays_an_overview() -> None:
    """README is at most 300 lines; every page of docs/ is reachable from the site's nav."""
    import yaml  # noqa: PLC0415

    assert len((REPO / "README.md").read_text().splitlines()) <= 300
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    listed = {page for entry in nav for page in entry.values()}
    assert listed == {path.name for path in (REPO / "docs").glob("*.md")}
