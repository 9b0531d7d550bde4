"""Everything MLflow: the sweep's parent run, one nested child run per trial, reading back.

This is the only module that imports mlflow. Runs are addressed through an explicit
``MlflowClient`` (no process-global active run), so the same code works in the driver
and inside Ray workers.

Layout in MLflow:
- experiment = the sweep's name (or ``--experiment``);
- parent run per sweep invocation: sweep params, the resolved spec (artifact),
  pretraining cost per dense model, the frontier table (CSV and MLflow table) and
  plot (PNG), and the answer in the run's description (MLflow's run note);
- child run per trial, tagged with its deterministic trial key: params (schedule,
  full cumulative sparsity list, target, patience, seed, budget, ...), per-event
  metrics at step = event index (1-based; 0 for the dense baseline) and per-epoch
  ``epoch_*`` metrics at step = global fine-tuning epoch; the data it used as an
  MLflow dataset input and its final pruned model as an MLflow logged model;
- on the experiment: a shared view of the runs table (grouped by strategy, a
  sparsity-accuracy scatter), opened by the address :func:`browse_url` gives.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelOutput, Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from tune_prune.loop import EpochRecord, Evaluation, EventRecord, PretrainResult
from tune_prune.metrics import ACCURACY, METRICS, for_task
from tune_prune.metrics import Metric as TaskMetric
from tune_prune.spec import SweepSpec, TrialSpec

DEFAULT_DB = "mlflow.db"
TAG_KIND = "tune_prune.kind"
TAG_TRIAL_KEY = "tune_prune.trial_key"
TAG_STRATEGY = "tune_prune.strategy"
TAG_CONFIG_KEY = "tune_prune.config_key"
PARENT_TAG = "mlflow.parentRunId"
#: Child-run statuses whose events are frontier points: finished trials, and trials a
#: scheduler stopped early (their completed events are real models at real costs).
USABLE_STATUSES = ("FINISHED", "KILLED")
#: artifact of every finished pruned trial: where the pruning fell, layer by layer
LAYER_SPARSITY = "layer_sparsity.json"
#: on the parent run: which events count as frontier points (frontier.FRONTIER_RULES)
TAG_FRONTIER_RULE = "tune_prune.frontier_rule"
#: MLflow's run description: markdown, shown on the run's Overview page
NOTE_TAG = "mlflow.note.content"
#: MLflow truncates run tag values beyond this many characters
MAX_NOTE_CHARS = 8000
#: the parent run's frontier as an MLflow table (log_table's JSON format)
FRONTIER_TABLE = "frontier_table.json"
#: experiment tag holding the runs-table view that browse_url opens (MLflow 3's shared view state:
#: the UI reads `mlflow.sharedViewState.<key>` when the URL carries `viewStateShareKey=<key>`)
VIEW_KEY = "tune_prune"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
#: MLflow 3.17's UI picks GenAI or training pages from this browser-side switch (its local
#: storage, overridden by this URL parameter), not from the experiment's kind tag
WORKFLOW_QUERY = "workflowType=machine_learning"
#: short names for the runs table's "Group by" and the charts (the namespaced tags stay)
TAG_STRATEGY_SHORT = "strategy"
#: the colour MLflow's UI draws a run in (tag read by its tables and charts): one per strategy,
#: the same as the frontier plot's (report.COLORS, matplotlib's tab10)
TAG_RUN_COLOR = "mlflow.runColor"
STRATEGY_COLORS = {"one_shot": "#1f77b4", "constant": "#ff7f0e", "geometric": "#2ca02c", "hybrid": "#d62728",
                   "dense": "#000000"}
OTHER_COLOR = "#7f7f7f"
#: Read-back records. Besides its own child run, each trial keeps one record on the sweep's
#: parent run: its status, identity and per-event EVENT_METRICS (and SPEED_METRICS), as JSON
#: in tags named TAG_RECORD + trial key, rewritten at every event and when the trial ends.
#: Reading a sweep back is then one get_run of the parent, whatever the number of trials
#: (the child runs' metric histories stay what the MLflow UI charts). A record is
#: "v1:<chunks>" in TAG_RECORD<key>, its JSON split over TAG_RECORD<key>.0 .. .<chunks-1>:
#: MLflow silently truncates a tag value beyond 8,000 characters.
TAG_RECORD = "tune_prune.record."
#: on a parent run whose trials all keep records; sweeps without it are read from histories
TAG_RECORDS_FORMAT = "tune_prune.records"
RECORD_CHUNK_CHARS = 7900

EVENT_METRICS = ("sparsity", "val_accuracy", "test_accuracy", "cost_epochs", "wall_seconds", "accelerator_seconds",
                 "param_sparsity", "mac_sparsity", "patience_cut", "val_perplexity", "test_perplexity")
#: the task of a sweep (its parent run); absent: classification (sweeps from before tasks existed)
TAG_TASK = "tune_prune.task"
#: measured once per trial, on its final model (tune_prune.speed); NaN where not measured
SPEED_METRICS = ("latency_ms", "dense_latency_ms", "latency_speedup", "throughput", "dense_throughput",
                 "throughput_speedup", "csr_latency_speedup", "csr_throughput_speedup")
MAX_PARAM_CHARS = 6000
#: the final event's metrics that are also recorded on the trial's logged model
MODEL_METRICS = ("sparsity", "val_accuracy", "test_accuracy", "val_perplexity", "test_perplexity", "cost_epochs",
                 "param_sparsity", "mac_sparsity")


class CredentialsInUriError(ValueError):
    """A tracking URI carries a user name or password."""


def check_no_credentials(uri: str, source: str = "--tracking-uri") -> None:
    """Refuse URIs with user:password@: they would land in logs, Ray's trial configs and on disk."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.username or parts.password:
        raise CredentialsInUriError(
            f"{source}: the URI carries credentials; remove them and set MLFLOW_TRACKING_USERNAME / "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment instead, so they never "
            "reach logs, Ray's experiment state or MLflow params")


