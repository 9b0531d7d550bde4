"""A local sweep's Ray stays on loopback: it advertises 127.0.0.1 and every Ray process it
starts listens on 127.0.0.1 only, measured from the sockets the processes really hold."""

import ipaddress

import pytest
import ray  # first: Ray puts its own copy of psutil on the path
import psutil  # noqa: E402

pytestmark = pytest.mark.integration


def _is_loopback(host: str) -> bool:
    ip = ipaddress.ip_address(host.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # an IPv6 socket bound to ::ffff:127.0.0.1 takes IPv4 loopback only
    return ip.is_loopback


def _listening(pids: set[int]) -> list[tuple[int, str, str, int]]:
    """(pid, process name, host, port) of every listening TCP socket of these processes."""
    found = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            name = proc.name()
            conns = proc.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue  # a worker that exited meanwhile holds no socket
        found += [(pid, name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return found


def test_is_loopback_reads_the_addresses_ss_shows():
    assert _is_loopback("127.0.0.1") and _is_loopback("::ffff:127.0.0.1") and _is_loopback("::1")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("::") and not _is_loopback("192.0.2.2")


def test_local_ray_advertises_and_listens_on_loopback_only():
    from ray._private import ray_constants

    from tune_prune.sweep import start_local_ray

    clusters_on = ray_constants.ENABLE_RAY_CLUSTER
    start_local_ray(num_cpus=1)
    try:
        @ray.remote(num_cpus=1)
        def where() -> str:
            return ray.util.get_node_ip_address()

        # a task, so that a worker process and its gRPC server exist too
        assert ray.get(where.remote()) == "127.0.0.1"
        nodes = [n for n in ray.nodes() if n["Alive"]]
        assert [n["NodeManagerAddress"] for n in nodes] == ["127.0.0.1"]
        gcs_host, gcs_port = ray.get_runtime_context().gcs_address.rsplit(":", 1)
        assert gcs_host == "127.0.0.1"

        # Every process Ray started descends from this driver (GCS, raylet, dashboard
        # process, agents, workers), and the driver holds the core worker's own server.
        me = psutil.Process()
        pids = {me.pid} | {p.pid for p in me.children(recursive=True)}
        sockets = _listening(pids)
        exposed = [s for s in sockets if not _is_loopback(s[2])]
        assert exposed == [], f"Ray sockets reachable from other machines: {exposed}"
        ports = {s[3] for s in sockets}
        # the measurement saw the servers that matter, not an empty list
        node = nodes[0]
        assert {int(gcs_port), node["NodeManagerPort"], node["ObjectManagerPort"]} <= ports
        assert any(name.startswith("ray::") for _, name, _, _ in sockets)  # agents and workers too
    finally:
        ray.shutdown()
    assert ray_constants.ENABLE_RAY_CLUSTER == clusters_on  # joining clusters later still works


def test_a_sweep_joins_a_cluster_kept_on_loopback(tmp_path):
    """`--address 127.0.0.1:PORT` reaches a cluster whose nodes listen on loopback only (Ray
    would otherwise swap 127.0.0.1 for the machine's address, where nothing listens)."""
    from ray._private import ray_constants

    from tune_prune.sweep import join_ray
    from workloads import loopback_head

    clusters_on = ray_constants.ENABLE_RAY_CLUSTER
    with loopback_head(tmp_path) as (gcs_address, _):
        join_ray(gcs_address)
        try:
            @ray.remote(num_cpus=1)
            def where() -> str:
                return ray.util.get_node_ip_address()

            assert ray.get(where.remote()) == "127.0.0.1"
            assert [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]] == ["127.0.0.1"]
        finally:
            ray.shutdown()
    assert ray_constants.ENABLE_RAY_CLUSTER == clusters_on
