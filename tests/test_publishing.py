"""What a release publishes and what users are told to install agree: the PyPI name, the image, the chart."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib

import yaml
from support import REPO

import runner

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]["name"]

# Third-party distributions an install line in this repository may name, each for a reason.
THIRD_PARTY = {
    "uv": "the installer CI and the Dockerfile bootstrap",
    "asyncpg": "an async driver a URL names (urls.py tells the user to install it)",
    "aiosqlite": "an async driver",
    "aiomysql": "an async driver",
    "asyncmy": "an async driver",
    "greenlet": "SQLAlchemy's asyncio extension",
    "mysqlclient": "Django's MySQL driver",
}
# `pip install X`, `pip3 install X`, `uv pip install X`, `pipx install X`, `uv tool install X`, `uv add X`,
# `poetry add X`, anywhere on a line (a README, a workflow, a Dockerfile, an error message in the code).
INSTALL = re.compile(r"(?:\b(?:pip3?|pipx|uv tool|uv pip)\s+install|\buv\s+add|\bpoetry\s+add)\s+(?P<args>[^\n]*)")
# Options whose next word is a value, not a distribution.
TAKES_VALUE = {"-c", "-r", "-e", "-t", "-i", "--constraint", "--requirement", "--editable", "--target", "--index-url"}
# Where a sentence goes on after the command ("pip install X into your image"), the command has ended.
PROSE = {"into", "in", "and", "or", "to", "for", "from", "inside", "as", "then", "on", "with"}


def normalized(name: str) -> str:
    """PEP 503's normal form of a distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_names(args: str) -> list[str]:
    """The distributions one install command names (local paths, options and placeholders skipped)."""
    args = re.split(r"&&|;|\||\)|#|`|\\n", args)[0].replace("{DISTRIBUTION}", PROJECT)
    try:
        words = shlex.split(args)
    except ValueError:
        words = args.split()
    names, skip = [], False
    for quoted in words:
        word = quoted.strip("'\"")
        if word in PROSE:
            break
        if skip or word.startswith("-"):
            skip = word in TAKES_VALUE
            continue
        if word.startswith((".", "/", "$", "{")) or "/" in word or word.endswith((".whl", ".tar.gz")):
            continue  # a local path, a wheel file or a placeholder
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", word)
        if match:
            names.append(normalized(match.group()))
    return names


def tracked_files() -> list[str]:
    """The repository's files as git tracks them, relative to its root."""
    return subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()


def install_lines() -> list[tuple[str, int, str, list[str]]]:
    """Every install command in the repository's tracked text files: (path, line, text, names)."""
    found = []
    for name in tracked_files():
        if name in ("uv.lock", "tests/test_publishing.py") or name.startswith("tests/projects/"):
            continue
        try:
            text = (REPO / name).read_text()
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for match in INSTALL.finditer(line):
                found.append((name, number, line.strip(), installed_names(match.group("args"))))
    return found


def test_the_distribution_has_a_name_of_its_own() -> None:
    """`migration-runner` on PyPI is somebody else's project: ours is published under the runner's constant."""
    assert PROJECT == runner.DISTRIBUTION
    assert normalized(PROJECT) != "migration-runner"
    assert PYPROJECT["project"]["scripts"] == {"migration-runner": "runner.__main__:main"}


def test_every_install_line_names_the_project_or_a_known_third_party() -> None:
    """An install line naming `migration-runner` (someone else's package on PyPI) or anything unknown fails."""
    lines = install_lines()
    ours = [line for line in lines if normalized(PROJECT) in line[3]]
    assert len(ours) >= 4, "the README's install lines were not found: the scanner is broken"
    wrong = [
        f"{path}:{number}: {name!r} in {text!r}"
        for path, number, text, names in lines
        for name in names
        if name != normalized(PROJECT) and name not in THIRD_PARTY
    ]
    assert not wrong, "install lines naming another distribution:\n" + "\n".join(wrong)


def test_the_scanner_catches_the_old_name() -> None:
    """The scan above can fail: the old README lines are caught."""
    assert installed_names("'migration-runner[django]'   # Django 5.2+") == ["migration-runner"]
    assert installed_names("--no-cache-dir migration-runner==0.1.0") == ["migration-runner"]
    assert installed_names("-c docs/constraints.txt . && (cd x && y)") == []
    assert installed_names("migration-runner into your application image") == ["migration-runner"]


def chart() -> dict[str, object]:
    return yaml.safe_load((REPO / "helm" / "migration-runner" / "Chart.yaml").read_text())


def test_ci_run_announces_each_system_package_and_keeps_out_of_the_quickstart_venv() -> None:
    """.ci/run says each apt package before installing it, and its environment is not README's `.venv`."""
    script = (REPO / ".ci" / "run").read_text()
    wanted = re.findall(r"\bwant ([a-z0-9.+-]+) \"[^\"]+\"", script)
    assert len(wanted) >= 10, wanted
    assert not re.search(r"need\+=\((?!\"\$1\")", script), "a package added to the apt list without `want`"
    environment = re.search(r"^export UV_PROJECT_ENVIRONMENT=(\S+)$", script, re.MULTILINE)
    assert environment and environment.group(1).strip("\"'") not in (".venv", "./.venv")


def test_the_release_the_chart_and_the_docs_name_one_image_and_one_chart_location() -> None:
    """What release.yml pushes is what the chart pulls and what every doc names, tag without a `v`."""
    workflow = (REPO / ".github" / "workflows" / "release.yml").read_text()
    image, charts = (yaml.safe_load(workflow)["env"][name] for name in ("IMAGE", "CHARTS"))
    values = yaml.safe_load((REPO / "helm" / "migration-runner" / "values.yaml").read_text())
    meta = chart()

    assert values["image"]["repository"] == image and values["image"]["tag"] == ""  # the tag is the appVersion
    assert meta["appVersion"] == meta["version"] == runner.__version__
    assert "tags: ${{ env.IMAGE }}:${{ needs.version.outputs.version }}" in workflow
    assert 'version="${GITHUB_REF_NAME#v}"' in workflow and '"$CHARTS"' in workflow
    for readme in ("README.md", "helm/migration-runner/README.md"):
        assert f"{charts}/migration-runner" in (REPO / readme).read_text(), readme
    mentions = [
        (name, match.group())
        for name in tracked_files()
        if name.endswith((".md", ".yaml", ".yml", "Dockerfile", ".txt", ".tpl")) and not name.startswith("tests/")
        for match in re.finditer(r"(?:oci://)?ghcr\.io/[\w./${}-]+(?::[\w.${}-]+)?", (REPO / name).read_text())
    ]
    allowed = {image, f"{image}:{runner.__version__}", charts, f"{charts}/migration-runner"}
    wrong = [f"{name}: {text}" for name, text in mentions if text not in allowed]
    assert len(mentions) >= 5 and not wrong, wrong


def test_running_the_examples_leaves_nothing_untracked() -> None:
    """The databases and lock files the quickstart and the Django example make are ignored by git."""
    made = [
        "examples/quickstart/migration-runner.db",
        "examples/quickstart/migration-runner.db.lock",
        "examples/django/db.sqlite3",
        "examples/django/db.sqlite3.lock",
        "examples/helm-app/charts/migration-runner-0.1.0.tgz",
        "examples/helm-app/Chart.lock",
    ]
    done = subprocess.run(["git", "check-ignore", *made], cwd=REPO, capture_output=True, text=True)
    assert done.stdout.split() == made