def resolve_tracking_uri(uri: str | None = None, cwd: str | Path | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else a SQLite file in the working directory.

    Relative SQLite paths are made absolute: Ray trials run in other directories.
    A URI with credentials in it is refused (CredentialsInUriError).
    """
    source = "--tracking-uri" if uri else "MLFLOW_TRACKING_URI"
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"
    check_no_credentials(uri, source)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rel = uri[len("sqlite:///"):]
        uri = f"sqlite:///{(Path(cwd or os.getcwd()) / rel).resolve()}"
    elif "://" not in uri:  # a bare path: a SQLite file
        uri = f"sqlite:///{(Path(cwd or os.getcwd()) / uri).resolve()}"
    return uri


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Every SQLite connection this process opens: write-ahead log, sync at checkpoints only.

    MLflow commits each call in its own transaction; in SQLite's default rollback-journal
    mode every commit waits for fsync (tens of ms here) and holds out readers. With WAL,
    readers and the one writer proceed together, and synchronous=NORMAL drops the per-commit
    fsync while staying safe against crashes of the writing process (a power cut may lose
    the last commits, never corrupt the file). WAL needs all writers on one machine, which
    a SQLite store needs anyway.
    """
    import sqlite3

    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    cur = dbapi_connection.cursor()
    try:
        # the mode is stored in the file: set once (by the driver, before any trial runs)
        if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.Error:
        pass  # e.g. a read-only copy of a store: read it as it is
    finally:
        cur.close()


def _install_sqlite_pragmas() -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "connect", _sqlite_pragmas):
        event.listen(Engine, "connect", _sqlite_pragmas)


_install_sqlite_pragmas()


def _artifact_root(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None  # a tracking server decides (proxied artifacts)


class _quiet:
    """Only errors from one logger while the body runs (MLflow warns about pickle on every save)."""

    def __init__(self, name: str) -> None:
        self.log = logging.getLogger(name)

    def __enter__(self) -> None:
        self.level = self.log.level
        self.log.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        self.log.setLevel(self.level)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _params(d: dict[str, Any]) -> list[Param]:
    out = []
    for k, v in d.items():
        text = json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)
        if len(text) > MAX_PARAM_CHARS:
            text = text[: MAX_PARAM_CHARS - 20] + "...(see artifact)"
        out.append(Param(k, text))
    return out


def _finite(v: float | None) -> float | None:
    return None if v is None or v != v else v


def encode_record(trial_key: str, record: dict[str, Any]) -> dict[str, str]:
    """A trial's read-back record -> the parent-run tags that carry it (see TAG_RECORD).

    ``record``: run_id, status, trial_name, strategy, config_key, config, target_sparsity,
    seed, events ({event: {metric: value}}) and speed ({metric: value}). NaN is written as null.
    """
    doc = {k: v for k, v in record.items() if k not in ("events", "speed")}
    doc["keys"] = list(EVENT_METRICS)
    doc["rows"] = [[e, *[_finite(vals.get(k)) for k in EVENT_METRICS]] for e, vals in sorted(record["events"].items())]
    doc["speed"] = {k: _finite(v) for k, v in (record.get("speed") or {}).items()}
    text = json.dumps(doc, separators=(",", ":"))
    chunks = [text[i:i + RECORD_CHUNK_CHARS] for i in range(0, len(text), RECORD_CHUNK_CHARS)]
    head = TAG_RECORD + trial_key
    return {head: f"v1:{len(chunks)}", **{f"{head}.{i}": c for i, c in enumerate(chunks)}}


def decode_records(tags: dict[str, str]) -> dict[str, dict[str, Any]]:
    """trial key -> record (as encode_record takes it) for every readable record in ``tags``.

    A record whose chunks do not add up (not written whole) is left out."""
    out = {}
    for name, head in tags.items():
        if not name.startswith(TAG_RECORD) or not head.startswith("v1:"):
            continue
        try:
            doc = json.loads("".join(tags[f"{name}.{i}"] for i in range(int(head[3:]))))
            keys = doc.pop("keys")
            doc["events"] = {int(r[0]): {k: float(v) for k, v in zip(keys, r[1:]) if v is not None}
                             for r in doc.pop("rows")}
            doc["speed"] = {k: float(v) for k, v in doc["speed"].items() if v is not None}
        except (KeyError, ValueError, TypeError, IndexError):
            continue
        out[name[len(TAG_RECORD):]] = doc
    return out


