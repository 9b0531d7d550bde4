"""Checks of the deployment files in deploy/, without Kubernetes, Docker or a network.

- Every YAML document parses; the KubeRay RayCluster/RayJob fields conform to a small
  hand-written subset of the ray.io/v1 schema (and the checker catches broken copies).
- The manifests agree with each other: the RayJob's cluster is raycluster.yaml's, the GPU
  workers fit the sweep's per-trial resources, storage and MLflow wiring line up.
- Security: no LoadBalancer/NodePort/Ingress, every password or token from a
  secretKeyRef, no credentials in any URI or manifest, a non-root image.
- deploy/mlflow/run_server.sh parses, binds 127.0.0.1 by default, and its help and
  argument errors start nothing. A slow test runs it for real when PostgreSQL is installed
  (and fails under CI=true when it is not: .ci/run installs it). It and .ci/run pass shellcheck.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.version import Version

from conftest import need

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
RAYCLUSTER = DEPLOY / "kuberay" / "raycluster.yaml"
RAYJOB = DEPLOY / "kuberay" / "rayjob.yaml"
MLFLOW_K8S = DEPLOY / "mlflow" / "k8s.yaml"
RUN_SERVER = DEPLOY / "mlflow" / "run_server.sh"
DOCKERFILE = DEPLOY / "Dockerfile"
DEPLOY_README = DEPLOY / "README.md"
CONSTRAINTS = DEPLOY / "constraints.txt"
MANIFESTS = (RAYCLUSTER, RAYJOB, MLFLOW_K8S)

SHARED_MOUNT = "/shared"
SECRET_ENV = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|CREDENTIAL|API_?KEY", re.IGNORECASE)


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def one(path: Path, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in load(path) if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{path.name}: expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def ray_cluster_specs() -> dict[str, dict[str, Any]]:
    """The RayCluster spec of raycluster.yaml and the one embedded in rayjob.yaml."""
    return {"raycluster.yaml": one(RAYCLUSTER, "RayCluster")["spec"],
            "rayjob.yaml": one(RAYJOB, "RayJob")["spec"]["rayClusterSpec"]}


def ray_pods(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    """The head's and every worker group's pod spec of a RayCluster spec."""
    return [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]


def pod_specs(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every pod spec inside a manifest document, with a label saying where it is."""
    kind, spec = doc["kind"], doc.get("spec") or {}
    found: list[tuple[str, dict[str, Any]]] = []
    clusters = []
    if kind == "RayCluster":
        clusters.append(spec)
    if kind == "RayJob":
        if "rayClusterSpec" in spec:
            clusters.append(spec["rayClusterSpec"])
        if "submitterPodTemplate" in spec:
            found.append((f"{kind}/submitter", spec["submitterPodTemplate"]["spec"]))
    for c in clusters:
        found.append((f"{kind}/head", c["headGroupSpec"]["template"]["spec"]))
        for g in c.get("workerGroupSpecs", []):
            found.append((f"{kind}/worker:{g['groupName']}", g["template"]["spec"]))
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        found.append((f"{kind}/{doc['metadata']['name']}", spec["template"]["spec"]))
    if kind == "Pod":
        found.append((f"Pod/{doc['metadata']['name']}", spec))
    return found


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod_spec.get("initContainers", [])) + list(pod_spec["containers"])


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# --------------------------------------------------------------------------- KubeRay schema
# A subset of the KubeRay ray.io/v1 CRDs (RayCluster, RayJob), written from the Go types
# (raycluster_types.go, rayjob_types.go) of KubeRay 1.x: the keys each object requires,
# every key it accepts, and the type of each. Pod templates are core Kubernetes types and
# are only checked for their outline here.
STR_MAP = "map[string]string"


def obj(required: tuple[str, ...] = (), **fields: Any) -> dict[str, Any]:
    return {"required": set(required), "fields": fields}


def enum(*values: str) -> tuple[str, ...]:
    return ("enum",) + values


POD_TEMPLATE = obj(("spec",), metadata=dict, spec=obj(("containers",), containers=list, **{
    k: object for k in ("initContainers", "volumes", "securityContext", "tolerations", "nodeSelector",
                        "affinity", "restartPolicy", "serviceAccountName", "imagePullSecrets",
                        "priorityClassName", "terminationGracePeriodSeconds", "runtimeClassName")}))
