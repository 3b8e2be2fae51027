"""The Helm chart: lint, render, validate against Kubernetes schemas, assert on objects, and simulate its pod.

helm comes from ``.ci/get-helm`` (``.tools/bin/helm``); kubernetes-validate from the dev dependencies.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from support import CHART, QUICKSTART, app_chart, helm, only, parse_events, render

from runner.errors import MEANINGS, RETRYABLE, ExitCode

SCENARIOS = sorted((CHART / "ci").glob("*.yaml"))
KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")  # an older supported release, and the newest the schemas cover


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_lints_renders_and_validates(scenario: Path, tmp_path: Path) -> None:
    """`helm lint --strict` passes and every rendered object passes kubernetes-validate --strict on two versions."""
    lint = helm("lint", "--strict", ".", "-f", str(scenario))
    assert lint.returncode == 0, lint.stdout + lint.stderr

    done = helm("template", "shop", ".", "--namespace", "shop", "-f", str(scenario))
    assert done.returncode == 0, done.stderr
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(done.stdout)
    validator = Path(sys.executable).with_name("kubernetes-validate")
    for version in KUBERNETES_VERSIONS:
        check = subprocess.run(
            [str(validator), "--strict", "-k", version, str(manifest)], capture_output=True, text=True, timeout=60
        )
        assert check.returncode == 0, f"Kubernetes {version}: {check.stdout}{check.stderr}"


def test_pod_failure_policy_follows_the_exit_code_table() -> None:
    """Non-retryable exit codes fail the Job at once; disruptions are ignored; the rest use backoffLimit."""
    job = only(render("--set", "database.existingSecret=app-db"), "Job")
    rules = job["spec"]["podFailurePolicy"]["rules"]

    fail_job = [r for r in rules if r["action"] == "FailJob"]
    assert len(fail_job) == 1 and fail_job[0]["onExitCodes"]["containerName"] == "migrate"
    non_retryable = {int(code) for code in MEANINGS} - {int(code) for code in RETRYABLE} - {ExitCode.OK}
    assert set(fail_job[0]["onExitCodes"]["values"]) == non_retryable
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_exit_codes_written_in_the_chart_comments_match_the_table() -> None:
    """values.yaml and job.yaml repeat the codes in comments: they must say what runner.errors says."""
    retryable = {int(code) for code in RETRYABLE}
    non_retryable = {int(code) for code in MEANINGS} - retryable - {int(ExitCode.OK)}
    values = (CHART / "values.yaml").read_text()
    job = (CHART / "templates" / "job.yaml").read_text()

    def numbers(pattern: str, text: str) -> set[int]:
        found = re.search(pattern, text)
        assert found, pattern
        return {int(n) for n in re.findall(r"\d+", found.group(1))}

    assert numbers(r"retryable exit codes \(([\d, ]+)\)", values) == retryable
    assert numbers(r"codes ([\d, ]+) fail the Job", values) == non_retryable
    assert numbers(r"# (.*) are retried", job) == retryable


def test_hook_mode_makes_every_dependency_a_hook_with_a_lower_weight() -> None:
    """A first install into an empty namespace works: ServiceAccount, Secret and ConfigMap come before the Job."""
    objects = render("--set", "database.url=postgresql://u:p@db/app", "--set", "hook.weight=10")
    job = only(objects, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    job_weight = int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    for kind in ("ServiceAccount", "Secret", "ConfigMap"):
        annotations = only(objects, kind)["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade", kind
        assert int(annotations["helm.sh/hook-weight"]) < job_weight, kind


def test_job_spec_is_safe_by_default() -> None:
    """Restricted security context, no service links, no API token, Istio sidecar off, Downward API env."""
    job = only(render("--set", "database.existingSecret=app-db"), "Job")
    pod = job["spec"]["template"]
    spec = pod["spec"]
    container = spec["containers"][0]

    assert spec["enableServiceLinks"] is False
    assert spec["automountServiceAccountToken"] is False
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 65532
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    fields = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in container["env"]
        if "fieldRef" in e.get("valueFrom", {})
    }
    assert fields == {
        "MIGRATION_POD_NAME": "metadata.name",
        "MIGRATION_POD_NAMESPACE": "metadata.namespace",
        "MIGRATION_NODE_NAME": "spec.nodeName",
    }
    assert {"backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"} <= set(job["spec"])


def test_job_mode_names_the_job_after_its_pod_template() -> None:
    """In `job` mode an unchanged release keeps its Job; a new image gets a new Job (Jobs are immutable)."""
    base = ("--set", "mode=job", "--set", "database.existingSecret=app-db")
    first = only(render(*base, "--set", "image.tag=1.0.0"), "Job")["metadata"]["name"]
    again = only(render(*base, "--set", "image.tag=1.0.0"), "Job")["metadata"]["name"]
    newer = only(render(*base, "--set", "image.tag=1.0.1"), "Job")["metadata"]["name"]

    assert first == again != newer
    assert first.startswith("shop-migration-runner-") and len(first) <= 63


def test_values_schema_rejects_unknown_keys_and_bad_modes() -> None:
    """values.schema.json has additionalProperties: false, so a typo in values fails the render."""
    typo = helm("template", "shop", ".", "--set", "database.existingSecret=app-db", "--set", "job.backofLimit=3")
    assert typo.returncode != 0 and "backofLimit" in typo.stderr
    mode = helm("template", "shop", ".", "--set", "database.existingSecret=app-db", "--set", "mode=cron")
    assert mode.returncode != 0


def documented_values() -> dict[str, str]:
    """Each value of values.yaml with its `# --` comment, by dotted path; fails on an undocumented leaf."""
    documented: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    inside: int | None = None  # indent of a documented value whose body follows
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = [stripped.removeprefix("# --").strip()]
            continue
        if stripped.startswith("#") and comment:
            comment.append(stripped.removeprefix("#").strip())
            continue
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if inside is not None and indent > inside:
            continue
        inside = None
        key, _, rest = stripped.partition(":")
        stack = [(i, k) for i, k in stack if i < indent] + [(indent, key)]
        dotted = ".".join(k for _, k in stack)
        if comment:
            documented[dotted] = " ".join(comment)
            inside = indent
        else:
            assert not rest.strip(), f"{dotted} has no `# --` comment"
        comment = []
    return documented


def test_values_are_all_documented() -> None:
    """Every value in values.yaml has a `# --` comment, and the chart README's table lists it."""
    readme = (CHART / "README.md").read_text()
    documented = documented_values()

    assert len(documented) > 30
    missing = [key for key in documented if f"| `{key}` |" not in readme]
    assert not missing, f"not in helm/migration-runner/README.md: {missing}"