def trial_params(trial: TrialSpec) -> dict[str, Any]:
    """The params a child run carries: what a user filters and compares on in the UI."""
    sparsities = [round(s, 6) for s in trial.sparsities]
    p: dict[str, Any] = {
        "schedule": trial.schedule,
        "target_sparsity": trial.target,
        "sparsities": sparsities,
        "n_events": len(sparsities),
        "mode": "dense" if trial.is_dense else trial.mode,
        "patience": trial.patience,
        "first_patience": trial.first_patience,
        "epochs_per_event": trial.epochs_per_event,
        "seed": trial.seed,
        "budget_epochs": _budget_epochs(trial.budget),
        "budget_policy": trial.budget.policy,
        "lr": trial.finetune.lr,
        "momentum": trial.finetune.momentum,
        "weight_decay": trial.finetune.weight_decay,
        "batch_size": trial.finetune.batch_size,
        "min_delta": trial.finetune.min_delta,
        "monitor": trial.finetune.monitor,
        "model": trial.model.name,
        "model_source": trial.model.source,
        "dataset": trial.dataset.name,
        "criterion": trial.criterion,
        "structure": trial.structure,
        "trial_key": trial.key,
        "config_key": trial.config_key,
        "dense_key": trial.dense_key,
    }
    if trial.budget.max_event_epochs is not None:
        p["max_event_epochs"] = trial.budget.max_event_epochs
    if trial.model.checkpoint_sha256 is not None:
        p["checkpoint_sha256"] = trial.model.checkpoint_sha256  # the path may differ per machine; this does not
    if trial.prune_include or trial.prune_exclude:
        p["prune_include"], p["prune_exclude"] = list(trial.prune_include), list(trial.prune_exclude)
    p.update({k: v for k, v in trial.knobs})
    return p


def _budget_epochs(budget: Any) -> Any:
    """The budget_epochs param: the per-trial budget, or 'unbounded' (the paper's patience protocol)."""
    return "unbounded" if budget.epochs is None else budget.epochs


def _column(kind: str, key: str) -> str:
    """A runs-table column as the MLflow UI names it in its view state."""
    return f"{kind}.`{key}`"


#: the columns the tune_prune view shows, after MLflow's own defaults (Source, Models, Dataset)
def view_columns(metric: TaskMetric = ACCURACY) -> tuple[str, ...]:
    return (_column("attributes", "Source"), _column("attributes", "Models"), _column("attributes", "Dataset"),
            _column("tags", TAG_STRATEGY_SHORT), _column("params", "target_sparsity"),
            _column("params", "seed"), _column("metrics", "sparsity"), _column("metrics", metric.test),
            _column("metrics", metric.val), _column("metrics", "cost_epochs"))


VIEW_COLUMNS = view_columns()


def runs_view(expanded: dict[str, bool] | None = None, metric: TaskMetric = ACCURACY) -> dict[str, Any]:
    """The runs-table view state tune_prune stores on its experiments (MLflow 3.17's UI format).

    Grouped by the ``strategy`` tag, every run shown in charts (MLflow shows the first 10
    by default), the tune_prune columns, and one chart: final sparsity against test
    metric (accuracy or perplexity), one point per trial. ``runsExpanded`` is kept for MLflow versions that read
    it from shared views; 3.17 leaves expansion to the browser.
    """
    section = "tune_prune"
    return {
        "selectedColumns": list(view_columns(metric)),
        "runsExpanded": dict(expanded or {}),
        "runsHiddenMode": "SHOW_ALL",
        "groupBy": {"aggregateFunction": "average",
                    "groupByKeys": [{"mode": "tag", "groupByData": TAG_STRATEGY_SHORT}]},
        "groupsExpanded": {},
        # a scatter of group averages would mix target sparsities: plot each trial
        "useGroupedValuesInCharts": False,
        "hideEmptyCharts": True,
        "compareRunSections": [{"uuid": section, "name": f"tune_prune: sparsity vs test {metric.name}",
                                "display": True, "isReordered": False, "columns": 1, "cardHeight": 480}],
        "compareRunCharts": [{"uuid": "tune_prune-frontier", "type": "SCATTER", "metricSectionId": section,
                              "xaxis": {"key": "sparsity", "type": "METRIC"},
                              "yaxis": {"key": metric.test, "type": "METRIC"},
                              "runsCountToCompare": 1000, "deleted": False, "isGenerated": False}],
    }


def logged_model_name(trial_name: str) -> str:
    """A trial's name as MLflow accepts it for a logged model (no '.', '/', ':', '%' or quotes)."""
    return "".join("_" if c in "./:%\"'" else c for c in trial_name)


def set_description(client: MlflowClient, run_id: str, markdown: str) -> None:
    """A run's description (the tag MLflow's UI edits as the run's note); cut to what MLflow keeps."""
    if len(markdown) > MAX_NOTE_CHARS:
        cut = markdown[: MAX_NOTE_CHARS - 80].rsplit("\n", 1)[0]
        markdown = cut + "\n\n*(cut to MLflow's tag limit: see `report.html` in the artifacts)*\n"
    client.set_tag(run_id, NOTE_TAG, markdown)