HEAD_GROUP = obj(
    ("rayStartParams", "template"),
    rayStartParams=STR_MAP, template=POD_TEMPLATE,
    serviceType=enum("ClusterIP", "NodePort", "LoadBalancer"), headService=dict, enableIngress=bool,
    resources=STR_MAP, labels=STR_MAP,
)
WORKER_GROUP = obj(
    ("groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"),
    groupName=str, replicas=int, minReplicas=int, maxReplicas=int, numOfHosts=int,
    rayStartParams=STR_MAP, template=POD_TEMPLATE, scaleStrategy=dict, suspend=bool,
    idleTimeoutSeconds=int, resources=STR_MAP, labels=STR_MAP,
)
RAY_CLUSTER_SPEC = obj(
    ("headGroupSpec",),
    headGroupSpec=HEAD_GROUP, workerGroupSpecs=[WORKER_GROUP], rayVersion=str,
    enableInTreeAutoscaling=bool, autoscalerOptions=dict, headServiceAnnotations=STR_MAP, suspend=bool,
    authOptions=obj(("mode",), mode=enum("disabled", "token"), secretName=str, enableK8sTokenAuth=bool),
    gcsFaultToleranceOptions=dict, managedBy=str, upgradeStrategy=dict,
)
RAY_JOB_SPEC = obj(
    (),
    entrypoint=str, rayClusterSpec=RAY_CLUSTER_SPEC, clusterSelector=STR_MAP,
    shutdownAfterJobFinishes=bool, ttlSecondsAfterFinished=int, backoffLimit=int,
    activeDeadlineSeconds=int, submitterPodTemplate=POD_TEMPLATE, submitterConfig=obj((), backoffLimit=int),
    submissionMode=enum("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"),
    runtimeEnvYAML=str, jobId=str, metadata=STR_MAP, entrypointNumCpus=(int, float),
    entrypointNumGpus=(int, float), entrypointResources=str, suspend=bool, managedBy=str,
    deletionStrategy=dict,
)
METADATA = obj(("name",), name=str, namespace=str, labels=STR_MAP, annotations=STR_MAP)
TOP_LEVEL = {
    "RayCluster": obj(("apiVersion", "kind", "metadata", "spec"), apiVersion=enum("ray.io/v1"),
                      kind=str, metadata=METADATA, spec=RAY_CLUSTER_SPEC),
    "RayJob": obj(("apiVersion", "kind", "metadata", "spec"), apiVersion=enum("ray.io/v1"),
                  kind=str, metadata=METADATA, spec=RAY_JOB_SPEC),
}


def check(value: Any, schema: Any, path: str = "") -> list[str]:
    """Errors of `value` against `schema` (an obj(), [obj()], STR_MAP, enum() or Python type)."""
    where = path or "<root>"
    if schema is object:
        return []
    if schema == STR_MAP:
        if not isinstance(value, dict):
            return [f"{where}: expected a map of strings, got {type(value).__name__}"]
        return [f"{path}.{k}: value must be a string (quote it), got {type(v).__name__}"
                for k, v in value.items() if not isinstance(k, str) or not isinstance(v, str)]
    if isinstance(schema, tuple) and schema and schema[0] == "enum":
        return [] if value in schema[1:] else [f"{where}: {value!r} is not one of {list(schema[1:])}"]
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {type(value).__name__}"]
        return [e for i, item in enumerate(value) for e in check(item, schema[0], f"{path}[{i}]")]
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return [f"{where}: expected an object, got {type(value).__name__}"]
        errors = [f"{where}: missing required key '{k}'" for k in sorted(schema["required"] - value.keys())]
        for key, item in value.items():
            if key not in schema["fields"]:
                errors.append(f"{where}: unknown key '{key}'")
            else:
                errors += check(item, schema["fields"][key], f"{path}.{key}" if path else key)
        return errors
    types = schema if isinstance(schema, tuple) else (schema,)
    # YAML true/false are bools, and bool is an int in Python: never accept one for the other.
    if isinstance(value, bool) and bool not in types:
        return [f"{where}: expected {'/'.join(t.__name__ for t in types)}, got bool"]
    if not isinstance(value, types):
        return [f"{where}: expected {'/'.join(t.__name__ for t in types)}, got {type(value).__name__}"]
    return []


