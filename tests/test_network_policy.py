"""The NetworkPolicies of deploy/, evaluated on the manifests themselves (no Kubernetes needed).

- Each policy selects exactly the pods it is written for, judged on the labels those pods
  carry once created: KubeRay adds labels of its own to Ray pods and overrides three,
  the Job controller labels the submitter pod, the StatefulSet controller its pod.
- Ray pods admit Ray pods only, on every port Ray opens. Every port option of the
  installed `ray start` is pinned in rayStartParams (unpinned, most are random), and the
  pinned values parse as `ray start` arguments.
- The head's Jobs API admits the RayJob submitter and the KubeRay operator; MLflow admits
  the Ray pods only, on the port the trials' tracking URI leads to; PostgreSQL only MLflow.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
RAYCLUSTER = DEPLOY / "kuberay" / "raycluster.yaml"
RAYJOB = DEPLOY / "kuberay" / "rayjob.yaml"
RAY_POLICY = DEPLOY / "kuberay" / "networkpolicy.yaml"
MLFLOW_K8S = DEPLOY / "mlflow" / "k8s.yaml"
NS = "tune-prune"

# `ray start` options that open no port of a node: Redis is not used, and a worker port
# list would replace the min/max range we pin.
NOT_A_LISTENING_PORT = {"redis_shard_ports", "worker_port_list"}
HEAD_ONLY = {"port", "dashboard_port", "ray_client_server_port"}


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def one(path: Path, kind: str, name: str | None = None) -> dict[str, Any]:
    (doc,) = [d for d in load(path) if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return doc


def policies() -> dict[str, dict[str, Any]]:
    docs = [d for p in (RAY_POLICY, MLFLOW_K8S) for d in load(p) if d["kind"] == "NetworkPolicy"]
    return {d["metadata"]["name"]: d for d in docs}


# ------------------------------------------------------------------ the pods as they will exist
def kuberay_labels(template: dict[str, Any], cluster: str, node_type: str, group: str) -> dict[str, str]:
    """Labels of a pod KubeRay creates from a head or worker template (KubeRay 1.x labelPod):
    its own labels first, the template's over them except for three it keeps."""
    labels = {"ray.io/is-ray-node": "yes", "ray.io/cluster": cluster, "ray.io/node-type": node_type,
              "ray.io/group": group, "ray.io/identifier": f"{cluster}-{node_type}",
              "app.kubernetes.io/name": "kuberay", "app.kubernetes.io/created-by": "kuberay-operator"}
    for key, value in (template.get("metadata", {}).get("labels") or {}).items():
        if key not in ("ray.io/node-type", "ray.io/group", "ray.io/cluster"):
            labels[key] = value
    return labels


def ray_cluster_pods(spec: dict[str, Any], cluster: str, prefix: str) -> dict[str, dict[str, Any]]:
    head = spec["headGroupSpec"]
    pods = {f"{prefix}-head": {"ns": NS, "labels": kuberay_labels(head["template"], cluster, "head", "headgroup"),
                               "template": head["template"], "params": head["rayStartParams"], "head": True}}
    for g in spec["workerGroupSpecs"]:
        pods[f"{prefix}-worker-{g['groupName']}"] = {
            "ns": NS, "labels": kuberay_labels(g["template"], cluster, "worker", g["groupName"]),
            "template": g["template"], "params": g["rayStartParams"], "head": False}
    return pods


def all_pods() -> dict[str, dict[str, Any]]:
    """Every pod the manifests make, plus pods that must be kept out."""
    job = one(RAYJOB, "RayJob")
    pods = {**ray_cluster_pods(one(RAYCLUSTER, "RayCluster")["spec"], "tune-prune", "raycluster"),
            # a RayJob's cluster gets a generated name: nothing may depend on it
            **ray_cluster_pods(job["spec"]["rayClusterSpec"], "tune-prune-cifar10-x7k2p", "rayjob")}
    submitter_labels = dict(job["spec"]["submitterPodTemplate"].get("metadata", {}).get("labels") or {})
    submitter_labels.update({"batch.kubernetes.io/job-name": job["metadata"]["name"],
                             "job-name": job["metadata"]["name"], "controller-uid": "0f1e"})
    pods["submitter"] = {"ns": NS, "labels": submitter_labels}
    for kind in ("Deployment", "StatefulSet"):
        for d in (d for d in load(MLFLOW_K8S) if d["kind"] == kind):
            labels = dict(d["spec"]["template"]["metadata"]["labels"])
            if kind == "StatefulSet":
                labels["statefulset.kubernetes.io/pod-name"] = f"{d['metadata']['name']}-0"
            pods[d["metadata"]["name"]] = {"ns": NS, "labels": labels, "template": d["spec"]["template"]}
    pods["kuberay-operator"] = {"ns": "kuberay-system", "labels": {"app.kubernetes.io/name": "kuberay-operator",
                                                                  "app.kubernetes.io/instance": "kuberay-operator"}}
    pods["stranger"] = {"ns": NS, "labels": {"app": "notebook"}}
    # our labels, but in another namespace: not one of our clusters
    pods["lookalike-elsewhere"] = {"ns": "other", "labels": dict(pods["raycluster-worker-gpu"]["labels"])}
    return pods


