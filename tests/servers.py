"""Real servers for integration tests, all on 127.0.0.1: PostgreSQL, an MLflow tracking
server on it, and a two-node Ray cluster. Each helper skips the test with a reason when
the machine lacks what it needs, and fails it under CI=true (conftest.need)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from conftest import need

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    need(found, "PostgreSQL server binaries not installed (apt-get install postgresql)")
    return found[-1].parent


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root
    if os.geteuid() == 0:
        need(shutil.which("runuser"), "running as root without runuser: cannot start PostgreSQL")
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@contextmanager
def postgres():
    """A private PostgreSQL cluster; yields (SQLAlchemy URI, generated password).

    Its files live in a directory of their own: pytest's temp dirs are private to
    root and the server runs as the postgres user.
    """
    import tempfile

    pg = _pg_bin()
    tmp = Path(tempfile.mkdtemp(prefix="tune_prune_pg_"))
    data, sock = tmp / "pgdata", tmp / "pgsock"
    for d in (data, sock):
        d.mkdir()
    if os.geteuid() == 0:
        for d in (tmp, data, sock):
            shutil.chown(d, "postgres", "postgres")
    port = free_port()
    subprocess.run(_as_postgres([str(pg / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]),
                   check=True, capture_output=True, timeout=120)
    subprocess.run(_as_postgres([str(pg / "pg_ctl"), "-D", str(data), "-l", str(tmp / "pg.log"), "-w", "-o",
                                 f"-p {port} -k {sock} -c listen_addresses=127.0.0.1", "start"]),
                   check=True, capture_output=True, timeout=120)
    password = secrets.token_hex(12)
    try:
        # separate -c: CREATE DATABASE cannot run inside the transaction one -c makes
        subprocess.run(_as_postgres(["psql", "-h", str(sock), "-p", str(port), "-U", "postgres", "-v",
                                     "ON_ERROR_STOP=1", "-c", f"CREATE ROLE mlflow LOGIN PASSWORD '{password}'",
                                     "-c", "CREATE DATABASE mlflow OWNER mlflow"]),
                       check=True, capture_output=True, timeout=60)
        yield f"postgresql+psycopg://mlflow:{password}@127.0.0.1:{port}/mlflow", password
    finally:
        subprocess.run(_as_postgres([str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
                       capture_output=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with proxied artifacts; can be stopped and started again."""

    def __init__(self, backend_uri: str, artifacts: Path, log: Path) -> None:
        self.backend_uri, self.artifacts, self.log = backend_uri, artifacts, log
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", self.backend_uri,
             "--artifacts-destination", self.artifacts.as_uri(), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "2"],
            stdout=open(self.log, "a"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"mlflow server did not answer /health within {timeout}s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(timeout=60)
        self.proc = None


@contextmanager
def ray_two_nodes(tmp: Path):
    """A head and a worker node on 127.0.0.1, one CPU each; yields the GCS address."""
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    ray = str(BIN / "ray")
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    try:
        subprocess.run([ray, "start", "--head", f"--port={port}", "--dashboard-host=127.0.0.1", *common],
                       check=True, capture_output=True, env=env, timeout=180)
        subprocess.run([ray, "start", f"--address=127.0.0.1:{port}", *common],
                       check=True, capture_output=True, env=env, timeout=180)
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=env, timeout=180)
