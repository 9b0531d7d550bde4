"""Small real workloads shared by the fault and cluster tests, and a Ray head of their own."""

import copy
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


def slow_digits(name: str, **changes) -> dict:
    """A digits sweep whose trials last a few seconds: small batches, a few epochs per event,
    so that a kill can land in the middle of fine-tuning."""
    spec = {
        "name": name,
        "dataset": {"name": "digits", "val_size": 0.2},
        "model": {"name": "mlp", "hidden": [256, 256]},
        "pretrain": {"epochs": 3, "lr": 0.05, "batch_size": 64},
        "finetune": {"lr": 0.01, "batch_size": 8},
        "budget": {"epochs": 12, "policy": "even"},
        "target_sparsities": [0.8, 0.9],
        "seeds": [0],
        "strategies": {"geometric": {"rate0": [0.4, 0.5], "patience": None, "epochs_per_event": 2}},
    }
    spec.update(copy.deepcopy(changes))
    return spec


@contextmanager
def driver(args: list[str], cwd: Path, env: dict | None = None):
    """`python -m tune_prune ARGS` in its own session, logging to cwd/driver.log.

    Yields the process; a test kills it with os.killpg(proc.pid, SIGKILL). Whatever
    happens, the whole process group is gone afterwards.
    """
    log = open(cwd / "driver.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "tune_prune", *args], cwd=cwd, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        log.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def loopback_head(cwd: Path, num_cpus: int = 1):
    """A one-node Ray cluster with its dashboard and Jobs API, all on 127.0.0.1, that only its
    caller stops. Yields (GCS address, dashboard URL).

    `--node-ip-address=127.0.0.1` alone is not enough: Ray 2.60 replaces a loopback address
    with the machine's and listens on every interface unless told that this machine runs
    no multi-node cluster (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which a head accepts; a
    second node would then refuse to join). `ray stop` would stop every Ray on the
    machine, other tests' too: this head runs with --block in its own session, and
    terminating that process stops its node. Its ports are its own, also those Ray fixes
    by default (the agent's 52365, the client server's 10001), which another Ray here may hold.
    """
    port, dash, agent, client = (_free_port() for _ in range(4))
    bin_dir = Path(sys.executable).parent
    # a job's `python` must be this environment's, as it is in the cluster image
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    log_path = cwd / "ray-head.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [str(bin_dir / "ray"), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         f"--num-cpus={num_cpus}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
         "--disable-usage-stats"], cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.time() + 180
        while "Ray runtime started" not in log_path.read_text() or not _accepts(dash):
            assert proc.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        started = re.sub(r"\x1b\[[0-9;]*m", "", log_path.read_text())  # without colours
        assert "Local node IP: 127.0.0.1" in started, started[-3000:]
        yield f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()
        # `ray start` recorded this head as the machine's current cluster; a bare ray.init()
        # elsewhere would try to join it after it is gone
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink(missing_ok=True)


def resume_here(cwd: Path, capfd):
    """`tune-prune resume` of the one sweep under cwd/tune_prune_runs, run from cwd as a user
    would: (its sweep directory, the exit code, what it printed)."""
    import os

    from tune_prune.cli import main

    (sweep_dir,) = [p.parent for p in (cwd / "tune_prune_runs").glob("*/tune_prune_sweep.json")]
    capfd.readouterr()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        code = main(["resume", str(sweep_dir)])
    finally:
        os.chdir(old)
    return sweep_dir, code, capfd.readouterr()

