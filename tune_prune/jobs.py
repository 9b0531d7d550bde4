"""Submit a sweep to a Ray cluster as a Ray Job; follow its status and logs.

The job runs `python -m tune_prune sweep SPEC --address auto` on the cluster's head
node, with the spec's directory uploaded as the job's working directory. Everything
the sweep must keep (MLflow store, Ray storage, dense cache) therefore has to live
outside that temporary directory: a tracking server (or an absolute SQLite path on
shared storage) and absolute --storage-path / --cache-dir.

Ray 2.60 turns token authentication on: when a token is available (RAY_AUTH_TOKEN,
or ~/.ray/auth_token written by `ray start`), RAY_AUTH_MODE=token is set for the
client so that the Jobs API requests carry it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

from tune_prune.spec import SpecError, load_spec

UPLOAD_EXCLUDES = [".venv", ".git", "*.db", "mlruns", "mlartifacts", "tune_prune_runs", ".tune_prune_cache",
                   "__pycache__", "*.pt"]


def _token_auth() -> None:
    if "RAY_AUTH_MODE" in os.environ:
        return
    if os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def client(address: str):
    """A JobSubmissionClient for the cluster's dashboard address (http://HEAD:8265)."""
    _token_auth()
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def _absolute(value: str | None, flag: str) -> str:
    if not value:
        raise SpecError(flag, "is required for a submitted sweep: the job's working directory is temporary, "
                        "so results must go to shared storage (an absolute path every node can reach)")
    if not Path(value).is_absolute() and "://" not in value:
        raise SpecError(flag, f"must be an absolute path or a URI, got {value!r}")
    return value


def submit(spec_path: str | Path, *, address: str, tracking_uri: str | None, storage_path: str | None,
           cache_dir: str | None = None, smoke_test: bool = False, experiment: str | None = None) -> str:
    """Validate the spec here, then submit it; return the job's submission id."""
    from tune_prune.tracking import check_no_credentials

    spec_path = Path(spec_path)
    spec = load_spec(spec_path, smoke_test=smoke_test)  # bad input never reaches the cluster
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise SpecError("--tracking-uri", "is required for a submitted sweep: a tracking server the cluster can "
                        "reach (http://...), or an absolute sqlite:////shared/... path")
    check_no_credentials(uri)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        raise SpecError("--tracking-uri", "a relative SQLite path would live in the job's temporary working "
                        "directory; use a tracking server or sqlite:////absolute/path")
    storage = _absolute(storage_path, "--storage-path")
    cache = _absolute(cache_dir or str(Path(storage) / "cache"), "--cache-dir")
    args = ["python", "-m", "tune_prune", "sweep", spec_path.name, "--address", "auto",
            "--tracking-uri", uri, "--storage-path", storage, "--cache-dir", cache]
    if smoke_test:
        args.append("--smoke-test")
    if experiment:
        args += ["--experiment", experiment]
    env = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_TRACKING_") and k != "MLFLOW_TRACKING_URI"}
    submission_id = f"tune-prune-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return client(address).submit_job(
        entrypoint=" ".join(_quote(a) for a in args),
        submission_id=submission_id,
        runtime_env={"working_dir": str(spec_path.resolve().parent), "excludes": UPLOAD_EXCLUDES,
                     # credentials travel as env vars of the job, never in its command line or params
                     "env_vars": env},
        metadata={"tune_prune.spec": spec.name},
    )


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def status(job_id: str, address: str) -> dict[str, str]:
    info = client(address).get_job_info(job_id)
    return {"job": job_id, "status": str(info.status.value if hasattr(info.status, "value") else info.status),
            "message": info.message or "", "entrypoint": info.entrypoint or ""}


def logs(job_id: str, address: str, follow: bool = False) -> Iterator[str]:
    """The job's log: all of it now, or (follow) chunks as they come until the job ends."""
    c = client(address)
    if not follow:
        yield c.get_job_logs(job_id)
        return
    import asyncio

    tail = c.tail_job_logs(job_id)
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(tail.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.close()
