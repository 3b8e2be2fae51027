"""Metrics (scraped, pushed, textfile), the termination message, the result document, Kubernetes context."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import pytest
from faults import free_port
from prometheus_client.parser import text_string_to_metric_families
from support import REPO, Cli, make_project, query, rev_id

from runner.report import TERMINATION_MESSAGE_MAX_BYTES

SCHEMA = json.loads((REPO / "docs" / "result.schema.json").read_text())
METRIC_NAMES = {
    "migration_runner_runs",
    "migration_runner_run_duration_seconds",
    "migration_runner_lock_wait_seconds",
    "migration_runner_revisions_applied",
    "migration_runner_revision_duration_seconds",
    "migration_runner_pending_revisions",
    "migration_runner_retries",
    "migration_runner_last_success_timestamp_seconds",
    "migration_runner_database_revision_info",
    "migration_runner_build_info",
    "migration_runner_drifted_revisions",  # upgrade and check compare the files with the ledger
}


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(exposition: str, name: str, **labels: str) -> float | None:
    wanted = set(labels.items())
    for (sample_name, sample_labels), sample_value in samples(exposition).items():
        if sample_name == name and wanted <= set(sample_labels):
            return sample_value
    return None


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


@pytest.mark.timeout(60)
def test_metrics_endpoint_is_scraped_mid_run_and_lingers_after(cli: Cli, pg_url: str) -> None:
    """A real HTTP scrape during a slow revision sees progress; MIGRATION_METRICS_LINGER keeps the final values up."""
    make_project(cli.cwd, revisions=3, bodies={2: 'op.execute("SELECT pg_sleep(4)")'})
    port = free_port()
    env = {
        "MIGRATION_DATABASE_URL": pg_url,
        "MIGRATION_METRICS_PORT": str(port),
        "MIGRATION_METRICS_BIND_ADDRESS": "127.0.0.1",
        "MIGRATION_METRICS_LINGER": "3",
    }
    started = time.monotonic()
    runner = cli.start(env=env)

    during = ""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            during = scrape(port)
            if value(during, "migration_runner_revisions_applied_total") == 1.0:
                break
        time.sleep(0.1)
    assert value(during, "migration_runner_revisions_applied_total") == 1.0, during
    assert value(during, "migration_runner_pending_revisions") == 2.0
    assert value(during, "migration_runner_database_revision_info", revision=rev_id(1)) == 1.0  # live, per commit
    assert value(during, "migration_runner_lock_wait_seconds") is not None
    assert value(during, "migration_runner_runs_total", outcome="success") is None  # not over yet

    deadline = time.monotonic() + 20
    while runner.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            after = scrape(port)
            if value(after, "migration_runner_runs_total", command="upgrade", outcome="success") == 1.0:
                break
        time.sleep(0.2)
    assert value(after, "migration_runner_revisions_applied_total") == 3.0
    assert value(after, "migration_runner_revision_duration_seconds_count") == 3.0
    assert value(after, "migration_runner_pending_revisions") == 0.0
    assert value(after, "migration_runner_database_revision_info", revision=rev_id(3)) == 1.0
    assert value(after, "migration_runner_last_success_timestamp_seconds") > time.time() - 60
    result = cli.finish(runner, started, timeout=20)
    assert result.code == 0
    assert result.one("metrics.lingering")["seconds"] == 3.0


def gateway_metrics(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:  # noqa: S310  (loopback)
        return response.read().decode()


@pytest.mark.timeout(60)
def test_pushgateway_receives_metrics_after_success_and_after_failure(cli: Cli, pg_url: str, pushgateway: str) -> None:
    """Both runs push; the failure is counted, and last_success from the earlier run survives it."""
    make_project(cli.cwd, revisions=2)
    env = {
        "MIGRATION_DATABASE_URL": pg_url,
        "MIGRATION_PUSHGATEWAY_URL": pushgateway,
        "MIGRATION_ENVIRONMENT": "staging",
        "MIGRATION_POD_NAMESPACE": "shop",
    }
    group = {"job": "migration-runner", "environment": "staging", "namespace": "shop"}

    assert cli(env=env).code == 0
    first = gateway_metrics(pushgateway)
    assert value(first, "migration_runner_runs_total", outcome="success", **group) == 1.0
    assert value(first, "migration_runner_revisions_applied_total", **group) == 2.0
    succeeded_at = value(first, "migration_runner_last_success_timestamp_seconds", **group)
    assert succeeded_at is not None and succeeded_at > time.time() - 60

    make_project(cli.cwd, revisions=3, bodies={3: 'op.execute("SELEC 1")'})
    failed = cli(env=env)
    assert failed.code == 65
    second = gateway_metrics(pushgateway)
    assert value(second, "migration_runner_runs_total", outcome="migration_failed", **group) == 1.0
    assert value(second, "migration_runner_runs_total", outcome="success", **group) is None
    assert value(second, "migration_runner_last_success_timestamp_seconds", **group) == succeeded_at
    assert value(second, "migration_runner_database_revision_info", revision=rev_id(2), **group) == 1.0


def test_unreachable_pushgateway_is_logged_and_does_not_change_the_exit_code(cli: Cli, pg_url: str) -> None:
    """A push that fails is a publish.failed warning; the run still exits 0."""
    make_project(cli.cwd, revisions=1)

    result = cli(env={"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_PUSHGATEWAY_URL": f"http://127.0.0.1:{free_port()}"})

    assert result.code == 0
    assert result.one("publish.failed")["target"] == "pushgateway"


def test_textfile_passes_promtool_and_is_never_half_written(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """The textfile holds every metric, passes `promtool check metrics`, and a reader never sees part of it."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (apt-get install prometheus)")
    make_project(cli.cwd, revisions=3)
    textfile = tmp_path / "collector" / "migration_runner.prom"
    textfile.parent.mkdir()
    reads: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                reads.append(textfile.read_text())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        result = cli(env={"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_METRICS_TEXTFILE": str(textfile)})
    finally:
        stop.set()
        thread.join(10)

    assert result.code == 0
    exposition = textfile.read_text()
    assert {family.name for family in text_string_to_metric_families(exposition)} == METRIC_NAMES | {
        "migration_runner_run_info"
    }
    assert value(exposition, "migration_runner_runs_total", command="upgrade", outcome="success") == 1.0
    assert all(read == exposition for read in reads), "a reader saw a partial file"
    assert list(textfile.parent.iterdir()) == [textfile]  # no temporary file left behind
    lint = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=30)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def read_termination(path: Path) -> dict[str, Any]:
    text = path.read_text()
    assert len(text.encode()) <= TERMINATION_MESSAGE_MAX_BYTES
    document: dict[str, Any] = json.loads(text)
    return document