RAY_PODS = {"raycluster-head", "raycluster-worker-gpu", "rayjob-head", "rayjob-worker-gpu"}
HEADS = {"raycluster-head", "rayjob-head"}


# ------------------------------------------------------------------ NetworkPolicy semantics
def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector; {} selects everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values", [])
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def peer_admits(peer: dict[str, Any], source: dict[str, Any], policy_ns: str) -> bool:
    assert "ipBlock" not in peer, "the checker does not model ipBlock peers"
    if "namespaceSelector" in peer:
        ns_labels = {"kubernetes.io/metadata.name": source["ns"]}
        if not selects(peer["namespaceSelector"], ns_labels):
            return False
    elif source["ns"] != policy_ns:
        return False  # a podSelector alone means: in the policy's own namespace
    return selects(peer.get("podSelector"), source["labels"])


def rule_ports(rule: dict[str, Any]) -> list[tuple[int, int]]:
    """The TCP port intervals a rule opens (all of them when it names none)."""
    if not rule.get("ports"):
        return [(1, 65535)]
    out = []
    for p in rule["ports"]:
        assert isinstance(p["port"], int), "named ports: the checker compares numbers"
        if p.get("protocol", "TCP") == "TCP":
            out.append((p["port"], p.get("endPort", p["port"])))
    return out


def admitted(source: str, target: str, pols: dict[str, dict[str, Any]], pods: dict[str, dict[str, Any]]):
    """The port intervals on which pod `target` lets `source` in; None when no policy selects
    `target` (then it is open on every port)."""
    src, dst = pods[source], pods[target]
    applying = [p for p in pols.values() if dst["ns"] == NS and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
                and selects(p["spec"]["podSelector"], dst["labels"])]
    if not applying:
        return None
    return [iv for p in applying for rule in p["spec"].get("ingress", [])
            if any(peer_admits(peer, src, NS) for peer in rule.get("from", [])) for iv in rule_ports(rule)]


def covers(intervals: list[tuple[int, int]] | None, lo: int, hi: int) -> bool:
    """Do the intervals together contain every port from lo to hi?"""
    if intervals is None:
        return True
    reach = lo - 1
    for a, b in sorted(intervals):
        if a > reach + 1:
            break
        reach = max(reach, b)
    return reach >= hi


def allowed(source: str, target: str, port: int, pols: dict[str, dict[str, Any]] | None = None,
            pods: dict[str, dict[str, Any]] | None = None) -> bool:
    """Would a TCP connection from pod `source` to pod `target` on `port` be let in?"""
    pols, pods = pols if pols is not None else policies(), pods if pods is not None else all_pods()
    return covers(admitted(source, target, pols, pods), port, port)


def selected(policy: dict[str, Any], pods: dict[str, dict[str, Any]]) -> set[str]:
    return {name for name, pod in pods.items()
            if pod["ns"] == NS and selects(policy["spec"]["podSelector"], pod["labels"])}


# ------------------------------------------------------------------ Ray's ports
def ray_start_port_options() -> dict[str, str]:
    """Every option of the installed `ray start` that sets a port: option name -> flag name."""
    from ray.scripts.scripts import start

    return {p.name: p.opts[0].lstrip("-") for p in start.params
            if p.name.endswith("port") or p.name.endswith("ports") or "_port_" in p.name}