def check_kuberay(doc: dict[str, Any]) -> list[str]:
    errors = check(doc, TOP_LEVEL[doc["kind"]])
    spec = doc.get("spec") or {}
    clusters = [spec] if doc["kind"] == "RayCluster" else [spec.get("rayClusterSpec")]
    if doc["kind"] == "RayJob":
        if ("rayClusterSpec" in spec) == ("clusterSelector" in spec):
            errors.append("spec: give exactly one of rayClusterSpec and clusterSelector")
        if spec.get("submissionMode", "K8sJobMode") != "InteractiveMode" and not spec.get("entrypoint"):
            errors.append("spec.entrypoint: required unless submissionMode is InteractiveMode")
    for cluster in filter(None, clusters):
        groups = cluster.get("workerGroupSpecs", [])
        names = [g.get("groupName") for g in groups if isinstance(g, dict)] if isinstance(groups, list) else []
        if len(names) != len(set(names)):
            errors.append(f"workerGroupSpecs: duplicate groupName in {names}")
        groups = cluster.get("workerGroupSpecs", [])
        for g in groups if isinstance(groups, list) else []:
            if not isinstance(g, dict):
                continue
            lo, n, hi = g.get("minReplicas"), g.get("replicas", g.get("minReplicas")), g.get("maxReplicas")
            if all(isinstance(x, int) and not isinstance(x, bool) for x in (lo, n, hi)) and not lo <= n <= hi:
                errors.append(f"workerGroupSpecs[{g.get('groupName')}]: need minReplicas <= replicas <= maxReplicas")
    return errors


# --------------------------------------------------------------------------- parsing
def test_every_yaml_document_parses_and_names_itself():
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert set(MANIFESTS) <= set(files)
    for path in files:
        docs = load(path)
        assert docs, f"{path} holds no document"
        for doc in docs:
            assert isinstance(doc, dict), f"{path}: a document is not a mapping"
            for key in ("apiVersion", "kind", "metadata"):
                assert key in doc, f"{path}: {doc.get('kind')} lacks {key}"
            assert doc["metadata"].get("name"), f"{path}: {doc['kind']} has no metadata.name"


# --------------------------------------------------------------------------- KubeRay schema
@pytest.mark.parametrize("path,kind", [(RAYCLUSTER, "RayCluster"), (RAYJOB, "RayJob")])
def test_kuberay_manifest_conforms_to_schema(path, kind):
    doc = one(path, kind)
    assert check_kuberay(doc) == []


def _set(doc, path, value):
    *parents, last = path
    node = doc
    for p in parents:
        node = node[p]
    node[last] = value


def _del(doc, path):
    *parents, last = path
    node = doc
    for p in parents:
        node = node[p]
    del node[last]


HEAD = ("spec", "headGroupSpec")
WORKER = ("spec", "workerGroupSpecs", 0)
BROKEN_RAYCLUSTER = {
    "typo in a headGroupSpec key": (lambda d: _set(d, HEAD + ("rayStartParam",), {}), "unknown key 'rayStartParam'"),
    "unknown spec key": (lambda d: _set(d, ("spec", "workerGroupSpec"), []), "unknown key 'workerGroupSpec'"),
    "worker group without groupName": (lambda d: _del(d, WORKER + ("groupName",)), "missing required key 'groupName'"),
    "head without template": (lambda d: _del(d, HEAD + ("template",)), "missing required key 'template'"),
    "unquoted rayStartParams value": (lambda d: _set(d, HEAD + ("rayStartParams", "num-cpus"), 0),
                                      "value must be a string"),
    "replicas as a string": (lambda d: _set(d, WORKER + ("replicas",), "2"), "expected int, got str"),
    "replicas above maxReplicas": (lambda d: _set(d, WORKER + ("replicas",), 99), "minReplicas <= replicas"),
    "workerGroupSpecs not a list": (lambda d: _set(d, ("spec", "workerGroupSpecs"), {"groupName": "gpu"}),
                                    "expected a list"),
    "bad auth mode": (lambda d: _set(d, ("spec", "authOptions", "mode"), "password"), "is not one of"),
    "old apiVersion": (lambda d: _set(d, ("apiVersion",), "ray.io/v1alpha1"), "is not one of"),
    "pod template without containers": (lambda d: _del(d, HEAD + ("template", "spec", "containers")),
                                        "missing required key 'containers'"),
}
BROKEN_RAYJOB = {
    "typo in shutdownAfterJobFinishes": (
        lambda d: _set(d, ("spec", "shutdownAfterJobFinish"), True), "unknown key 'shutdownAfterJobFinish'"),
    "ttl as a string": (lambda d: _set(d, ("spec", "ttlSecondsAfterFinished"), "600"), "expected int, got str"),
    "shutdown flag as a string": (lambda d: _set(d, ("spec", "shutdownAfterJobFinishes"), "true"),
                                  "expected bool, got str"),
    "both rayClusterSpec and clusterSelector": (
        lambda d: _set(d, ("spec", "clusterSelector"), {"ray.io/cluster": "tune-prune"}), "exactly one of"),
    "no entrypoint": (lambda d: _del(d, ("spec", "entrypoint")), "spec.entrypoint: required"),
    "typo inside the embedded cluster": (
        lambda d: _set(d, ("spec", "rayClusterSpec", "headGroupSpec", "serviceTyp"), "ClusterIP"),
        "unknown key 'serviceTyp'"),
}