def test_termination_message_after_success(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """A successful run leaves outcome, exit code and the from/to revisions for `kubectl describe pod`."""
    make_project(cli.cwd, revisions=2)
    path = tmp_path / "termination-log"

    assert cli(env={"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_TERMINATION_LOG": str(path)}).code == 0

    assert read_termination(path) == {
        "outcome": "success",
        "exit_code": 0,
        "from": [],
        "to": [rev_id(2)],
        "failed_revision": None,
        "sqlstate": None,
        "error": None,
    }


def test_termination_message_after_a_failed_revision_is_cut_to_4096_bytes(
    cli: Cli, pg_url: str, tmp_path: Path
) -> None:
    """A failed revision names itself, its SQLSTATE and the error, shortened to fit Kubernetes' limit."""
    make_project(cli.cwd, revisions=2, bodies={2: "raise RuntimeError('x' * 10000)"})
    path = tmp_path / "termination-log"

    assert cli(env={"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_TERMINATION_LOG": str(path)}).code == 65

    message = read_termination(path)
    assert message["outcome"] == "migration_failed" and message["exit_code"] == 65
    assert message["failed_revision"] == rev_id(2) and message["to"] == [rev_id(1)]
    assert message["error"].startswith("RuntimeError: xxx") and message["error"].endswith("…")


def test_termination_message_after_a_sql_error_has_the_sqlstate(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """After a failed statement the termination message carries its SQLSTATE."""
    make_project(cli.cwd, revisions=1, bodies={1: 'op.execute("SELECT * FROM nowhere")'})
    path = tmp_path / "termination-log"

    assert cli(env={"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_TERMINATION_LOG": str(path)}).code == 65

    assert read_termination(path)["sqlstate"] == "42P01"


@pytest.mark.timeout(30)
def test_termination_message_after_a_lock_timeout(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """A lock timeout says so, and names the holder."""
    make_project(cli.cwd, revisions=1)
    path = tmp_path / "termination-log"
    with psycopg.connect(pg_url, autocommit=True, application_name="the-other-deploy") as holder:
        holder.execute("SELECT pg_advisory_lock(4242)")
        result = cli(
            env={
                "MIGRATION_DATABASE_URL": pg_url,
                "MIGRATION_TERMINATION_LOG": str(path),
                "MIGRATION_LOCK_KEY": "4242",
                "MIGRATION_LOCK_TIMEOUT": "1",
            }
        )

    assert result.code == 75
    message = read_termination(path)
    assert message["outcome"] == "timeout" and "the-other-deploy" in message["error"]


def test_termination_message_after_a_configuration_error(cli: Cli, tmp_path: Path) -> None:
    """Even invalid settings leave a termination message naming the bad variable."""
    path = tmp_path / "termination-log"

    assert cli(env={"MIGRATION_TERMINATION_LOG": str(path), "MIGRATION_ENVIRONMENT": "prod"}).code == 78

    message = read_termination(path)
    assert message["outcome"] == "config_invalid" and "MIGRATION_ENVIRONMENT" in message["error"]


def result_document(cli: Cli, *args: str, env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    result = cli(*args, "--output", "json", env=env)
    lines = result.stdout.splitlines()
    assert len(lines) == 1, f"stdout must hold only the document:\n{result.stdout}"
    document: dict[str, Any] = json.loads(lines[0])
    jsonschema.validate(document, SCHEMA)
    assert "event" not in document
    assert any(e["event"] == "run.finished" for e in parse_stderr(result.stderr))  # the logs went to stderr
    return result.code, document


def parse_stderr(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


@pytest.mark.timeout(60)
def test_result_document_validates_for_success_failure_lock_timeout_and_check(cli: Cli, pg_url: str) -> None:
    """One JSON document on stdout, valid against docs/result.schema.json, for each kind of ending."""
    env = {"MIGRATION_DATABASE_URL": pg_url}
    make_project(cli.cwd, revisions=3, bodies={3: 'op.execute("SELECT * FROM nowhere")'})

    code, check_before = result_document(cli, "check", env=env)
    assert code == 1 and check_before["success"] is False
    assert [p["revision"] for p in check_before["pending"]] == [rev_id(1), rev_id(2), rev_id(3)]

    code, failure = result_document(cli, env=env)
    assert code == 65 and failure["outcome"] == "migration_failed"
    assert [a["revision"] for a in failure["applied"]] == [rev_id(1), rev_id(2)]
    assert failure["pending"] == [{"revision": rev_id(3), "id": rev_id(3), "message": "revision 3"}]
    assert failure["error"]["sqlstate"] == "42P01" and failure["error"]["revision"] == rev_id(3)

    with psycopg.connect(pg_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(77)")
        code, timeout = result_document(cli, env={**env, "MIGRATION_LOCK_KEY": "77", "MIGRATION_LOCK_TIMEOUT": "1"})
    assert code == 75 and timeout["error"]["class"] == "LockTimeout" and timeout["lock_wait_seconds"] is None

    make_project(cli.cwd, revisions=3)
    code, success = result_document(cli, env=env)
    assert code == 0 and success["success"] is True
    assert success["from"] == [rev_id(2)] and success["to"] == [rev_id(3)]
    assert success["applied"][0]["revision"] == rev_id(3) and success["lock_wait_seconds"] >= 0

    for command in ("check", "current", "wait"):
        code, document = result_document(cli, command, env=env)
        assert code == 0 and document["command"] == command and document["to"] == [rev_id(3)]


@pytest.mark.timeout(30)
def test_kubernetes_context_in_logs_and_application_name(cli: Cli, pg_url: str) -> None:
    """Downward API pod, namespace and node show in every event and in pg_stat_activity's application_name."""
    make_project(cli.cwd, revisions=2, bodies={2: 'op.execute("SELECT pg_sleep(2)")'})
    env = {
        "MIGRATION_DATABASE_URL": pg_url,
        "MIGRATION_POD_NAME": "migrate-7xk2p",
        "MIGRATION_POD_NAMESPACE": "shop",
        "MIGRATION_NODE_NAME": "node-a",
    }
    started = time.monotonic()
    runner = cli.start(env=env)
    names: list[str] = []
    deadline = time.monotonic() + 15
    while not names and time.monotonic() < deadline:
        rows = query(
            pg_url,
            "SELECT application_name FROM pg_stat_activity "
            "WHERE application_name LIKE 'migration-runner%%' AND datname = current_database()",
        )
        names = [row[0] for row in rows]
        time.sleep(0.1)
    result = cli.finish(runner, started, timeout=20)

    assert result.code == 0
    assert names and all(name.startswith("migration-runner shop/migrate-7xk2p ") for name in names)
    run_events = [e for e in result.events if e["event"].startswith(("run.", "lock.", "revision.", "upgrade."))]
    assert run_events and all(
        (e["pod"], e["namespace"], e["node"], e["host"]) == ("migrate-7xk2p", "shop", "node-a", "migrate-7xk2p")
        for e in run_events
    )


def test_documented_alert_rules_pass_promtool(tmp_path: Path) -> None:
    """The sample alert rules in docs/observability.md are valid Prometheus rules (`promtool check rules`)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (apt-get install prometheus)")
    readme = (REPO / "docs" / "observability.md").read_text()
    rules = readme.split("```yaml\ngroups:", 1)[1].split("```", 1)[0]
    path = tmp_path / "rules.yml"
    path.write_text("groups:" + rules)

    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30)

    assert check.returncode == 0, check.stdout + check.stderr
    assert "2 rules found" in check.stdout
