"""The chart's alerts and dashboard, with real tools: promtool, and a real Prometheus scraping a real Pushgateway.

Prometheus and promtool come from Debian's ``prometheus`` package, the Pushgateway from
``prometheus-pushgateway`` (``.ci/run`` installs both).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from faults import free_port
from support import CHART, Cli, make_project, only, prometheus_server, query, render

MONITORING = ("--set", "database.existingSecret=app-db", "--set", "prometheusRule.enabled=true")


def rule_groups() -> dict[str, Any]:
    """The rendered PrometheusRule's groups, as a plain Prometheus rules file holds them."""
    return {"groups": only(render(*MONITORING), "PrometheusRule")["spec"]["groups"]}


def rules() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in rule_groups()["groups"] for rule in group["rules"]}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed (apt-get install prometheus)")
    return found


def test_promtool_checks_the_rendered_rules(tmp_path: Path) -> None:
    """promtool accepts the chart's alert rules, and the four alerts are there."""
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule_groups()))

    checked = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=30)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert set(rules()) == {
        "MigrationFailed",
        "MigrationTenantFailed",
        "MigrationNotSucceededRecently",
        "MigrationRevisionDrifted",
    }
    assert "failedIndexes" in rules()["MigrationTenantFailed"]["annotations"]["runbook"]


def test_promtool_unit_tests_fire_for_the_failed_tenant_only(tmp_path: Path) -> None:
    """promtool's unit test: MigrationTenantFailed fires for the failed database only."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups()))
    tenant = rules()["MigrationTenantFailed"]["annotations"]
    where = 'command="upgrade",environment="production",namespace="shop",job="migration-runner"'
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": f'migration_runner_runs_total{{{where},outcome="migration_failed",'
                        'database_index="3",database="tenant_c"}',
                        "values": "1x10",
                    },
                    {
                        "series": f'migration_runner_runs_total{{{where},outcome="success",'
                        'database_index="0",database="tenant_a"}',
                        "values": "1x10",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "5m",
                        "alertname": "MigrationTenantFailed",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "page",
                                    "environment": "production",
                                    "namespace": "shop",
                                    "database_index": "3",
                                    "database": "tenant_c",
                                },
                                "exp_annotations": {
                                    key: value.replace("{{ $labels.database }}", "tenant_c")
                                    .replace("{{ $labels.database_index }}", "3")
                                    .replace("{{ $labels.namespace }}", "shop")
                                    for key, value in tenant.items()
                                },
                            }
                        ],
                    },
                    {"eval_time": "5m", "alertname": "MigrationFailed", "exp_alerts": []},
                ],
            }
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))

    tested = subprocess.run(
        [promtool(), "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )

    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_dashboard_configmap_is_for_the_grafana_sidecar() -> None:
    """The dashboard ConfigMap carries the Grafana sidecar label and the documented panels."""
    configmap = only(
        [
            o
            for o in render("--set", "database.existingSecret=a", "--set", "dashboard.enabled=true")
            if "-dashboard" in o["metadata"]["name"]
        ],
        "ConfigMap",
    )
    dashboard = json.loads(configmap["data"]["migration-runner.json"])

    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    titles = [panel["title"] for panel in dashboard["panels"]]
    assert titles == [
        "Runs by outcome",
        "Age of the last success",
        "Revision duration (p50, p95)",
        "Pending revisions",
        "Lock wait",
        "Databases: last outcome",
    ]


@pytest.fixture
def prometheus(pushgateway: str, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus (Debian's) scraping the Pushgateway every second, honouring its labels: its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed (apt-get install prometheus)")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    target = urllib.parse.urlparse(pushgateway).netloc
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "pushgateway", "honor_labels": True, "static_configs": [{"targets": [target]}]}
                ],
            }
        )
    )
    with tempfile.TemporaryDirectory() as storage:
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={storage}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        with prometheus_server(argv, port, ready_within=30) as url:
            yield url


def instant(prometheus: str, expr: str) -> list[dict[str, Any]]:
    """The result of an instant query through Prometheus' HTTP API."""
    address = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(address, timeout=10) as response:  # noqa: S310  (loopback)
        body = json.load(response)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


@pytest.mark.timeout(120)
def test_every_panel_and_rule_returns_the_expected_series_after_real_runs(
    cli: Cli, pg_databases: Callable[[], str], pushgateway: str, prometheus: str, tmp_path: Path
) -> None:
    """Two tenants migrated for real, one of them failing: each query of the dashboard and the rules answers."""
    make_project(cli.cwd, revisions=2)
    urls = [pg_databases(), pg_databases()]
    query(urls[1], "CREATE TABLE t_0002 (id integer)")  # revision 2 fails there: 42P07
    databases = tmp_path / "databases"
    databases.write_text("\n".join(urls) + "\n")
    env = {
        "MIGRATION_DATABASES_FILE": str(databases),
        "MIGRATION_PUSHGATEWAY_URL": pushgateway,
        "MIGRATION_ENVIRONMENT": "staging",
        "MIGRATION_POD_NAMESPACE": "shop",
    }
    runs = cli("upgrade", "--all", env=env)
    assert runs.code == 65, runs.stderr
    names = [url.rsplit("/", 1)[1] for url in urls]

    deadline = time.monotonic() + 30
    while len(instant(prometheus, "migration_runner_runs_total")) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)

    dashboard = json.loads((CHART / "dashboards" / "migration-runner.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$environment", ".*").replace("$namespace", ".*")
            found = instant(prometheus, expr)
            assert found, f"panel {panel['title']!r}: {expr} returned nothing"
    table = next(p for p in dashboard["panels"] if p["title"] == "Databases: last outcome")
    rows = instant(prometheus, table["targets"][0]["expr"].replace("$environment", ".*").replace("$namespace", ".*"))
    assert sorted((r["metric"]["database_index"], r["metric"]["database"], r["metric"]["outcome"]) for r in rows) == [
        ("0", names[0], "success"),
        ("1", names[1], "migration_failed"),
    ]

    alerts = rules()
    failed = instant(prometheus, alerts["MigrationTenantFailed"]["expr"])
    assert [(r["metric"]["database_index"], r["metric"]["database"]) for r in failed] == [("1", names[1])]
    assert instant(prometheus, alerts["MigrationFailed"]["expr"]) == []  # tenants alert as tenants
    assert instant(prometheus, alerts["MigrationNotSucceededRecently"]["expr"]) == []
    assert [
        r["metric"]["database"] for r in instant(prometheus, "migration_runner_last_success_timestamp_seconds")
    ] == [names[0]]
    assert instant(prometheus, alerts["MigrationRevisionDrifted"]["expr"]) == []
    assert len(instant(prometheus, "migration_runner_drifted_revisions")) == 2  # both compared, none drifted