def log_table(client: MlflowClient, run_id: str, df: pd.DataFrame, artifact_file: str = FRONTIER_TABLE) -> None:
    """``df`` as an MLflow table artifact, REPLACING an earlier one of that name.

    Same file format and run tag as ``MlflowClient.log_table``, which appends to an
    existing file instead: a refreshed report must not double the frontier's rows.
    """
    import tempfile

    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        df.to_json(path, orient="split", index=False, date_format="iso")
        parent = str(Path(artifact_file).parent)
        client.log_artifact(run_id, str(path), None if parent == "." else parent)
    tables = json.loads(client.get_run(run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
    entry = {"path": artifact_file, "type": "table"}
    if entry not in tables:
        client.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([*tables, entry]))


def describe_run(tracking_uri: str, run_id: str, markdown: str, frontier: pd.DataFrame | None = None) -> None:
    """Refresh a recorded sweep's description (and its frontier table) from a later report."""
    client = _client(tracking_uri)
    set_description(client, run_id, markdown)
    if frontier is not None:
        log_table(client, run_id, frontier)


def browse_url(tracking_uri: str, experiment_id: str, run_id: str | None = None,
               ui: str = "http://127.0.0.1:5000") -> str:
    """The address that opens an experiment's training runs (or one run) in MLflow 3.17's UI.

    An http(s) tracking URI is the UI itself; a database store is read by ``mlflow ui`` at ``ui``.
    The runs page carries tune_prune's view (grouped by strategy, the frontier chart).
    """
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else ui
    if run_id:
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{WORKFLOW_QUERY}"
    return f"{base}/#/experiments/{experiment_id}/runs?{WORKFLOW_QUERY}&viewStateShareKey={VIEW_KEY}"


def dataset_entity(name: str, settings: dict[str, Any], bundle: Any) -> Dataset:
    """An MLflow dataset for what a trial trained on: its name, a digest and its split sizes.

    The digest hashes the dataset's settings (the path it was read from excepted: it
    differs between machines) and each split's labels in order, so it changes when the
    examples a split holds change, without hashing the images on every trial.
    """
    kept = {k: v for k, v in settings.items() if k not in ("root", "download")}
    h = hashlib.sha256(json.dumps({"name": name, **kept}, sort_keys=True, default=str).encode())
    sizes = {}
    for split in ("train", "val", "test"):
        labels = bundle.labels(split)  # a text corpus: its token blocks
        sizes[f"{split}_examples"] = int(len(labels))
        h.update(split.encode())
        h.update(labels.detach().cpu().contiguous().numpy().tobytes())
    profile = {**sizes, "num_classes": int(getattr(bundle, "num_classes", 0) or 0),
               "input_shape": list(getattr(bundle, "in_shape", ()) or ()),
               "storage": str(getattr(bundle, "storage", ""))}
    source = json.dumps({"loader": "tune_prune.data.load_dataset", "name": name, **kept}, sort_keys=True, default=str)
    return Dataset(name=name, digest=h.hexdigest()[:16], source_type="tune_prune", source=source,
                   profile=json.dumps(profile))


class SweepTracker:
    """Driver side: the experiment and the sweep's parent run, created once, up front."""

    def __init__(self, tracking_uri: str, experiment_name: str) -> None:
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_name = experiment_name
        self.experiment_id = self._ensure_experiment()
        self.parent_run_id: str | None = None
        self.metric = ACCURACY

    def _ensure_experiment(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp is not None:
            return exp.experiment_id
        # The kind tag says "training runs" to MLflow UIs that read it. MLflow 3.17's does not
        # while its GenAI / Model training switch exists (a browser setting): browse_url's
        # address carries that switch instead.
        return self.client.create_experiment(self.experiment_name, artifact_location=_artifact_root(self.uri),
                                             tags={"mlflow.experimentKind": "custom_model_development"})

    def start_parent(self, spec: SweepSpec, run_name: str, n_trials: int, smoke_test: bool) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=run_name,
            tags={TAG_KIND: "sweep", "tune_prune.spec_name": spec.name, "tune_prune.smoke_test": str(smoke_test),
                  TAG_FRONTIER_RULE: spec.frontier_rule, TAG_RECORDS_FORMAT: "v1", TAG_TASK: spec.task},
        )
        self.parent_run_id = run.info.run_id
        self.metric = for_task(spec.task)
        self.publish_view()
        params = {
            "model": spec.model.name,
            "dataset": spec.dataset.name,
            "budget_epochs": _budget_epochs(spec.budget),
            "budget_policy": spec.budget.policy,
            "target_sparsities": list(spec.target_sparsities),
            "seeds": list(spec.seeds),
            "strategies": [s.schedule for s in spec.strategies],
            "n_trials": n_trials,
            "cpu_per_trial": spec.resources.cpu,
            "gpu_per_trial": spec.resources.gpu,
            "smoke_test": smoke_test,
        }
        if spec.budget.max_event_epochs is not None:
            params["max_event_epochs"] = spec.budget.max_event_epochs
        self.client.log_batch(self.parent_run_id, params=_params(params))
        self.log_dict(spec.resolved_dict(), "spec.yaml")
        return self.parent_run_id

    def reopen_parent(self, run_id: str) -> None:
        """Continue a sweep's parent run after its driver died (tune-prune resume)."""
        run = self.client.get_run(run_id)
        self.parent_run_id = run_id
        resumes = int(run.data.tags.get("tune_prune.resumes", "0")) + 1
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, "tune_prune.resumes", str(resumes))

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self.client.log_dict(self.parent_run_id, obj, artifact_file)

    def publish_view(self) -> None:
        """Write the experiment's runs-table view (see runs_view), this sweep's row unfolded.

        Only the newest sweep's row: the tag's size stays put however many sweeps the
        experiment holds (MLflow caps experiment tags at 20,000 characters).
        """
        self.client.set_experiment_tag(self.experiment_id, VIEW_TAG,
                                       json.dumps(runs_view({self.parent_run_id: True}, self.metric)))

    def link_models(self, trial_names: list[str]) -> None:
        """Name these trials' logged models as the sweep run's outputs (its Models column): the
        recommended models. Trials without a logged model are passed over."""
        by_name = {r.info.run_name: r for r in child_runs(self.uri, self.experiment_id, self.parent_run_id)}
        outputs = []
        for step, name in enumerate(trial_names):
            run = by_name.get(name)
            models = run.outputs.model_outputs if run is not None and run.outputs else []
            if models:
                outputs.append(LoggedModelOutput(models[-1].model_id, step))
        if outputs:
            self.client.log_outputs(self.parent_run_id, outputs)

    def set_description(self, markdown: str) -> None:
        """The parent run's description (MLflow's run note), shown on the run's page."""
        set_description(self.client, self.parent_run_id, markdown)

    def log_table(self, df: pd.DataFrame, artifact_file: str = FRONTIER_TABLE) -> None:
        log_table(self.client, self.parent_run_id, df, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.parent_run_id, str(path), artifact_path)

    def log_pretraining(self, results: dict[str, PretrainResult], accelerator_seconds: float = 0.0) -> None:
        """Pretraining cost per dense model, apart from any trial's budget.

        A cached model reports the cost it had when it was trained: that cost was paid
        once, whichever sweep paid it.
        """
        rows = [{"dense_key": k, **v.__dict__} for k, v in sorted(results.items())]
        self.log_dict(rows, "pretraining.json")
        ts = _now_ms()
        metrics = [Metric("pretrain_epochs_total", float(sum(r.epochs for r in results.values())), ts, 0),
                   Metric("pretrain_wall_seconds_total", float(sum(r.wall_seconds for r in results.values())), ts, 0),
                   Metric("pretrain_accelerator_seconds_total", float(accelerator_seconds), ts, 0)]
        self.client.log_batch(self.parent_run_id, metrics=metrics)

    def log_summary(self, metrics: dict[str, float], tags: dict[str, str] | None = None) -> None:
        ts = _now_ms()
        self.client.log_batch(
            self.parent_run_id,
            metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()],
            tags=[RunTag(k, v) for k, v in (tags or {}).items()],
        )

    def end(self, status: str = "FINISHED") -> None:
        if self.parent_run_id is not None:
            self.client.set_terminated(self.parent_run_id, status)