@pytest.mark.parametrize("path,kind,name,mutate,expected", [
    *[(RAYCLUSTER, "RayCluster", n, m, e) for n, (m, e) in BROKEN_RAYCLUSTER.items()],
    *[(RAYJOB, "RayJob", n, m, e) for n, (m, e) in BROKEN_RAYJOB.items()],
], ids=[*BROKEN_RAYCLUSTER, *BROKEN_RAYJOB])
def test_schema_checker_catches_a_broken_copy(path, kind, name, mutate, expected):
    broken = copy.deepcopy(one(path, kind))
    mutate(broken)
    errors = check_kuberay(broken)
    assert any(expected in e for e in errors), f"{name}: {expected!r} not in {errors}"


def test_kuberay_object_names_are_dns_1035_labels():
    # KubeRay refuses other names, and derives Service and pod names from them.
    for path, kind in ((RAYCLUSTER, "RayCluster"), (RAYJOB, "RayJob")):
        name = one(path, kind)["metadata"]["name"]
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 47, name


def test_rayjob_runs_on_the_same_cluster_as_raycluster_yaml():
    specs = ray_cluster_specs()
    assert specs["rayjob.yaml"] == specs["raycluster.yaml"], \
        "rayjob.yaml's rayClusterSpec drifted from raycluster.yaml's spec: change both together"