def pinned_ports(params: dict[str, str]) -> tuple[set[int], tuple[int, int]]:
    """The single ports a node with these rayStartParams listens on, and its worker port range."""
    single = {int(v) for k, v in params.items()
              if (k == "port" or k.endswith("-port")) and k not in ("min-worker-port", "max-worker-port")}
    return single, (int(params["min-worker-port"]), int(params["max-worker-port"]))


def container_ports(template: dict[str, Any]) -> set[int]:
    return {p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}


def uncovered_ray_ports(pols: dict[str, dict[str, Any]], pods: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(source, target, ports) where one Ray pod could not reach another on a Ray port."""
    gaps = []
    for target in sorted(RAY_PODS):
        single, (lo, hi) = pinned_ports(pods[target]["params"])
        # KubeRay adds a metrics containerPort (8080) to each Ray container when none is named
        single |= container_ports(pods[target]["template"]) | {8080}
        for source in sorted(RAY_PODS):
            ivs = admitted(source, target, pols, pods)
            gaps += [(source, target, str(p)) for p in sorted(single) if not covers(ivs, p, p)]
            if not covers(ivs, lo, hi):
                gaps.append((source, target, f"{lo}-{hi}"))
    return gaps


# ------------------------------------------------------------------ tests
def test_the_selector_checker_follows_kubernetes_rules():
    labels = {"a": "1", "b": "2"}
    assert selects({}, labels) and selects(None, {})
    assert selects({"matchLabels": {"a": "1"}}, labels) and not selects({"matchLabels": {"a": "2"}}, labels)
    assert selects({"matchExpressions": [{"key": "b", "operator": "In", "values": ["2", "3"]}]}, labels)
    assert not selects({"matchExpressions": [{"key": "c", "operator": "In", "values": ["2"]}]}, labels)
    assert selects({"matchExpressions": [{"key": "c", "operator": "DoesNotExist"}]}, labels)
    assert not selects({"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "NotIn",
                                                                         "values": ["2"]}]}, labels)
    assert rule_ports({}) == [(1, 65535)]
    udp_and_range = {"ports": [{"port": 80, "protocol": "UDP"}, {"port": 10002, "endPort": 19999}]}
    assert rule_ports(udp_and_range) == [(10002, 19999)]
    assert covers([(10002, 15000), (15001, 19999)], 10002, 19999) and covers(None, 1, 2)
    assert not covers([(10002, 15000), (15002, 19999)], 10002, 19999)  # 15001 missing
    assert not covers([(6379, 6379)], 6380, 6380)


def test_every_policy_selects_exactly_the_pods_it_is_for():
    pods, pols = all_pods(), policies()
    assert set(pols) == {"tune-prune-ray", "tune-prune-ray-jobs-api", "mlflow", "mlflow-postgres"}
    assert selected(pols["tune-prune-ray"], pods) == RAY_PODS
    assert selected(pols["tune-prune-ray-jobs-api"], pods) == HEADS
    assert selected(pols["mlflow"], pods) == {"mlflow"}
    assert selected(pols["mlflow-postgres"], pods) == {"mlflow-postgres"}
    for p in pols.values():
        assert p["spec"]["policyTypes"] == ["Ingress"]  # egress (DNS, image pulls) stays open
        assert "namespace" not in p["metadata"]  # applied with -n, like the other manifests


def test_every_ray_start_port_is_pinned_on_every_node_and_parses_as_ray_start_arguments():
    from ray.scripts.scripts import start

    options = {k: v for k, v in ray_start_port_options().items() if k not in NOT_A_LISTENING_PORT}
    assert {"port", "node_manager_port", "object_manager_port", "min_worker_port", "dashboard_agent_grpc_port",
            "runtime_env_agent_port", "metrics_export_port"} <= set(options)  # the list is Ray's own
    pods = all_pods()
    for name in sorted(RAY_PODS):
        params = pods[name]["params"]
        needed = set(options) if pods[name]["head"] else set(options) - HEAD_ONLY
        missing = sorted(options[k] for k in needed if options[k] not in params)
        assert not missing, f"{name}: ports left to Ray (random, so no policy can name them): {missing}"
        args = ["--head"] if pods[name]["head"] else ["--address=head:6379"]
        args += [f"--{k}={v}" for k, v in params.items() if k.endswith("port")]
        ctx = start.make_context("start", args)  # raises on an unknown flag or a non-integer port
        assert ctx.params["min_worker_port"] <= ctx.params["max_worker_port"]


def test_ray_pods_reach_each_other_on_every_ray_port():
    assert uncovered_ray_ports(policies(), all_pods()) == []


def test_nothing_but_ray_pods_reaches_the_ray_ports():
    pods, pols = all_pods(), policies()
    outsiders = ["mlflow", "mlflow-postgres", "stranger", "lookalike-elsewhere", "submitter", "kuberay-operator"]
    for target in sorted(RAY_PODS):
        single, (lo, hi) = pinned_ports(pods[target]["params"])
        for port in sorted(single | {lo, (lo + hi) // 2, hi}):
            for source in outsiders:
                if port == 8265 and target in HEADS and source in ("submitter", "kuberay-operator"):
                    continue
                assert not allowed(source, target, port, pols, pods), (source, target, port)
        # ports Ray does not use stay shut even between Ray pods (44217/44227: head metrics)
        for port in (22, 44217, 44227, 20000):
            assert not allowed("raycluster-head", target, port, pols, pods), (target, port)


def test_the_jobs_api_admits_the_submitter_and_the_kuberay_operator():
    pods = all_pods()
    for head in sorted(HEADS):
        assert allowed("submitter", head, 8265, pods=pods)
        assert allowed("kuberay-operator", head, 8265, pods=pods)
        assert not allowed("submitter", head, 6379, pods=pods)
    assert not allowed("submitter", "rayjob-worker-gpu", 8265, pods=pods)
    assert not allowed("stranger", "rayjob-head", 8265, pods=pods)


def _mlflow_container_port() -> int:
    """The port the trials' MLFLOW_TRACKING_URI leads to, through the Service, on the MLflow pod."""
    cluster = one(RAYCLUSTER, "RayCluster")["spec"]
    env = {e["name"]: e.get("value") for e in cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    uri = urlsplit(env["MLFLOW_TRACKING_URI"])
    service = one(MLFLOW_K8S, "Service", uri.hostname)
    (sp,) = [p for p in service["spec"]["ports"] if p["port"] == (uri.port or 80)]
    deployment = one(MLFLOW_K8S, "Deployment", uri.hostname)
    named = {p.get("name"): p["containerPort"] for c in deployment["spec"]["template"]["spec"]["containers"]
             for p in c.get("ports", [])}
    target = sp.get("targetPort", sp["port"])
    return named[target] if isinstance(target, str) else target


def test_mlflow_admits_only_the_ray_pods_on_its_port_and_postgres_only_mlflow():
    pods = all_pods()
    port = _mlflow_container_port()
    for source in sorted(RAY_PODS):
        assert allowed(source, "mlflow", port, pods=pods)
        assert not allowed(source, "mlflow-postgres", 5432, pods=pods)  # the trials never touch the database
    for source in ("submitter", "stranger", "lookalike-elsewhere", "kuberay-operator", "mlflow-postgres"):
        assert not allowed(source, "mlflow", port, pods=pods), source
    assert allowed("mlflow", "mlflow-postgres", 5432, pods=pods)
    assert not allowed("raycluster-head", "mlflow", port + 1, pods=pods)


@pytest.mark.parametrize("break_it,expect", [
    ("drop the raylet port", "gap"),
    ("narrow the worker range", "gap"),
    ("rename the worker component", "unselected"),
])
def test_the_checks_catch_a_broken_copy(break_it, expect):
    pols, pods = copy.deepcopy(policies()), all_pods()
    rule = pols["tune-prune-ray"]["spec"]["ingress"][0]
    if break_it == "drop the raylet port":
        rule["ports"] = [p for p in rule["ports"] if p["port"] != 6380]
    elif break_it == "narrow the worker range":
        (r,) = [p for p in rule["ports"] if "endPort" in p]
        r["endPort"] = 19000
    else:
        pods["raycluster-worker-gpu"]["labels"]["app.kubernetes.io/component"] = "ray-gpu-worker"
    if expect == "gap":
        assert uncovered_ray_ports(pols, pods)
    else:
        assert "raycluster-worker-gpu" not in selected(pols["tune-prune-ray"], pods)


def test_the_guide_applies_the_policy_before_the_ray_cluster():
    guide = (DEPLOY / "README.md").read_text()
    policy = guide.find("apply deploy/kuberay/networkpolicy.yaml")
    cluster = guide.find("apply deploy/kuberay/raycluster.yaml")
    assert 0 <= policy < cluster, "deploy/README.md must apply networkpolicy.yaml before raycluster.yaml"