#: (parent run, dataset digest) pairs this worker process has already linked to the sweep's
#: run: the parent needs the dataset input once, not once per trial
_PARENT_INPUTS: set[tuple[str, str]] = set()


def _artifact_repo(tracking_uri: str, location: str):
    """The artifact repository at a location we already know (a run's artifact_uri, a logged
    model's artifact_location): MlflowClient would look the run or model up again first, one
    more database request per upload."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(location, tracking_uri=tracking_uri)


class TrialTracker:
    """Worker side: one child run per trial, found again by its trial key on retry."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, trial: TrialSpec,
                 device: str = "cpu", accelerator_share: float = 1.0, claim: Path | None = None) -> None:
        """``accelerator_share``: GPUs held (a fraction when shared) on a GPU, CPU cores on a CPU;
        accelerator_seconds = share x wall seconds.

        ``claim``: a file on storage every attempt of this trial sees (the sweep's cache), written
        just before the trial's run is created. While it is absent no attempt has created a run,
        so the search for one (a request of the heaviest kind) is skipped; every attempt after
        the first, in this driver or a resumed one, finds the file and searches."""
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.artifact_uri: str | None = None  # the child run's, known once it is opened
        self._final_metrics: list[Metric] = []  # the model-linked metrics, sent with finish()'s batch
        self.device = device
        self.share = accelerator_share
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.trial = trial
        self.run_id: str | None = None
        self._pending: list[Metric] = []
        self._last_event: list[Metric] = []  # the final event's metrics, linked to the logged model
        self._dataset: Dataset | None = None
        # this trial's read-back record on the parent run (TAG_RECORD), rewritten per event
        self._events: dict[int, dict[str, float]] = {}
        self._speed: dict[str, float] = {}
        self._found: Any = False  # the run _existing() found (False: not looked up yet)
        self._pending_params: dict[str, Any] = {}  # sent with the next batch
        self._claim = claim
        self._closed = False

    def finished_result(self, stopped_too: bool = False) -> dict[str, float] | None:
        """The final metrics of this trial's child run if it already FINISHED under this parent
        (or, with stopped_too, was stopped early by the scheduler: KILLED)."""
        existing = self._existing()
        settled = ("FINISHED", "KILLED") if stopped_too else ("FINISHED",)
        if existing is None or existing.info.status not in settled:
            return None
        return dict(existing.data.metrics)

    def _existing(self):
        # One search per trial: finished_result() and start() ask the same question back to back.
        if self._found is False and self._claim is not None and not self._claim.exists():
            self._found = None  # no attempt got as far as creating a run
        if self._found is False:
            runs = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' and tags.`{TAG_TRIAL_KEY}` = '{self.trial.key}'",
                max_results=1,
            )
            self._found = runs[0] if runs else None
        return self._found

    def _write_record(self, status: str) -> None:
        """Rewrite this trial's record on the parent run. Written before the child run's own
        metrics and status: a crash in between leaves the record ahead, and the retry, which
        re-logs from the child run's history, rewrites it."""
        record = {"run_id": self.run_id, "status": status, "trial_name": self.trial.name,
                  "strategy": self.trial.strategy, "config_key": self.trial.config_key,
                  "config": self.trial.config_label(), "target_sparsity": float(self.trial.target),
                  "seed": int(self.trial.seed), "events": self._events, "speed": self._speed}
        tags = encode_record(self.trial.key, record)
        self.client.log_batch(self.parent_run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def _params(self) -> dict[str, Any]:
        params = trial_params(self.trial)
        params.update(device=self.device, accelerator_share=self.share)
        return params

    def start(self, tags: dict[str, str] | None = None) -> int:
        """Open (or reopen) the child run; return the last event already logged (0 if none).
        ``tags``: set on the run with its creation (or in the reopened run's first request).

        A reopened run without params gets them: a worker killed between creating the
        run and logging its params leaves it bare (log_batch writes params all or
        nothing, so a run has all of them or none).
        """
        tags = {k: str(v) for k, v in (tags or {}).items()}
        existing = self._existing()
        if existing is not None:
            self.run_id = existing.info.run_id
            self.artifact_uri = existing.info.artifact_uri
            self.client.update_run(self.run_id, status="RUNNING")
            params = [] if existing.data.params else _params(self._params())
            if params or tags:
                self.client.log_batch(self.run_id, params=params, tags=[RunTag(k, v) for k, v in tags.items()])
            history = self.client.get_metric_history(self.run_id, "sparsity")
            logged = max((m.step for m in history), default=0)
            if logged:  # carry on with the record the parent holds (or rebuild it if it lacks events)
                mine = decode_records(self.client.get_run(self.parent_run_id).data.tags).get(self.trial.key)
                if mine is None or max(mine["events"], default=0) < logged:
                    # none, or written before the run's last event (the last event's record
                    # is written by finish(): the worker died in between)
                    mine = {"events": _events_from_history(self.client, self.run_id)}
                self._events = {e: v for e, v in mine["events"].items() if e <= logged}
                self._write_record("RUNNING")  # as the reopened run says
            return logged
        if self._claim is not None:
            self._claim.parent.mkdir(parents=True, exist_ok=True)
            self._claim.touch()
        run = self.client.create_run(
            self.experiment_id,
            run_name=self.trial.name,
            tags={
                PARENT_TAG: self.parent_run_id,
                TAG_KIND: "dense" if self.trial.is_dense else "trial",
                TAG_TRIAL_KEY: self.trial.key,
                TAG_STRATEGY: self.trial.strategy,
                TAG_STRATEGY_SHORT: self.trial.strategy,  # what "Group by" in the UI lists
                TAG_RUN_COLOR: STRATEGY_COLORS.get(self.trial.schedule, OTHER_COLOR),
                TAG_CONFIG_KEY: self.trial.config_key,
                "tune_prune.config": self.trial.config_label(),
                **tags,
            },
        )
        self.run_id = run.info.run_id
        self.artifact_uri = run.info.artifact_uri
        params = _params(self._params())
        self.client.log_batch(self.run_id, params=params)
        if not self.trial.is_dense and any(p.key == "sparsities" and p.value.endswith("(see artifact)") for p in params):
            # only when the param could not hold the whole list
            self.client.log_dict(self.run_id, {"sparsities": list(self.trial.sparsities)}, "schedule.json")
        return 0

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def log_dataset(self, bundle: Any) -> None:
        """The data this trial uses, as the run's MLflow dataset input (the runs table's Dataset column),
        and as the sweep's parent run's (its row in the table, folded or not, names the data too).

        Logging it again (a retry, the next trial) is harmless: MLflow keeps one input per (run, dataset).
        """
        from mlflow.exceptions import MlflowException

        spec = self.trial.dataset
        self._dataset = dataset_entity(spec.name, spec.load_kwargs(), bundle)
        inputs = [DatasetInput(self._dataset, tags=[InputTag("mlflow.data.context", "train")])]
        on_parent = (self.parent_run_id, self._dataset.digest)
        for attempt in range(3):
            try:
                self.client.log_inputs(self.run_id, datasets=inputs)
                if on_parent not in _PARENT_INPUTS:
                    self.client.log_inputs(self.parent_run_id, datasets=inputs)
                    _PARENT_INPUTS.add(on_parent)
                return
            except MlflowException:
                # Trials starting together race to create the experiment's dataset record (a
                # unique key); the loser finds it on the next try and only links it.
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def note_resume(self, completed_events: int) -> None:
        """Count restores on the run and remember from which event the last one resumed."""
        run = self.client.get_run(self.run_id)
        restores = int(run.data.tags.get("tune_prune.restores", "0")) + 1
        self.client.set_tag(self.run_id, "tune_prune.restores", str(restores))
        self.client.set_tag(self.run_id, "tune_prune.resumed_after_event", str(completed_events))

    def log_epoch(self, record: EpochRecord) -> None:
        """Buffered; written with the event's metrics in one batch."""
        ts = _now_ms()
        named = record.named()
        for key in ("train_loss", f"val_{record.metric}", "val_loss"):
            self._pending.append(Metric(f"epoch_{key}", float(named[key]), ts, record.global_epoch))

    def log_event(self, record: EventRecord, totals: bool = False) -> None:
        """The event's metrics (and the buffered epochs'); ``totals``: the trial's totals too
        (its last event), in the same request, whose record on the parent finish() then writes."""
        ts = _now_ms()
        values = {k: v for k, v in record.metrics().items() if k != "event"}
        values["accelerator_seconds"] = record.wall_seconds * self.share
        event_metrics = [Metric(k, v, ts, record.event) for k, v in values.items()]
        self._last_event = event_metrics
        metrics = self._pending + event_metrics
        if totals:
            metrics += self._totals(record, ts)
        self._pending = []
        self._events[record.event] = {k: v for k, v in values.items() if k in EVENT_METRICS}
        if not totals:  # the last event's record is written once, by finish(), with the trial's status
            self._write_record("RUNNING")
        # log_batch accepts at most 1000 metrics per call
        for i in range(0, len(metrics), 900):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 900], params=self._take_params())

    def _take_params(self) -> list[Param]:
        params, self._pending_params = _params(self._pending_params), {}
        return params

    def log_dense(self, val: Evaluation, test: Evaluation, pretrain: PretrainResult) -> None:
        """The dense baseline's metrics (``val``/``test``: the task's evaluations of the dense model)."""
        ts = _now_ms()
        values = {"sparsity": 0.0, f"val_{val.metric}": val.score, f"test_{test.metric}": test.score,
                  "cost_epochs": 0.0, "wall_seconds": 0.0, "accelerator_seconds": 0.0,
                  "pretrain_epochs": pretrain.epochs, "pretrain_wall_seconds": pretrain.wall_seconds}
        self._events[0] = {k: float(v) for k, v in values.items() if k in EVENT_METRICS}
        self._write_record("RUNNING")
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in values.items()])

    def _totals(self, record: EventRecord, ts: int) -> list[Metric]:
        totals = {"total_cost_epochs": record.cost_epochs, "total_wall_seconds": record.wall_seconds,
                  "total_accelerator_seconds": record.wall_seconds * self.share}
        return [Metric(k, float(v), ts, 0) for k, v in totals.items()]

    def log_totals(self, record: EventRecord) -> None:
        """Trial totals as plain run metrics, for the runs table and sorting in the UI."""
        self.client.log_batch(self.run_id, metrics=self._totals(record, _now_ms()))

    def log_prunable(self, count: int) -> None:
        """How many weights the sparsities are fractions of (after prune.include/exclude); sent
        with the next event's metrics, or at the latest when the trial ends."""
        self._pending_params["prunable_params"] = count

    def log_final_model(self, model: Any, speed: dict[str, float] | None,
                        layers: dict[str, dict[str, float]] | None = None, log_model: bool = True) -> str | None:
        """The final model as an MLflow logged model (the runs table's Models column), its measured speed,
        and where the pruning fell, layer by layer (``layer_sparsity.json``); returns the model's id.

        The model is saved whole (structured ones are a different architecture) in MLflow's
        PyTorch format, pickled as ``torch.save`` does; ``load_final_model`` or
        ``mlflow.pytorch.load_model("models:/<id>")`` loads it (tune_prune must be importable).
        The final event's metrics and the speed metrics are linked to the model and the dataset,
        so MLflow's model comparison lists them. ``log_model=False`` (the spec's
        tracking.log_models) records all of that but the model; returns None then.
        """
        model_id = self._log_model(model.to("cpu")) if log_model else None
        if layers is not None:
            self._log_json(layers, LAYER_SPARSITY)
        self._speed = {k: float(v) for k, v in (speed or {}).items()}  # for the read-back record
        ts = _now_ms()
        link = {"model_id": model_id} if model_id is not None else {}
        if self._dataset is not None:
            link.update(dataset_name=self._dataset.name, dataset_digest=self._dataset.digest)
        # the same key, value, timestamp and step as already logged: MLflow keeps the run's history
        # as it is and records the values for the model
        final = [Metric(m.key, m.value, m.timestamp, m.step, **link) for m in self._last_event
                 if m.key in MODEL_METRICS and model_id is not None]
        final += [Metric(k, float(v), ts, 0, **link) for k, v in (speed or {}).items()]
        # sent with finish()'s batch (params, status): one request fewer per trial. A crash in
        # between loses only these links; the run's own history already holds the values.
        self._final_metrics = final
        return model_id

    def _log_json(self, obj: Any, artifact_file: str) -> None:
        """MlflowClient.log_dict without its lookup of the run (we know where its artifacts go)."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / artifact_file
            path.write_text(json.dumps(obj, indent=2))
            _artifact_repo(self.tracking_uri, self.artifact_uri).log_artifact(str(path))

    def _log_model(self, model: Any) -> str:
        import pickle
        import tempfile

        import mlflow.pytorch
        import torch

        trial = self.trial
        logged = self.client.create_logged_model(
            self.experiment_id, name=logged_model_name(trial.name), source_run_id=self.run_id, model_type="pytorch",
            params={k: str(v) for k, v in (("strategy", trial.strategy), ("target_sparsity", trial.target),
                                           ("seed", trial.seed), ("structure", trial.structure))},
            tags={TAG_TRIAL_KEY: trial.key, TAG_STRATEGY_SHORT: trial.strategy})
        with tempfile.TemporaryDirectory() as tmp, _quiet("mlflow.pytorch"):
            # pickle, as torch.save: MLflow's default (pt2, torch.export) needs an example input
            # and cannot export every pruned architecture; explicit requirements skip MLflow's
            # inference of them (seconds per model)
            mlflow.pytorch.save_model(model, f"{tmp}/model", serialization_format="pickle", pickle_module=pickle,
                                      pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
            _artifact_repo(self.tracking_uri, logged.artifact_location).log_artifacts(f"{tmp}/model")
        self.client.finalize_logged_model(logged.model_id, "READY")
        self.client.log_outputs(self.run_id, [LoggedModelOutput(logged.model_id, 0)])
        return logged.model_id

    @property
    def closed(self) -> bool:
        """finish() has ended the run."""
        return self._closed

    def finish(self, status: str = "FINISHED", error: str | None = None, note: str | None = None) -> None:
        """End the run with ``status``; once: later calls (the trainable's own, after a stop) do nothing."""
        if self.run_id is None or self._closed:
            return
        if self._events:
            self._write_record(status)
        tags = [RunTag(k, v) for k, v in (("tune_prune.error", (error or "")[:5000]), ("tune_prune.note", note)) if v]
        if self._pending_params or self._final_metrics or tags:
            metrics, self._final_metrics = self._final_metrics, []
            self.client.log_batch(self.run_id, params=self._take_params(), metrics=metrics, tags=tags)
        self.client.set_terminated(self.run_id, status)
        self._closed = True


# ------------------------------------------------------------------ reading back

def _client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri)


