"""How tune_prune grows with the sweep: read-back time, per-trial overhead, driver memory.

Two parts, each printed as a table next to its goal (issue 13):

1. read-back: sweeps of 100, 500 and 2,000 trials written as synthetic child runs (the
   tags, params and metrics a real trial logs, written with the same MlflowClient
   batch calls and tracking.encode_events), then `tune-prune recommend` run on each as
   a user runs it (a fresh process: interpreter start, imports, read-back,
   recommendation), against the SQLite file directly, through a local `mlflow server`
   on that file, and through a local `mlflow server` on PostgreSQL where PostgreSQL is
   installed. Printed: recommend's wall time and peak memory (RSS), the in-process
   `load_records` time, and, up to --legacy-max trials, the previous read-back path
   (one get_metric_history per run and metric) for comparison.
   Goal: recommend on 2,000 trials through a tracking server in under 10 s.
2. overhead: a real sweep of --overhead-trials tiny trials (digits, a 32-unit MLP, one
   prune event with one fine-tuning epoch, speed measurement off) on local Ray and a
   SQLite store. Per trial it prints the trials' own compute (the loop's measured wall
   time: pruning, fine-tuning and evaluation), and the overhead beyond it: the trial
   phase's wall time times the trial slots (cores / cpu per trial), minus the compute,
   per trial; and the part of that spent inside the trials' MLflow runs (run start to
   end, minus compute). Goal: overhead at most 0.15 s per trial.

    python benchmarks/scale.py [--sizes 100 500 2000] [--backends sqlite server postgres]
        [--overhead-trials 500] [--skip-readback] [--skip-overhead] [--workdir DIR] [--smoke-test]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from tune_prune import tracking as tr
from tune_prune.spec import parse_spec

READBACK_GOAL_S = 10.0
OVERHEAD_GOAL_S = 0.15
BIN = Path(sys.executable).parent


# ------------------------------------------------------------------ synthetic sweeps

def _grid_spec(n_trials: int, name: str):
    """A quickstart-like spec with enough seeds for n_trials trials."""
    raw = {
        "name": name,
        "dataset": {"name": "digits", "val_size": 0.2},
        "model": {"name": "mlp", "hidden": [128, 64]},
        "pretrain": {"epochs": 40, "lr": 0.05, "batch_size": 64},
        "finetune": {"lr": 0.01, "batch_size": 64},
        "budget": {"epochs": 30, "policy": "carry_over"},
        "target_sparsities": [0.5, 0.7, 0.8, 0.9, 0.95, 0.98],
        "seeds": list(range(n_trials // 20 + 1)),
        "strategies": {"one_shot": {"patience": [3, 10]}, "constant": {"step": 0.1, "patience": 3},
                       "geometric": {"rate0": 0.2, "patience": 3},
                       "hybrid": {"first_fraction": 0.7, "rate0": 0.1, "first_patience": 10, "patience": 2}},
    }
    return parse_spec(raw)


def write_synthetic_sweep(uri: str, n_trials: int, name: str, threads: int = 1) -> tuple[str, str, float]:
    """A finished sweep of n_trials child runs as trials would log them; (experiment id, parent id, seconds)."""
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.perf_counter()
    spec = _grid_spec(n_trials, name)
    trials = spec.trials()[:n_trials]
    sweep = tr.SweepTracker(uri, name)
    parent = sweep.start_parent(spec, f"{name}-run", len(trials), smoke_test=False)
    rng = random.Random(0)
    plans = [(t, rng.random()) for t in trials]

    def one(item) -> None:
        trial, noise = item
        client = MlflowClient(uri)
        ts = tr._now_ms()
        run = client.create_run(sweep.experiment_id, run_name=trial.name, tags={
            tr.PARENT_TAG: parent, tr.TAG_KIND: "dense" if trial.is_dense else "trial",
            tr.TAG_TRIAL_KEY: trial.key, tr.TAG_STRATEGY: trial.schedule, tr.TAG_CONFIG_KEY: trial.config_key,
            "tune_prune.config": trial.config_label()})
        sparsities = trial.sparsities or (0.0,)
        metrics, events, epoch = [], {}, 0
        for i, s in enumerate(sparsities, start=0 if trial.is_dense else 1):
            epoch += 0 if trial.is_dense else 3
            values = {"sparsity": s, "val_accuracy": 0.97 - 0.3 * s ** 4 + 0.01 * noise,
                      "test_accuracy": 0.96 - 0.3 * s ** 4 + 0.01 * noise, "cost_epochs": float(epoch),
                      "wall_seconds": 0.4 * epoch, "accelerator_seconds": 0.4 * epoch}
            if not trial.is_dense:
                values.update(param_sparsity=s, patience_cut=0.0)
                for e in range(epoch - 2, epoch + 1):
                    metrics += [Metric(f"epoch_{k}", 0.5, ts, e) for k in ("train_loss", "val_accuracy", "val_loss")]
            events[i] = values
            metrics += [Metric(k, float(v), ts, i) for k, v in values.items()]
        metrics += [Metric(k, float(v), ts, 0) for k, v in {"total_cost_epochs": epoch,
                                                             "total_wall_seconds": 0.4 * epoch}.items()]
        client.log_batch(run.info.run_id, params=tr._params(tr.trial_params(trial)), metrics=metrics[:900])
        if len(metrics) > 900:
            client.log_batch(run.info.run_id, metrics=metrics[900:])
        record = {"run_id": run.info.run_id, "status": "FINISHED", "trial_name": trial.name,
                  "strategy": trial.schedule, "config_key": trial.config_key, "config": trial.config_label(),
                  "target_sparsity": float(trial.target), "seed": int(trial.seed), "events": events, "speed": {}}
        # the trial's last record write, as TrialTracker.finish makes it (one per event before it)
        client.log_batch(parent, tags=[RunTag(k, v) for k, v in tr.encode_record(trial.key, record).items()])
        client.set_terminated(run.info.run_id, "FINISHED")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, plans))
    sweep.end("FINISHED")
    return sweep.experiment_id, parent, time.perf_counter() - t0


def legacy_load_seconds(uri: str, experiment_id: str, parent: str) -> float:
    """The previous read-back: the child runs, then one get_metric_history per run and event metric."""
    t0 = time.perf_counter()
    tr._records_from_histories(uri, experiment_id, parent)
    return time.perf_counter() - t0


def recommend_process(uri: str, experiment: str) -> tuple[float, float, float]:
    """`tune-prune recommend` in a fresh process: (wall seconds, peak RSS MiB, its CPU seconds)."""
    code = ("import resource, sys\nfrom tune_prune.cli import main\nrc = main(sys.argv[1:])\n"
            "u = resource.getrusage(resource.RUSAGE_SELF)\n"
            "print('MAXRSS_KB', u.ru_maxrss, u.ru_utime + u.ru_stime)\nsys.exit(rc)")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, "recommend", "--experiment", experiment, "--sparsity", "0.9",
                        "--tracking-uri", uri], capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"recommend failed ({p.returncode}): {p.stderr[-2000:]}")
    _, rss, cpu = next(line.split() for line in p.stdout.splitlines() if line.startswith("MAXRSS_KB"))
    return wall, int(rss) / 1024, float(cpu)


def import_seconds() -> tuple[float, float]:
    """Wall and CPU seconds of a fresh process that only imports the CLI: recommend's floor."""
    code = ("import resource, time\nt = time.perf_counter()\nimport tune_prune.cli\n"
            "u = resource.getrusage(resource.RUSAGE_SELF)\nprint(time.perf_counter() - t, u.ru_utime + u.ru_stime)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    wall, cpu = p.stdout.split()
    return float(wall), float(cpu)


# ------------------------------------------------------------------ servers

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(backend: str, work: Path):
    """`mlflow server` on 127.0.0.1 (job runner off), yields its URI; stopped afterwards."""
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(work / f"server-{port}.log", "w")
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", backend, "--artifacts-destination",
                             (work / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "2"], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"mlflow server did not start; see {log.name}")
                time.sleep(0.5)
        yield uri
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=60)
        log.close()


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def postgres():
    """A private PostgreSQL cluster on 127.0.0.1; yields a SQLAlchemy URI, or None when not installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found or (os.geteuid() == 0 and not shutil.which("runuser")):
        yield None
        return
    pg = found[-1].parent
    tmp = Path(tempfile.mkdtemp(prefix="tune_prune_scale_pg_"))
    data, sock = tmp / "data", tmp / "sock"
    for d in (data, sock):
        d.mkdir()
    if os.geteuid() == 0:
        for d in (tmp, data, sock):
            shutil.chown(d, "postgres", "postgres")
    port, password = _free_port(), secrets.token_hex(12)
    run = lambda cmd: subprocess.run(_as_postgres(cmd), check=True, capture_output=True, timeout=120)  # noqa: E731
    try:
        run([str(pg / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"])
        run([str(pg / "pg_ctl"), "-D", str(data), "-l", str(tmp / "pg.log"), "-w", "-o",
             f"-p {port} -k {sock} -c listen_addresses=127.0.0.1", "start"])
        run(["psql", "-h", str(sock), "-p", str(port), "-U", "postgres", "-v", "ON_ERROR_STOP=1",
             "-c", f"CREATE ROLE mlflow LOGIN PASSWORD '{password}'", "-c", "CREATE DATABASE mlflow OWNER mlflow"])
        yield f"postgresql+psycopg://mlflow:{password}@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(_as_postgres([str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
                       capture_output=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------ part 1: read-back

def readback(sizes: list[int], backends: list[str], work: Path, legacy_max: int) -> list[dict]:
    rows: list[dict] = []

    def measure(label: str, direct: str, read_uri: str, built: dict[int, tuple[str, str]]) -> None:
        for n in sizes:
            exp_id, parent = built[n]
            t0 = time.perf_counter()
            records = tr.load_records(read_uri, exp_id, parent)
            load_s = time.perf_counter() - t0
            assert records["trial_key"].nunique() == n, (label, n, records["trial_key"].nunique())
            wall, rss, cpu = recommend_process(read_uri, f"scale-{n}")
            legacy = legacy_load_seconds(read_uri, exp_id, parent) if n <= legacy_max else None
            rows.append({"store": label, "trials": n, "rows": len(records), "load_s": load_s, "recommend_s": wall,
                         "cpu_s": cpu, "rss_mib": rss, "legacy_s": legacy})
            print(f"  {label:<22} {n:>5} trials: load_records {load_s:6.2f}s, recommend {wall:6.2f}s "
                  f"({cpu:.1f} CPU s, {rss:.0f} MiB)" + (f", previous path {legacy:6.2f}s" if legacy is not None else ""), flush=True)

    def build(uri: str, threads: int) -> dict[int, tuple[str, str]]:
        built = {}
        for n in sizes:
            exp_id, parent, secs = write_synthetic_sweep(uri, n, f"scale-{n}", threads)
            print(f"  wrote {n} synthetic trials in {secs:.0f}s", flush=True)
            built[n] = (exp_id, parent)
        return built

    if {"sqlite", "server"} & set(backends):
        db = work / "scale.db"
        uri = f"sqlite:///{db}"
        built = build(uri, 1)
        if "sqlite" in backends:
            measure("sqlite file", uri, uri, built)
        if "server" in backends:
            with mlflow_server(uri, work) as http:
                measure("server on sqlite", uri, http, built)
    if "postgres" in backends:
        with postgres() as pg:
            if pg is None:
                print("  PostgreSQL not installed: skipped", flush=True)
            else:
                built = build(pg, 4)
                with mlflow_server(pg, work) as http:
                    measure("server on postgresql", pg, http, built)
    return rows


# ------------------------------------------------------------------ part 2: overhead

def overhead(n_trials: int, work: Path, cores: int, log_models: bool = True) -> dict:
    """A real sweep of n_trials tiny trials; the per-trial figures. ``log_models``: the spec's
    tracking.log_models (each trial's final model as an MLflow logged model)."""
    from tune_prune.sweep import run_sweep

    work.mkdir(parents=True, exist_ok=True)
    n_targets = max(1, n_trials // 2)
    targets = [round(0.3 + 0.65 * i / max(1, n_targets - 1), 4) for i in range(n_targets)]
    raw = {
        "name": "scale-overhead",
        "dataset": {"name": "digits", "val_size": 0.2},
        "model": {"name": "mlp", "hidden": [32]},
        "pretrain": {"epochs": 2, "lr": 0.05, "batch_size": 64},
        "finetune": {"lr": 0.01, "batch_size": 128},
        "budget": {"epochs": 1},
        "target_sparsities": sorted(set(targets)),
        "seeds": [0, 1],
        "strategies": {"one_shot": {"patience": None, "epochs_per_event": 1}},
        "resources": {"cpu": 1},
        "speed": {"enabled": False},
        "tracking": {"log_models": log_models},
        "cache_dir": str(work / "cache"),
        "storage_path": str(work / "ray"),
    }
    spec = parse_spec(raw)
    uri = f"sqlite:///{work / ('overhead.db' if log_models else 'overhead_nomodels.db')}"
    log = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        outcome = run_sweep(spec, tracking_uri=uri, out=log)
    sweep_wall = time.perf_counter() - t0
    if outcome.failed:
        raise SystemExit(f"overhead sweep: trials failed: {outcome.failed}")
    client = MlflowClient(uri)
    runs = tr.child_runs(uri, client.get_experiment_by_name(spec.name).experiment_id, outcome.parent_run_id)
    pruned = [r for r in runs if r.data.tags.get(tr.TAG_KIND) == "trial"]
    compute = sum(r.data.metrics.get("total_wall_seconds", 0.0) for r in pruned)
    start = min(r.info.start_time for r in runs) / 1000
    end = max(r.info.end_time for r in runs) / 1000
    in_run = sum((r.info.end_time - r.info.start_time) / 1000 for r in runs)
    slots = max(1, int(cores // spec.resources.cpu))
    n = len(runs)
    return {"log_models": log_models, "trials": n, "slots": slots, "sweep_wall_s": sweep_wall, "phase_s": end - start,
            "compute_per_trial_s": compute / n, "overhead_per_trial_s": ((end - start) * slots - compute) / n,
            "in_run_overhead_per_trial_s": (in_run - compute) / n}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 2000])
    p.add_argument("--backends", nargs="+", default=["sqlite", "server", "postgres"],
                   choices=["sqlite", "server", "postgres"])
    p.add_argument("--legacy-max", type=int, default=100, help="largest sweep also read the previous way")
    p.add_argument("--overhead-trials", type=int, default=500)
    p.add_argument("--skip-readback", action="store_true")
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--log-models", choices=["on", "off", "both"], default="both",
                   help="overhead sweeps with tracking.log_models on, off, or one of each")
    p.add_argument("--workdir")
    p.add_argument("--smoke-test", action="store_true", help="20 and 50 trials, sqlite only, 20 tiny trials")
    args = p.parse_args(argv)
    if args.smoke_test:
        args.sizes, args.backends, args.overhead_trials, args.legacy_max = [20, 50], ["sqlite"], 20, 20
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tune_prune_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    print(f"work directory {work}; {cores} cores")
    if not args.skip_readback:
        print("read-back (synthetic sweeps):")
        rows = readback(args.sizes, args.backends, work, args.legacy_max)
        floor, floor_cpu = import_seconds()
        load = os.getloadavg()[0]
        print(f"\nimporting the CLI alone: {floor:.2f} s wall, {floor_cpu:.2f} CPU s; load average now {load:.1f}")
        print(f"\n| store | trials | rows | load_records | recommend (fresh process) | its CPU time | recommend peak RSS "
              f"| previous read-back | goal |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in rows:
            goal = (f"< {READBACK_GOAL_S:g} s: {'met' if r['recommend_s'] < READBACK_GOAL_S else 'NOT met'}"
                    if r["trials"] >= 2000 and "server" in r["store"] else "")
            legacy = f"{r['legacy_s']:.2f} s" if r["legacy_s"] is not None else "-"
            print(f"| {r['store']} | {r['trials']} | {r['rows']} | {r['load_s']:.2f} s | {r['recommend_s']:.2f} s "
                  f"| {r['cpu_s']:.1f} s | {r['rss_mib']:.0f} MiB | {legacy} | {goal} |")
    if not args.skip_overhead:
        print(f"\nper-trial overhead: a real sweep of {args.overhead_trials} tiny trials (local Ray, SQLite) ...",
              flush=True)
        modes = {"on": [True], "off": [False], "both": [True, False]}[args.log_models]
        results = [overhead(args.overhead_trials, work / f"models_{m}", cores, m) for m in modes]
        print(f"\nload average now {os.getloadavg()[0]:.1f}")
        print("\n| logged models | trials | trial slots | sweep wall | trial phase | compute / trial | overhead / trial "
              "| of which inside the MLflow run | goal |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for o in results:
            ok = "met" if o["overhead_per_trial_s"] <= OVERHEAD_GOAL_S else "NOT met"
            print(f"| {'yes' if o['log_models'] else 'no'} | {o['trials']} | {o['slots']} | {o['sweep_wall_s']:.0f} s "
                  f"| {o['phase_s']:.0f} s | {o['compute_per_trial_s']:.3f} s | {o['overhead_per_trial_s']:.3f} s "
                  f"| {o['in_run_overhead_per_trial_s']:.3f} s | <= {OVERHEAD_GOAL_S} s: {ok} |")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