def resolve_env(container: dict[str, Any], objects: list[dict[str, Any]], pod: dict[str, str]) -> dict[str, str]:
    """The environment a kubelet would give this container, from the rendered objects."""
    secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
    configmaps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]]["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]
        if "secretKeyRef" in ref:
            secret = secrets[ref["secretKeyRef"]["name"]]
            data = secret.get("stringData") or {
                k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()
            }
            env[item["name"]] = data[ref["secretKeyRef"]["key"]]
        elif "configMapKeyRef" in ref:
            env[item["name"]] = configmaps[ref["configMapKeyRef"]["name"]]["data"][ref["configMapKeyRef"]["key"]]
        elif "fieldRef" in ref:
            env[item["name"]] = pod[ref["fieldRef"]["fieldPath"]]
        else:
            raise AssertionError(f"unsupported valueFrom: {ref}")
    return env


def materialise_mounts(
    spec: dict[str, Any], container: dict[str, Any], objects: list[dict[str, Any]], root: Path
) -> dict[str, str]:
    """Write the container's Secret volumes under ``root`` as a kubelet would mount them; mountPath -> local path."""
    secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts: dict[str, str] = {}
    for mount in container.get("volumeMounts", []):
        source = volumes[mount["name"]].get("secret")
        if source is None:
            continue
        secret = secrets[source["secretName"]]
        data = secret.get("stringData") or {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
        local = root / mount["mountPath"].lstrip("/")
        local.mkdir(parents=True)
        for item in source.get("items") or [{"key": key, "path": key} for key in data]:
            (local / item["path"]).write_text(data[item["key"]])
        assert mount.get("readOnly") is True, mount
        mounts[mount["mountPath"]] = str(local)
    return mounts


def in_mounts(env: dict[str, str], mounts: dict[str, str]) -> dict[str, str]:
    """The environment with paths inside the mounts pointed at where they were written."""
    moved = dict(env)
    for name, value in env.items():
        for path, local in mounts.items():
            if value == path or value.startswith(path + "/"):
                moved[name] = local + value[len(path) :]
    return moved


def container_command(container: dict[str, Any]) -> list[str]:
    """The container's command as this machine runs it: the image's ENTRYPOINT is `migration-runner`, which is
    on the image's PATH and, here, beside this interpreter."""
    command = container.get("command") or ["migration-runner"]
    if command[0] == "migration-runner":
        command = [str(Path(sys.executable).with_name("migration-runner")), *command[1:]]
    return list(command)


def run_container(container: dict[str, Any], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run exactly the container's command and args; the image's ENTRYPOINT is `migration-runner`."""
    argv = container_command(container)
    base = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATION_") and k != "DATABASE_URL"}
    return subprocess.run(
        [*argv, *container.get("args", [])], cwd=cwd, env={**base, **env}, capture_output=True, text=True, timeout=60
    )


POD = {"metadata.name": "shop-migration-runner-x7k2p", "metadata.namespace": "shop", "spec.nodeName": "node-a"}


def test_pod_simulation_runs_the_rendered_job_against_postgresql(pg_url: str, tmp_path: Path) -> None:
    """The rendered Job's args and env (Secret, ConfigMap, Downward API resolved) migrate a real database."""
    objects = render("-f", str(CHART / "ci" / "hook-chart-secret-values.yaml"), "--set", f"database.url={pg_url}")
    spec = only(objects, "Job")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = resolve_env(container, objects, POD)
    mounts = materialise_mounts(spec, container, objects, tmp_path / "pod")
    migrations = shutil.copytree(QUICKSTART, tmp_path / "migrations", ignore=shutil.ignore_patterns("*.db*"))
    # The URL is a read-only file in the runner's secrets directory, never a variable.
    assert "MIGRATION_DATABASE_URL" not in env and env["MIGRATION_SECRETS_DIR"] == "/run/secrets"
    assert (Path(mounts["/run/secrets"]) / "migration_database_url").read_text() == pg_url

    done = run_container(container, in_mounts(env, mounts), migrations)

    assert done.returncode == 0, done.stdout + done.stderr
    events = parse_events(done.stdout)
    assert {e["event"] for e in events} >= {"run.started", "revision.applied", "run.finished"}
    assert all(e.get("pod") == POD["metadata.name"] and e.get("namespace") == "shop" for e in events)
    assert events[0]["environment"] == "production"
    assert events[0]["database_source"].startswith("secret file ")
    with psycopg.connect(pg_url) as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [("0003",)]


def test_the_url_as_a_variable_is_still_an_option() -> None:
    """database.secretAs=env puts the URL in MIGRATION_DATABASE_URL from the Secret, with no file volume."""
    container = only(render("--set", "database.existingSecret=app-db", "--set", "database.secretAs=env"), "Job")
    env = container["spec"]["template"]["spec"]["containers"][0]["env"]

    url = [e for e in env if e["name"] == "MIGRATION_DATABASE_URL"]
    assert url == [{"name": "MIGRATION_DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "app-db", "key": "url"}}}]
    assert "volumes" not in container or all(
        v["name"] != "database-url" for v in container["spec"]["template"]["spec"]["volumes"]
    )


def test_every_namespaced_object_names_the_release_namespace() -> None:
    """So that `helm template --namespace x | kubectl apply -f -` lands in x."""
    for values in (
        ("--set", "database.url=postgresql://u:p@db/app"),
        ("--set", "mode=job", "--set", "database.existingSecret=a"),
    ):
        for thing in render(*values):
            assert thing["metadata"]["namespace"] == "shop", thing["kind"]


def test_an_image_digest_replaces_the_tag() -> None:
    """image.digest pins the image by digest over the tag, and a value that is no digest fails the render."""
    digest = "sha256:" + "ab" * 32
    job = only(
        render("--set", "database.existingSecret=app-db", "--set", f"image.digest={digest}", "--set", "image.tag=v9"),
        "Job",
    )
    bad = helm("template", "shop", ".", "--set", "database.existingSecret=app-db", "--set", "image.digest=latest")

    assert (
        job["spec"]["template"]["spec"]["containers"][0]["image"]
        == f"ghcr.io/migration-runner/migration-runner@{digest}"
    )
    assert bad.returncode != 0


INDEXED = ("--set", "databases.count=5", "--set", "databases.existingSecret=tenants", "--set", "job.parallelism=2")


@pytest.mark.parametrize("mode", ["hook", "job"])
def test_many_databases_render_one_indexed_job(mode: str, tmp_path: Path) -> None:
    """databases.count=5: completions 5, per-index retries, FailIndex for the non-retryable codes, the file mounted."""
    objects = render(*INDEXED, "--set", f"mode={mode}", "--set", "job.maxFailedIndexes=2")
    job = only(objects, "Job")
    spec = job["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]

    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 5, 2)
    assert (spec["backoffLimitPerIndex"], spec["maxFailedIndexes"]) == (2, 2)
    assert "backoffLimit" not in spec
    rules = spec["podFailurePolicy"]["rules"]
    non_retryable = {int(code) for code in MEANINGS} - {int(code) for code in RETRYABLE} - {ExitCode.OK}
    fail_index = [r for r in rules if r["action"] == "FailIndex"]
    assert len(fail_index) == 1 and set(fail_index[0]["onExitCodes"]["values"]) == non_retryable
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    assert [o for o in objects if o["kind"] == "Secret"] == []  # the databases Secret is the user's
    databases = next(v for v in pod["volumes"] if v["name"] == "databases")
    assert databases["secret"]["secretName"] == "tenants"
    assert databases["secret"]["items"] == [{"key": "databases", "path": "databases"}]
    variables = {e["name"]: e.get("value") for e in container["env"]}
    assert variables["MIGRATION_DATABASES_FILE"] == "/etc/migration-runner/databases/databases"
    assert "MIGRATION_DATABASE_URL" not in variables
    manifest = tmp_path / "indexed.yaml"
    manifest.write_text(yaml.safe_dump_all(objects))
    validator = Path(sys.executable).with_name("kubernetes-validate")
    for version in ("1.33.0", KUBERNETES_VERSIONS[-1]):  # the first release with the per-index fields GA
        check = subprocess.run(
            [str(validator), "--strict", "-k", version, str(manifest)], capture_output=True, text=True, timeout=60
        )
        assert check.returncode == 0, f"Kubernetes {version}: {check.stdout}{check.stderr}"
    lint = helm("lint", "--strict", ".", *INDEXED)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    missing = helm("template", "shop", ".", "--set", "databases.count=5")
    assert missing.returncode != 0 and "databases.existingSecret" in missing.stderr


@pytest.mark.timeout(180)
def test_pod_simulation_of_the_indexed_job_migrates_five_databases(
    pg_databases: Any, pushgateway: str, tmp_path: Path
) -> None:
    """Each index runs the rendered container with JOB_COMPLETION_INDEX set, two at a time, as the Job's pods would."""
    urls = [pg_databases() for _ in range(5)]
    objects = render(*INDEXED, "--set", f"metrics.pushgatewayUrl={pushgateway}")
    spec = only(objects, "Job")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    tenants = {
        "kind": "Secret",
        "metadata": {"name": "tenants"},
        "stringData": {"databases": "# tenants\n" + "\n".join(urls) + "\n"},
    }
    env = resolve_env(container, [*objects, tenants], POD)
    mounts = materialise_mounts(spec, container, [*objects, tenants], tmp_path / "pod")
    migrations = shutil.copytree(QUICKSTART, tmp_path / "migrations", ignore=shutil.ignore_patterns("*.db*"))
    argv = container_command(container)
    base = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATION_") and k != "DATABASE_URL"}

    results: dict[int, tuple[int, str]] = {}
    for first in range(0, 5, 2):  # parallelism 2
        pods = {
            index: subprocess.Popen(
                [*argv, *container["args"]],
                cwd=migrations,
                env={**base, **in_mounts(env, mounts), "JOB_COMPLETION_INDEX": str(index)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for index in range(first, min(first + 2, 5))
        }
        for index, process in pods.items():
            out, err = process.communicate(timeout=60)
            results[index] = (process.returncode, out + err)

    assert {index: code for index, (code, _) in results.items()} == dict.fromkeys(range(5), 0), results
    for index, url in enumerate(urls):
        with psycopg.connect(url) as connection:
            assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [("0003",)]
        events = parse_events(results[index][1])
        assert all(e.get("database_index") == index for e in events if "run_id" in e), index
        assert all(e.get("database_name") == url.rsplit("/", 1)[1] for e in events if "run_id" in e), index
    with urllib.request.urlopen(f"{pushgateway}/metrics", timeout=5) as response:  # noqa: S310  (loopback)
        exposition = response.read().decode()
    grouped = {
        (m.group(1), m.group(2))
        for m in re.finditer(
            r'migration_runner_last_success_timestamp_seconds\{[^}]*database="([^"]+)",database_index="(\d)"',
            exposition,
        )
    }
    assert grouped == {(url.rsplit("/", 1)[1], str(index)) for index, url in enumerate(urls)}


def secret_refs(container: dict[str, Any]) -> set[str]:
    """The Secrets a container's variables read."""
    references = [variable.get("valueFrom", {}).get("secretKeyRef") for variable in container["env"]]
    return {reference["name"] for reference in references if reference}


def test_the_example_application_chart_is_gated_by_the_hook_and_shares_one_secret(tmp_path: Path) -> None:
    """examples/helm-app: the runner as a dependency renders a pre-upgrade hook Job and the Deployment's init-container.

    The Job is a hook (Helm changes no application object until it succeeds), its ServiceAccount and
    ConfigMap are hooks of a lower weight, the Deployment is no hook, and the Job, the init-container and
    the application read one Secret. The init-container sets `command`: the application image's own
    entrypoint would otherwise receive `wait`.
    """
    objects = render(chart=app_chart(tmp_path))
    by_kind = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    job = only(objects, "Job")
    deployment = only(objects, "Deployment")
    hooks = {kind: (o["metadata"].get("annotations") or {}) for (kind, _), o in by_kind.items() if kind != "Deployment"}

    assert hooks["Job"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    for kind in ("ServiceAccount", "ConfigMap"):
        assert hooks[kind]["helm.sh/hook"] == "pre-install,pre-upgrade", kind
        assert int(hooks[kind]["helm.sh/hook-weight"]) < int(hooks["Job"]["helm.sh/hook-weight"]), kind
    assert "helm.sh/hook" not in (deployment["metadata"].get("annotations") or {})
    assert not [o for o in objects if o["kind"] == "Secret"]  # the Secret is made outside the chart

    pod = deployment["spec"]["template"]["spec"]
    init, web = pod["initContainers"][0], pod["containers"][0]
    job_container = job["spec"]["template"]["spec"]["containers"][0]
    assert init["image"] == web["image"] == job_container["image"] == "registry.example.com/shop/web:1.2.3"
    assert init["command"] == ["migration-runner"] and init["args"] == ["wait"]
    assert job_container["command"] == ["migration-runner"] and job_container["args"] == ["upgrade"]
    assert init["securityContext"]["runAsNonRoot"] is True and init["securityContext"]["runAsUser"] == 65532
    secrets = {
        "init-container": secret_refs(init),
        "application": secret_refs(web),
        "hook Job": {v["secret"]["secretName"] for v in job["spec"]["template"]["spec"]["volumes"] if "secret" in v},
    }
    assert all(names == {"shop-db"} for names in secrets.values()), secrets

    manifest = tmp_path / "app.yaml"
    manifest.write_text(yaml.safe_dump_all(objects))
    validator = Path(sys.executable).with_name("kubernetes-validate")
    check = subprocess.run(
        [str(validator), "--strict", "-k", KUBERNETES_VERSIONS[-1], str(manifest)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout


def test_the_example_applications_init_container_waits_for_the_hook_jobs_migration(pg_url: str, tmp_path: Path) -> None:
    """The rendered hook Job migrates a real database; then the rendered init-container's `wait` passes."""
    objects = render(chart=app_chart(tmp_path))
    job = only(objects, "Job")
    spec = job["spec"]["template"]["spec"]
    init = only(objects, "Deployment")["spec"]["template"]["spec"]["initContainers"][0]
    secret = {"kind": "Secret", "metadata": {"name": "shop-db"}, "stringData": {"url": pg_url}}
    migrations = shutil.copytree(QUICKSTART, tmp_path / "migrations", ignore=shutil.ignore_patterns("*.db*"))
    init_env = resolve_env(init, [*objects, secret], POD)

    early = run_container(init, {**init_env, "MIGRATION_WAIT_TIMEOUT": "1"}, migrations)
    assert early.returncode == ExitCode.TIMEOUT, early.stdout + early.stderr  # nothing migrated yet

    container = spec["containers"][0]
    mounts = materialise_mounts(spec, container, [*objects, secret], tmp_path / "pod")
    migrated = run_container(container, in_mounts(resolve_env(container, [*objects, secret], POD), mounts), migrations)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    waited = run_container(init, init_env, migrations)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert any(e["event"] == "wait.finished" for e in parse_events(waited.stdout))


def test_a_django_app_image_with_its_own_databases_gets_no_url_and_the_runner_as_command() -> None:
    """database.fromProject: no Secret, no MIGRATION_DATABASE_URL; image.entrypoint becomes the container's command."""
    objects = render("-f", str(CHART / "ci" / "django-app-image-values.yaml"))

    assert [o for o in objects if o["kind"] == "Secret"] == []
    container = only(objects, "Job")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["migration-runner"]
    assert container["args"] == ["upgrade"]
    names = [variable["name"] for variable in container["env"]]
    assert "MIGRATION_DATABASE_URL" not in names
    assert "DJANGO_SETTINGS_MODULE" in names
    assert {"secretRef": {"name": "shop-env"}} in container["envFrom"]


def test_the_network_policy_allows_dns_the_database_and_the_pushgateway_only() -> None:
    """The NetworkPolicy lets out DNS, the database and the Pushgateway, and lets in only the metrics scrape."""
    objects = render(
        "--set",
        "database.existingSecret=app-db",
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "metrics.pushgatewayUrl=https://push.monitoring.svc",
        "--set",
        "networkPolicy.databaseTo[0].ipBlock.cidr=10.0.8.0/24",
    )
    policy = only(objects, "NetworkPolicy")["spec"]
    job = only(objects, "Job")
    without_metrics_port = policy["ingress"]
    scraped = only(
        render(
            "--set", "database.existingSecret=a", "--set", "networkPolicy.enabled=true", "--set", "metrics.port=9400"
        ),
        "NetworkPolicy",
    )

    assert policy["podSelector"]["matchLabels"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    assert not without_metrics_port  # nothing inbound
    ports = [[(p["port"], p["protocol"]) for p in rule["ports"]] for rule in policy["egress"]]
    assert ports == [[(53, "UDP"), (53, "TCP")], [(5432, "TCP"), (3306, "TCP")], [(443, "TCP")]]
    assert policy["egress"][1]["to"] == [{"ipBlock": {"cidr": "10.0.8.0/24"}}]
    assert scraped["spec"]["ingress"] == [{"ports": [{"port": 9400, "protocol": "TCP"}]}]
    assert [o for o in render("--set", "database.existingSecret=a") if o["kind"] == "NetworkPolicy"] == []


def test_default_values_fail_alike_in_lint_and_template() -> None:
    """With no database named, `helm lint` and `helm template` both fail, naming the values to set.

    `required` alone made `helm template` fail while `helm lint` (which forgives it) passed; the schema's
    anyOf fails both.
    """
    lint = helm("lint", "--strict", ".")
    template = helm("template", "shop", ".")
    for done in (lint, template):
        assert done.returncode != 0, done.stdout
        said = done.stdout + done.stderr
        for value in ("database/existingSecret", "database/url", "database/fromProject", "databases/count"):
            assert value in said, said
    assert helm("template", "shop", ".", "--set", "mode=none").returncode == 0


def test_notes_do_not_send_the_user_to_a_job_that_helm_deleted() -> None:
    """With hook-succeeded, the successful Job is gone: NOTES say so instead of `kubectl get jobs`."""

    def notes(*values: str) -> str:
        done = helm("install", "--dry-run=client", "shop", ".", "--set", "database.existingSecret=db", *values)
        assert done.returncode == 0, done.stderr
        return done.stdout.split("NOTES:", 1)[1]

    deleted = notes()
    kept = notes("--set", "hook.deletePolicy=before-hook-creation")
    assert "Helm has deleted it" in deleted and "get jobs" not in deleted
    assert "get jobs" in kept and "deleted" not in kept