def find_sweep_run(tracking_uri: str, experiment_name: str, run_id: str | None = None):
    """The parent run asked for, or the newest sweep run of the experiment."""
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise LookupError(f"no MLflow experiment '{experiment_name}' at {tracking_uri}; "
                          f"experiments there: {', '.join(names) or 'none'}")
    if run_id:
        return client.get_run(run_id)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'sweep'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise LookupError(f"experiment '{experiment_name}' has no tune_prune sweep runs")
    return runs[0]


def child_runs(tracking_uri: str, experiment_id: str, parent_run_id: str, status: str | None = None) -> list:
    """Every child run of a sweep (only those with ``status``, if given), with its tags, params
    and latest metrics."""
    client = _client(tracking_uri)
    out, token = [], None
    where = f"tags.`{PARENT_TAG}` = '{parent_run_id}'" + (f" and attributes.status = '{status}'" if status else "")
    while True:
        page = client.search_runs([experiment_id], filter_string=where, max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _events_from_history(client: MlflowClient, run_id: str) -> dict[int, dict[str, float]]:
    """Per-event records from a child run's metric histories: one request per metric."""
    per_step: dict[int, dict[str, float]] = {}
    for key in EVENT_METRICS:
        for m in client.get_metric_history(run_id, key):
            per_step.setdefault(m.step, {})[key] = m.value
    return per_step


def _records_from_histories(tracking_uri: str, experiment_id: str, parent_run_id: str) -> dict[str, dict[str, Any]]:
    """Records of a sweep whose parent carries none (run before TAG_RECORD existed): from the
    child runs' metric histories, one request per run and metric."""
    client = _client(tracking_uri)
    out = {}
    for run in child_runs(tracking_uri, experiment_id, parent_run_id):
        tags, params = run.data.tags, run.data.params
        out[tags.get(TAG_TRIAL_KEY)] = {
            "run_id": run.info.run_id, "status": run.info.status, "trial_name": run.info.run_name,
            "strategy": tags.get(TAG_STRATEGY), "config_key": tags.get(TAG_CONFIG_KEY),
            "config": tags.get("tune_prune.config", ""),
            "target_sparsity": float(params.get("target_sparsity", "nan")), "seed": int(params.get("seed", -1)),
            "events": _events_from_history(client, run.info.run_id),
            "speed": {k: v for k, v in run.data.metrics.items() if k in SPEED_METRICS}}
    return out


RECORD_COLUMNS = ["run_id", "status", "trial_name", "trial_key", "strategy", "config_key", "config",
                  "target_sparsity", "seed", "event", *EVENT_METRICS, *SPEED_METRICS]


def load_records(tracking_uri: str, experiment_id: str, parent_run_id: str, parent_run: Any = None) -> pd.DataFrame:
    """One row per (trial, prune event) of a sweep, ordered by trial key and event.

    From the trials' records on the parent run (TAG_RECORD): one request (none when the
    caller passes the ``parent_run`` it already fetched, e.g. from find_sweep_run), however
    many trials. A sweep whose parent has no records (made before they existed) is read
    from its child runs' metric histories instead.

    Columns: run_id, status, trial_name, trial_key, strategy, config_key, config, target_sparsity,
    seed, event, then EVENT_METRICS per event and SPEED_METRICS (the run's final-model
    timings, repeated on each of its rows; NaN where not measured).
    """
    parent = parent_run if parent_run is not None else _client(tracking_uri).get_run(parent_run_id)
    # only the sweep's own metric columns: which one a frame carries tells frontier and recommend
    # the direction (tune_prune.metrics.of_columns)
    metric = for_task(parent.data.tags.get(TAG_TASK, "classification"))
    other = {c for m in METRICS.values() if m != metric for c in (m.val, m.test)}
    if parent.data.tags.get(TAG_RECORDS_FORMAT) == "v1":
        records = decode_records(parent.data.tags)
    else:
        records = _records_from_histories(tracking_uri, experiment_id, parent_run_id)
    nan = float("nan")
    rows = []
    for key, rec in sorted(records.items(), key=lambda kv: str(kv[0])):
        common = [rec["run_id"], rec["status"], rec["trial_name"], key, rec["strategy"], rec["config_key"],
                  rec["config"], rec["target_sparsity"], rec["seed"]]
        speed = [rec["speed"].get(k, nan) for k in SPEED_METRICS]
        for step, values in sorted(rec["events"].items()):
            rows.append([*common, step, *[values.get(k, nan) for k in EVENT_METRICS], *speed])
    return pd.DataFrame(rows, columns=RECORD_COLUMNS).drop(columns=sorted(other))


def log_artifacts(tracking_uri: str, run_id: str, files: list[Path]) -> None:
    """Attach files to a run (also a finished one, e.g. a report made later)."""
    client = _client(tracking_uri)
    for f in files:
        client.log_artifact(run_id, str(f))


def final_model_id(tracking_uri: str, run_id: str) -> str | None:
    """The id of the logged model a trial's run produced (None: it has none)."""
    run = _client(tracking_uri).get_run(run_id)
    outputs = run.outputs.model_outputs if run.outputs else []
    return outputs[-1].model_id if outputs else None


def load_final_model(tracking_uri: str, run_id: str) -> Any:
    """A trial's final model, read back from its MLflow logged model."""
    import tempfile

    import mlflow.artifacts
    import mlflow.pytorch

    model_id = final_model_id(tracking_uri, run_id)
    if model_id is None:
        raise LookupError(f"run {run_id} has no logged model")
    location = _client(tracking_uri).get_logged_model(model_id).artifact_location
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp, tracking_uri=tracking_uri)
        return mlflow.pytorch.load_model(local)


def run_experiment_id(tracking_uri: str, run_id: str) -> str:
    """The experiment a run belongs to."""
    return _client(tracking_uri).get_run(run_id).info.experiment_id
