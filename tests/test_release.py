"""A release, rehearsed: what `.github/workflows/release.yml` publishes is built, checked and used as a user would.

The sdist and wheel come from `uv build`; `twine check --strict` and `check-wheel-contents` judge them as
PyPI would; the wheel, installed alone in a fresh venv, runs the quickstart. The chart goes through a
real OCI registry on loopback (Debian's `docker-registry`) and is rendered from the pulled copy, alone
and as the dependency of examples/helm-app.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from faults import free_port
from support import CHART, QUICKSTART, REPO, app_chart, helm, only, parse_events, render, wait_until

import runner

VERSION = runner.__version__
IMAGE = "ghcr.io/migration-runner/migration-runner"
NORMALIZED = runner.DISTRIBUTION.replace("-", "_")


def uv() -> str:
    """The uv that runs this suite (`uv run` sets UV), else the one .ci/run installs."""
    found = os.environ.get("UV") or shutil.which("uv") or str(REPO / ".tools" / "uv" / "bin" / "uv")
    assert Path(found).exists(), "uv is missing: run `bash .ci/run`"
    return found


def tool(name: str) -> str:
    """A console script of the dev dependencies, beside this interpreter."""
    return str(Path(sys.executable).with_name(name))


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`uv build` of this checkout: one sdist and one wheel."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([uv(), "build", "--out-dir", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


def test_the_build_makes_one_sdist_and_one_wheel_named_for_the_distribution(dist: Path) -> None:
    assert sorted(p.name for p in dist.iterdir() if p.suffix in (".gz", ".whl")) == [
        f"{NORMALIZED}-{VERSION}-py3-none-any.whl",
        f"{NORMALIZED}-{VERSION}.tar.gz",
    ]
    with zipfile.ZipFile(next(dist.glob("*.whl"))) as wheel:
        names = wheel.namelist()
        metadata = wheel.read(f"{NORMALIZED}-{VERSION}.dist-info/METADATA").decode()
    assert "runner/__main__.py" in names and not [n for n in names if n.startswith("tests/")]
    assert f"Name: {runner.DISTRIBUTION}\n" in metadata and "License-Expression: Apache-2.0" in metadata
    with tarfile.open(next(dist.glob("*.tar.gz"))) as sdist:
        assert f"{NORMALIZED}-{VERSION}/LICENSE" in sdist.getnames()


def test_twine_check_strict_passes(dist: Path) -> None:
    """PyPI's own checks of the metadata and of the README as a long description."""
    done = subprocess.run(
        [tool("twine"), "check", "--strict", *map(str, sorted(dist.glob("*.whl")) + sorted(dist.glob("*.tar.gz")))],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_check_wheel_contents_passes(dist: Path) -> None:
    """No stray files, duplicates, empty packages or bytecode in the wheel."""
    done = subprocess.run([tool("check-wheel-contents"), str(dist)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_wheel_installed_alone_runs_the_quickstart(dist: Path, tmp_path: Path) -> None:
    """A fresh venv with the wheel and the locked dependencies, no source tree on the path: quickstart, then no-op."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    wheel = next(dist.glob("*.whl"))
    install = subprocess.run(
        [uv(), "pip", "install", "--python", str(python), "-c", str(REPO / "docs" / "constraints.txt"), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr
    project = shutil.copytree(QUICKSTART, tmp_path / "quickstart", ignore=shutil.ignore_patterns("*.db*"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIGRATION_", "PYTHON", "VIRTUAL_ENV", "UV_"))}
    where = subprocess.run(
        [str(python), "-c", "import runner; print(runner.__file__)"], cwd=tmp_path, env=env, capture_output=True
    )
    assert where.stdout.decode().startswith(str(venv)), where.stdout  # the installed copy, not this checkout

    first = subprocess.run([str(venv / "bin" / "migration-runner")], cwd=project, env=env, capture_output=True)
    again = subprocess.run([str(venv / "bin" / "migration-runner")], cwd=project, env=env, capture_output=True)
    assert first.returncode == 0, first.stdout.decode() + first.stderr.decode()
    assert "upgrade.finished" in [e["event"] for e in parse_events(first.stdout.decode())]
    assert again.returncode == 0 and "upgrade.noop" in [e["event"] for e in parse_events(again.stdout.decode())]


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """Debian's docker-registry (the CNCF distribution registry) on loopback: its host:port."""
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    if not Path(binary).exists():
        pytest.fail("docker-registry is missing: .ci/run installs it (apt-get install docker-registry)")
    address = f"127.0.0.1:{free_port()}"
    config = tmp_path / "registry.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "log": {"level": "warn"},
                "storage": {"filesystem": {"rootdirectory": str(tmp_path / "storage")}},
                "http": {"addr": address},
            }
        )
    )
    server = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:

        def answers() -> bool:
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
            try:
                with urllib.request.urlopen(f"http://{address}/v2/", timeout=5) as answer:
                    return bool(answer.status == 200)
            except (urllib.error.URLError, ConnectionError):
                return False

        wait_until(answers, 60, "the registry to answer its API root")
        yield address
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_chart_goes_through_an_oci_registry_and_renders_from_the_pulled_copy(registry: str, tmp_path: Path) -> None:
    """`helm package`, `helm push` to the registry, `helm pull` back, `helm template` the pulled copy."""
    packaged = helm("package", str(CHART), "--destination", str(tmp_path / "packaged"))
    assert packaged.returncode == 0, packaged.stderr
    archive = tmp_path / "packaged" / f"migration-runner-{VERSION}.tgz"
    pushed = helm("push", "--plain-http", str(archive), f"oci://{registry}/charts")
    assert pushed.returncode == 0, pushed.stderr
    (tmp_path / "pulled").mkdir()
    pulled = helm(
        "pull", "--plain-http", f"oci://{registry}/charts/migration-runner", "--version", VERSION,
        "-d", str(tmp_path / "pulled"),
    )  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    copy = tmp_path / "pulled" / f"migration-runner-{VERSION}.tgz"
    assert copy.read_bytes() == archive.read_bytes()

    job = only(render("--set", "database.existingSecret=app-db", chart=copy), "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == f"{IMAGE}:{VERSION}"

    app = app_chart(tmp_path, f"oci://{registry}/charts", "--plain-http")
    objects = render(chart=app)
    assert {o["kind"] for o in objects} >= {"Job", "Deployment"}