def test_rayjob_runs_the_cifar10_sweep_and_cleans_up():
    job = one(RAYJOB, "RayJob")["spec"]
    assert "tune-prune sweep /app/search_spaces/cifar10_resnet18_paper.yaml" in job["entrypoint"]
    assert (ROOT / "search_spaces" / "cifar10_resnet18_paper.yaml").is_file()
    assert re.search(r"^COPY search_spaces search_spaces$", DOCKERFILE.read_text(), re.M)
    assert re.search(r"^WORKDIR /app$", DOCKERFILE.read_text(), re.M)  # so it lands in /app/search_spaces
    # Relative storage_path/cache_dir must resolve onto the shared claim.
    assert f"cd {SHARED_MOUNT} " in job["entrypoint"]
    assert job["shutdownAfterJobFinishes"] is True
    assert isinstance(job["ttlSecondsAfterFinished"], int) and job["ttlSecondsAfterFinished"] >= 0
    assert isinstance(job["backoffLimit"], int) and job["backoffLimit"] >= 0
    assert job["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"


def test_the_sweep_spec_fits_a_gpu_worker_pod():
    """A trial that asks more than one worker pod has would wait forever."""
    from tune_prune.spec import load_spec

    spec = load_spec(ROOT / "search_spaces" / "cifar10_resnet18_paper.yaml")
    for name, cluster in ray_cluster_specs().items():
        fits = []
        for g in cluster["workerGroupSpecs"]:
            limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
            fits.append(float(limits["cpu"]) >= spec.resources.cpu
                        and float(limits.get("nvidia.com/gpu", 0)) >= spec.resources.gpu)
        assert any(fits), f"{name}: no worker group has {spec.resources.cpu} CPUs and {spec.resources.gpu} GPU"


# --------------------------------------------------------------------------- GPUs, auth, storage, MLflow
def test_gpu_worker_group_requests_nvidia_gpus():
    for name, cluster in ray_cluster_specs().items():
        groups = cluster["workerGroupSpecs"]
        assert groups, f"{name}: no worker group"
        for g in groups:
            limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
            assert int(limits["nvidia.com/gpu"]) >= 1, f"{name}/{g['groupName']}: no nvidia.com/gpu limit"
            assert g["maxReplicas"] >= g["minReplicas"] >= 0
        head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in head.get("resources", {}).get("limits", {})


def _secret_ref(env_entry):
    return ((env_entry.get("valueFrom") or {}).get("secretKeyRef")) or None


def test_token_auth_everywhere_ray_runs():
    for name, cluster in ray_cluster_specs().items():
        auth = cluster["authOptions"]
        assert auth["mode"] == "token"
        assert Version(cluster["rayVersion"]) >= Version("2.52.0"), "KubeRay token auth needs Ray 2.52+"
        pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", CONSTRAINTS.read_text(), re.M))
        assert cluster["rayVersion"] == pins["ray"], "rayVersion must be the Ray in the image"
        pods = [("head", cluster["headGroupSpec"]["template"]["spec"])]
        pods += [(g["groupName"], g["template"]["spec"]) for g in cluster["workerGroupSpecs"]]
        for where, pod in pods:
            env = env_of(pod["containers"][0])
            assert env["RAY_AUTH_MODE"].get("value") == "token", f"{name}/{where}"
            ref = _secret_ref(env["RAY_AUTH_TOKEN"])
            assert ref == {"name": auth["secretName"], "key": "auth_token"}, f"{name}/{where}: {ref}"
    submitter = one(RAYJOB, "RayJob")["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    env = env_of(submitter)
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    secret_name = one(RAYCLUSTER, "RayCluster")["spec"]["authOptions"]["secretName"]
    assert _secret_ref(env["RAY_AUTH_TOKEN"])["name"] == secret_name


def test_shared_storage_is_one_rwx_claim_mounted_at_the_same_path_everywhere():
    pvc = one(RAYCLUSTER, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    claim = pvc["metadata"]["name"]
    for name, cluster in ray_cluster_specs().items():
        for pod in ray_pods(cluster):
            volumes = {v["name"]: v for v in pod["volumes"]}
            mounts = [m for m in pod["containers"][0]["volumeMounts"]
                      if (volumes[m["name"]].get("persistentVolumeClaim") or {}).get("claimName") == claim]
            assert [m["mountPath"] for m in mounts] == [SHARED_MOUNT], f"{name}: claim {claim} not at {SHARED_MOUNT}"
            data = env_of(pod["containers"][0])["TUNE_PRUNE_DATA"]["value"]
            assert data.startswith(SHARED_MOUNT + "/"), data
    # rayjob.yaml uses the claim but does not own it: deleting the job must not delete results.
    assert not [d for d in load(RAYJOB) if d["kind"] == "PersistentVolumeClaim"]


def test_ray_pods_log_to_the_in_cluster_mlflow_service():
    services = {d["metadata"]["name"]: d for d in load(MLFLOW_K8S) if d["kind"] == "Service"}
    for name, cluster in ray_cluster_specs().items():
        for pod in ray_pods(cluster):
            uri = urlsplit(env_of(pod["containers"][0])["MLFLOW_TRACKING_URI"]["value"])
            assert uri.scheme == "http" and uri.username is None and uri.password is None, uri
            host = uri.hostname.split(".")[0]
            assert host in services, f"{name}: tracking URI names Service {host!r}, not in mlflow/k8s.yaml"
            assert uri.port in [p["port"] for p in services[host]["spec"]["ports"]]


def _args_after(args: list[str], flag: str) -> str:
    for i, a in enumerate(args):
        if a == flag:
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    raise AssertionError(f"{flag} not in {args}")


def test_mlflow_server_on_postgres_is_wired_together():
    docs = load(MLFLOW_K8S)
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    mlflow = one(MLFLOW_K8S, "Deployment", "mlflow")["spec"]["template"]["spec"]
    server = next(c for c in mlflow["containers"] if c["name"] == "mlflow")
    cmd = server["command"] + server.get("args", [])
    assert cmd[:2] == ["mlflow", "server"]

    backend = urlsplit(_args_after(cmd, "--backend-store-uri"))
    assert backend.scheme == "postgresql+psycopg"
    assert backend.username is None and backend.password is None, "credentials belong in env, not the URI"
    assert backend.hostname in services, f"backend host {backend.hostname} is not a Service here"
    assert backend.port in [p["port"] for p in services[backend.hostname]["spec"]["ports"]]

    artifacts = _args_after(cmd, "--artifacts-destination")
    volumes = {v["name"]: v for v in mlflow["volumes"]}
    mount = next(m for m in server["volumeMounts"] if m["mountPath"] == artifacts)
    claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim in [d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert "--no-serve-artifacts" not in cmd
    assert _args_after(cmd, "--host") == "0.0.0.0"  # inside the pod; the Service stays ClusterIP

    env = env_of(server)
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
    db_ref = _secret_ref(env["PGPASSWORD"])
    assert db_ref, "PGPASSWORD must come from a Secret"
    assert env["PGUSER"]["value"]
    allowed = env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    assert {"mlflow", "mlflow:*", "127.0.0.1:*"} <= set(allowed), allowed
    assert server["readinessProbe"]["httpGet"]["path"] == "/health"
    for init in mlflow.get("initContainers", []):  # inline Python must at least compile
        if init["command"][:2] == ["python", "-c"]:
            compile(init["command"][2], f"initContainer {init['name']}", "exec")
    assert services["mlflow"]["spec"]["type"] == "ClusterIP"

    pg = next(d for d in docs
              if d["kind"] in ("StatefulSet", "Deployment") and d["metadata"]["name"] == backend.hostname)
    pg_env = env_of(pg["spec"]["template"]["spec"]["containers"][0])
    assert _secret_ref(pg_env["POSTGRES_PASSWORD"]) == db_ref, "PostgreSQL and MLflow must share one Secret"
    assert pg_env["POSTGRES_USER"]["value"] == env["PGUSER"]["value"]
    assert pg_env["POSTGRES_DB"]["value"] == backend.path.lstrip("/")
    assert services[backend.hostname]["spec"]["type"] == "ClusterIP"


# --------------------------------------------------------------------------- security
def all_docs():
    return [(p, d) for p in MANIFESTS for d in load(p)]


def test_nothing_is_exposed_outside_the_cluster():
    for path, doc in all_docs():
        where = f"{path.name}: {doc['kind']}/{doc['metadata']['name']}"
        assert doc["kind"] not in ("Ingress", "IngressClass", "Gateway", "HTTPRoute", "Route"), where
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", where
        for label, pod in pod_specs(doc):
            assert not pod.get("hostNetwork"), f"{where} {label}"
            for c in containers(pod):
                assert not any("hostPort" in p for p in c.get("ports", [])), f"{where} {label}"
    for name, cluster in ray_cluster_specs().items():
        head = cluster["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", name
        assert not head.get("enableIngress"), name
        assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP", name


def test_every_password_and_token_comes_from_a_secret_key_ref():
    seen = 0
    for path, doc in all_docs():
        for label, pod in pod_specs(doc):
            for c in containers(pod):
                for e in c.get("env", []):
                    if SECRET_ENV.search(e["name"]):
                        seen += 1
                        assert "value" not in e, f"{path.name} {label}: {e['name']} has a literal value"
                        assert _secret_ref(e), f"{path.name} {label}: {e['name']} is not from a secretKeyRef"
                for src in c.get("envFrom", []):
                    assert "secretRef" in src or "configMapRef" in src
    assert seen >= 8  # the Ray token in head/workers/submitter, the DB password in PostgreSQL and MLflow
    # Secrets are created with kubectl, never stored in the manifests.
    assert not [d for _, d in all_docs() if d["kind"] == "Secret"]


# NAME=value where NAME ends in password/token/...: fine when the value is a $reference.
LITERAL_SECRET = re.compile(
    r"(?i)[a-z0-9_]*(password|passwd|pwd|secret|token|api_?key)\s*=\s*(?![\s\"']*[$<{])[^\s\"'`]+")
URI_WITH_USERINFO = re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s\"'@]+@")
SCANNED_FILES = (*MANIFESTS, DOCKERFILE, RUN_SERVER)


@pytest.mark.parametrize("path", SCANNED_FILES, ids=lambda p: p.name)
def test_no_literal_credentials_or_credentials_in_uris(path):
    text = path.read_text()
    assert not LITERAL_SECRET.findall(text), f"{path.name}: password=/token=-style literal"
    assert not URI_WITH_USERINFO.findall(text), f"{path.name}: a URI carries user info"
    if path.suffix == ".yaml":
        for doc in load(path):
            for key, value in _walk(doc):
                if re.search(r"(?i)^(password|passwd|token|secret|auth_?token)$", key):
                    pytest.fail(f"{path.name}: key {key!r} holds a literal value")
                if isinstance(value, str) and "://" in value:
                    parts = urlsplit(value.split()[0])
                    assert parts.username is None and parts.password is None, f"{path.name}: {value}"


def _walk(node, key=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, str(k))
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, key)
    else:
        yield key, node


def test_the_credential_scans_would_catch_a_leak():
    assert LITERAL_SECRET.search("POSTGRES_PASSWORD=hunter2")
    assert LITERAL_SECRET.search("--from-literal=password=hunter2")
    assert not LITERAL_SECRET.search('password="$DB_PASSWORD"')
    assert URI_WITH_USERINFO.search("postgresql+psycopg://mlflow:hunter2@db:5432/mlflow")
    assert URI_WITH_USERINFO.search("http://user@mlflow:5000")
    assert not URI_WITH_USERINFO.search("postgresql+psycopg://mlflow-postgres:5432/mlflow")


def test_every_referenced_secret_is_created_in_the_guide():
    """Each (Secret, key) the manifests use has a `kubectl create secret` line in deploy/README.md."""
    guide = DEPLOY_README.read_text()
    refs = set()
    for _, doc in all_docs():
        for _, pod in pod_specs(doc):
            for c in containers(pod):
                refs |= {(r["name"], r["key"]) for r in map(_secret_ref, c.get("env", [])) if r}
    for _, cluster in ray_cluster_specs().items():
        refs.add((cluster["authOptions"]["secretName"], "auth_token"))  # KubeRay's key for the token
    assert refs
    for name, key in sorted(refs):
        # `kubectl create secret generic NAME ... --from-literal=KEY=`, possibly over \-continued lines
        pattern = (rf"kubectl create secret generic {re.escape(name)}\b[^\n]*(\\\n[^\n]*)*"
                   rf"--from-literal={re.escape(key)}=")
        assert re.search(pattern, guide), f"deploy/README.md does not create Secret {name} with key {key}"


def test_pods_run_unprivileged():
    for path, doc in all_docs():
        for label, pod in pod_specs(doc):
            assert pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{path.name} {label}"
            for c in containers(pod):
                sc = c.get("securityContext", {})
                assert sc.get("allowPrivilegeEscalation") is False, f"{path.name} {label}/{c['name']}"
                assert not sc.get("privileged"), f"{path.name} {label}/{c['name']}"


# --------------------------------------------------------------------------- Dockerfile
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined, out = "", []
    for line in DOCKERFILE.read_text().splitlines():
        if not joined and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            joined += line.rstrip()[:-1] + " "
            continue
        joined += line
        word, _, rest = joined.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        joined = ""
    return out


def test_dockerfile_structure():
    ins = dockerfile_instructions()
    froms = [a for i, a in ins if i == "FROM"]
    assert froms and all(re.match(r"nvidia/cuda:\S+-ubuntu\d", f) for f in froms), froms
    runs = " ".join(a for i, a in ins if i == "RUN")
    assert re.search(r"python3\.1[12]\b", runs)
    assert re.search(r"pip install -c deploy/constraints\.txt \.(\s|$)", runs)
    assert re.search(r'"psycopg\[binary\]==\d+\.\d+\.\d+"', runs), "psycopg must be pinned"
    copies = [a for i, a in ins if i == "COPY"]
    assert "deploy/constraints.txt deploy/constraints.txt" in copies
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    for i, a in ins:
        if i in ("ENV", "ARG"):
            assert not SECRET_ENV.search(a), f"{i} {a}: no credentials in the image"


def test_dockerfile_pins_agree_with_constraints():
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", CONSTRAINTS.read_text(), re.M))
    pins = {k.lower().replace("_", "-"): v for k, v in pins.items()}
    runs = " ".join(a for i, a in dockerfile_instructions() if i == "RUN")
    extra = re.findall(r'"?([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s"]+)', runs)
    assert extra
    for name, version in extra:
        key = name.lower().replace("_", "-")
        if key in pins:
            assert pins[key] == version, f"Dockerfile pins {name}=={version}, constraints.txt {pins[key]}"
    assert ("ray", pins["ray"]) in [(n.lower(), v) for n, v in extra], "ray[default] must match the ray pin"


# --------------------------------------------------------------------------- run_server.sh
def test_run_server_is_valid_bash():
    proc = subprocess.run(["bash", "-n", str(RUN_SERVER)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.needs(shutil.which("shellcheck"), reason="shellcheck not installed (apt-get install shellcheck)")
@pytest.mark.parametrize("script", [RUN_SERVER, ROOT / ".ci" / "run"], ids=lambda p: p.name)
def test_shell_scripts_pass_shellcheck(script):
    proc = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_run_server_binds_loopback_by_default():
    text = RUN_SERVER.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") or text.startswith("#!/bin/bash\n")
    assert re.search(r"^set -euo pipefail$", text, re.M)
    assert re.search(r"^HOST=127\.0\.0\.1$", text, re.M), "MLflow must default to 127.0.0.1"
    assert "listen_addresses=127.0.0.1" in text, "PostgreSQL must listen on loopback only"
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in text
    assert "runuser -u" in text, "initdb refuses root: the script must switch user"
    for line in text.splitlines():  # the password is never echoed
        if re.search(r"\b(echo|printf|say)\b", line) and "PASSWORD" in line and "PGPASS_FILE" not in line:
            assert "$DB_PASSWORD" not in line and "${DB_PASSWORD" not in line, line


def _run_script(*args: str, env_extra: dict[str, str] | None = None, home: Path) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), **(env_extra or {})}
    return subprocess.run(["bash", str(RUN_SERVER), *args], capture_output=True, text=True, timeout=30, env=env)


def test_run_server_help_starts_nothing(tmp_path):
    state = tmp_path / "state"
    for flag in ("-h", "--help"):
        proc = _run_script(flag, home=tmp_path, env_extra={"TUNE_PRUNE_MLFLOW_DIR": str(state)})
        assert proc.returncode == 0, proc.stderr
        assert "Usage:" in proc.stdout and "--stop" in proc.stdout and "127.0.0.1" in proc.stdout
    assert not state.exists(), "help must not create the state directory"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,message", [
    (("--port", "abc"), "--port must be a positive integer"),
    (("--pg-port", "0"), "--pg-port must be a positive integer"),
    (("--bogus",), "unknown argument '--bogus'"),
    (("--host",), "--host needs a value"),
])
def test_run_server_refuses_bad_arguments_before_starting_anything(tmp_path, args, message):
    state = tmp_path / "state"
    proc = _run_script(*args, home=tmp_path, env_extra={"TUNE_PRUNE_MLFLOW_DIR": str(state)})
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not state.exists()


def test_run_server_stop_without_state_creates_nothing(tmp_path):
    state = tmp_path / "never-started"
    proc = _run_script("--stop", "-d", str(state), home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to stop" in proc.stdout
    assert not state.exists()


# --------------------------------------------------------------------------- run_server.sh, for real
def _pg_bin() -> str | None:
    if shutil.which("pg_ctl"):
        return str(Path(shutil.which("pg_ctl")).resolve().parent)
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")) if Path("/usr/lib/postgresql").is_dir() else []
    return str(found[-1].parent) if found else None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.needs(_pg_bin() is not None, reason="PostgreSQL server binaries not installed (apt-get install postgresql)")
def test_run_server_starts_logs_and_stops_for_real(tmp_path):
    mlflow_bin = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "mlflow"
    if not mlflow_bin.exists():
        mlflow_bin = Path(shutil.which("mlflow") or "/nonexistent")
    need(mlflow_bin.exists(), "mlflow not installed")
    if os.geteuid() == 0:
        need(shutil.which("runuser"), "running as root without runuser: cannot start PostgreSQL")
        # The postgres user must be able to reach the state directory.
        base = Path(tempfile.mkdtemp(prefix="tune_prune_run_server_", dir="/tmp"))
        base.chmod(0o755)
    else:
        base = tmp_path
    state = base / "state"
    pg_port, port = _free_port(), _free_port()
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "MLFLOW_BIN": str(mlflow_bin),
           "PG_BIN": _pg_bin(), "TUNE_PRUNE_MLFLOW_DB_PASSWORD": "it's:a\\test pw"}
    args = ["bash", str(RUN_SERVER), "-d", str(state), "--pg-port", str(pg_port), "--port", str(port)]
    try:
        t0 = time.time()
        proc = subprocess.run(args, capture_output=True, text=True, timeout=180, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"http://127.0.0.1:{port}" in proc.stdout
        assert "it's:a" not in proc.stdout + proc.stderr, "the password was printed"
        assert (state / "pgpass").stat().st_mode & 0o077 == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            assert r.status == 200
        code = (
            "import mlflow, tempfile, pathlib\n"
            f"mlflow.set_tracking_uri('http://127.0.0.1:{port}')\n"
            "mlflow.set_experiment('deploy-check')\n"
            "with mlflow.start_run() as run:\n"
            "    mlflow.log_metric('m', 0.5, step=1)\n"
            "    p = pathlib.Path(tempfile.mkdtemp()) / 'a.txt'; p.write_text('x'); mlflow.log_artifact(str(p))\n"
            "print(mlflow.get_run(run.info.run_id).data.metrics['m'])\n")
        py = mlflow_bin.parent / "python"
        logged = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=120)
        assert logged.returncode == 0 and logged.stdout.strip().endswith("0.5"), logged.stderr
        assert list((state / "artifacts").rglob("a.txt")), "artifact was not proxied into the state dir"
        # A second start finds everything running and changes nothing.
        again = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
        assert again.returncode == 0 and "already running" in again.stdout
        assert time.time() - t0 < 170
    finally:
        stop = subprocess.run(args + ["--stop"], capture_output=True, text=True, timeout=120, env=env)
        if base != tmp_path:
            shutil.rmtree(base, ignore_errors=True)
    assert stop.returncode == 0, stop.stderr
    assert "stopping PostgreSQL" in stop.stdout
