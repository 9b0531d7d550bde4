"""task: causal_lm end to end: the spec, what a transformer prunes, perplexity's direction in
patience and checkpoint choice, Wanda's per-row cuts, and the small LM spec's smoke sweep
through real local Ray and a real SQLite MLflow store.

Text: Debian's fortunes package (real English that exists offline). Models are built from
a config and tokenizers trained on the text: nothing is downloaded.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch

from conftest import need
from tune_prune.spec import SpecError, load_spec, parse_spec

FORTUNES = Path("/usr/share/games/fortunes")
SPEC = Path(__file__).resolve().parents[1] / "search_spaces" / "fortunes_tiny_gptneo.yaml"
TINY = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position_embeddings=32,
            window_size=16, attention_types=[[["global", "local"], 1]])


def lm_raw(tmp_path: Path, **over) -> dict:
    raw = dict(name="lm", task="causal_lm",
               dataset=dict(name="text", files=[str(FORTUNES / "science")], vocab_size=384, block_size=32,
                            train_subset=240, root=str(tmp_path / "data")),
               model=dict(source="huggingface", config=dict(TINY)),
               pretrain=dict(epochs=2, optimizer="adamw", lr=3e-3, batch_size=16),
               finetune=dict(optimizer="adamw", lr=1e-3, batch_size=16),
               budget=dict(epochs=4), target_sparsities=[0.5],
               strategies=dict(one_shot=dict(patience=2)))
    raw.update(over)
    return raw


@pytest.fixture(scope="module")
def fortunes():
    need(FORTUNES.is_dir(), "Debian's fortunes package (apt-get install fortunes)")
    return FORTUNES


@pytest.fixture(scope="module")
def lm_case(fortunes, tmp_path_factory):
    """A validated tiny LM trial, its data and a briefly trained dense model."""
    from tune_prune.data import load_dataset
    from tune_prune.loop import pretrain_dense

    tmp = tmp_path_factory.mktemp("lm")
    spec = parse_spec(lm_raw(tmp, criterion=["global_magnitude", "wanda"]), check_data=True)
    trials = [t for t in spec.trials() if not t.is_dense]
    torch.manual_seed(0)
    data = load_dataset(trials[0].dataset.name, **trials[0].dataset.load_kwargs())
    state, result = pretrain_dense(trials[0], data, torch.device("cpu"))
    return spec, trials, data, state, result


# ---------------------------------------------------------------- the spec

@pytest.mark.parametrize("change, field, words", [
    (dict(dataset=dict(name="digits")), "dataset.name", "text"),
    (dict(model=dict(name="mlp", hidden=[8])), "model.source", "huggingface"),
    (dict(structure="structured"), "structure", "unstructured"),
    (dict(finetune=dict(monitor="val_accuracy")), "finetune.monitor", "val_perplexity"),
    (dict(criterion=["wanda", "wanda"]), "criterion", "duplicates"),
])
def test_a_causal_lm_spec_that_does_not_fit_is_refused_naming_the_field(fortunes, tmp_path, change, field, words):
    raw = lm_raw(tmp_path)
    raw.update(change)
    with pytest.raises(SpecError) as err:
        parse_spec(raw)
    assert err.value.field == field and words in str(err.value)


def test_classification_refuses_text_and_a_language_model(fortunes, tmp_path):
    raw = lm_raw(tmp_path)
    raw.pop("task")
    with pytest.raises(SpecError) as err:
        parse_spec(raw)
    assert err.value.field == "task" and "causal_lm" in str(err.value)


def test_lm_defaults_monitor_perplexity_and_a_criteria_list_makes_arms(fortunes, tmp_path):
    spec = parse_spec(lm_raw(tmp_path, criterion=["global_magnitude", "wanda"]))
    trials = [t for t in spec.trials() if not t.is_dense]
    assert {t.finetune.monitor for t in trials} == {"val_perplexity"}
    assert sorted(t.strategy for t in trials) == ["one_shot+global_magnitude", "one_shot+wanda"]
    assert len({t.key for t in trials}) == 2 and all(t.name.startswith(t.strategy) for t in trials)
    # the label is not part of the key: the same trial with one criterion has the same key
    single = parse_spec(lm_raw(tmp_path, criterion="wanda"))
    assert [t.key for t in single.trials() if not t.is_dense] == [t.key for t in trials if t.criterion == "wanda"]
    # the shipped spec validates with its data and compares both criteria on both schedules
    shipped = load_spec(SPEC, smoke_test=True)
    assert {t.strategy for t in shipped.trials() if not t.is_dense} == {
        "one_shot+global_magnitude", "one_shot+wanda", "geometric+global_magnitude", "geometric+wanda"}


# ---------------------------------------------------------------- what a transformer prunes

def test_a_transformer_prunes_its_attention_and_mlp_linear_weights_only(lm_case):
    from tune_prune.loop import _pruner, new_model

    _, trials, data, state, _ = lm_case
    model = new_model(trials[0], data, 0)
    model.load_state_dict(state)
    masks = _pruner(trials[0], model, data, torch.device("cpu"))
    names = set(masks.params)
    linears = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert names == linears - {"lm_head.weight"}
    assert len(names) == 2 * (4 + 2)  # per block: q, k, v, out_proj; mlp c_fc, c_proj
    assert not any("bias" in n or "wte" in n or "wpe" in n or "ln" in n for n in names)
    masks.prune_to(0.5)
    report = masks.layer_report()
    assert set(report) == {n.rsplit(".", 1)[0] for n in names}
    assert sum(r["params"] * r["sparsity"] for r in report.values()) == pytest.approx(0.5 * masks.total, abs=1)
    # the tied embedding / LM head is untouched
    assert float((model.lm_head.weight == 0).float().mean()) < 0.01


def test_wanda_cuts_every_output_row_to_the_target(lm_case):
    from tune_prune.loop import Hooks, run_trial

    _, trials, data, state, _ = lm_case
    wanda = next(t for t in trials if t.criterion == "wanda")
    layers: dict = {}
    finals = []
    run_trial(wanda, data, state, torch.device("cpu"), Hooks(on_layers=layers.update, on_final=finals.append))
    model = finals[0]
    weight = dict(model.named_parameters())["transformer.h.0.mlp.c_fc.weight"]
    per_row = (weight == 0).float().mean(1)
    # Wanda compares weights within each output row: every row loses (almost exactly) half
    assert per_row.min() >= 0.45 and per_row.max() <= 0.55
    assert {round(v["sparsity"], 2) for v in layers.values()} == {0.5}


# ---------------------------------------------------------------- perplexity's direction

def test_patience_and_the_kept_checkpoint_follow_lower_perplexity(lm_case):
    from tune_prune.loop import Hooks, evaluate, run_trial

    _, trials, data, state, dense = lm_case
    assert dense.metric == "perplexity" and 1 < dense.val_score < 384
    trial = next(t for t in trials if t.criterion == "global_magnitude")
    epochs, finals = [], []
    [rec] = run_trial(trial, data, state, torch.device("cpu"), Hooks(on_epoch=epochs.append, on_final=finals.append))
    seen = [rec.pruned_val_perplexity] + [e.val_perplexity for e in epochs]
    assert rec.metric == "perplexity" and len(seen) >= 2
    assert rec.val_perplexity == pytest.approx(min(seen))  # the lowest, not the highest
    assert rec.best_epoch == seen.index(min(seen))
    assert {"val_perplexity", "test_perplexity", "pruned_val_perplexity"} <= set(rec.metrics())
    assert not any("accuracy" in k for k in rec.metrics())
    # the kept model is the one measured: its test perplexity is the record's
    again = evaluate(finals[0], data, "test")
    assert again.score == pytest.approx(rec.test_perplexity) and again.metric == "perplexity"


# ---------------------------------------------------------------- the smoke sweep

@pytest.fixture(scope="module")
def lm_sweep(fortunes, tmp_path_factory):
    from tune_prune.sweep import run_sweep

    work = tmp_path_factory.mktemp("lm_sweep")
    old = os.getcwd()
    os.chdir(work)
    try:
        spec = load_spec(SPEC, smoke_test=True, check_data=True)
        outcome = run_sweep(spec, tracking_uri=f"sqlite:///{work / 'mlflow.db'}", smoke_test=True)
    finally:
        os.chdir(old)
    return work, spec, outcome


@pytest.mark.integration
def test_the_small_lm_spec_runs_and_speaks_perplexity(lm_sweep):
    from mlflow.tracking import MlflowClient

    from tune_prune.recommend import format_recommendation, recommend
    from tune_prune.tracking import USABLE_STATUSES, load_records

    work, spec, outcome = lm_sweep
    assert outcome.failed == [] and outcome.n_trials == len(spec.trials())
    client = MlflowClient(outcome.tracking_uri)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.tags["tune_prune.task"] == "causal_lm"
    records = load_records(outcome.tracking_uri, parent.info.experiment_id, outcome.parent_run_id)
    assert {"val_perplexity", "test_perplexity"} <= set(records.columns)
    assert not {"val_accuracy", "test_accuracy"} & set(records.columns)
    assert set(records["strategy"]) == {"dense", "one_shot+global_magnitude", "one_shot+wanda",
                                        "geometric+global_magnitude", "geometric+wanda"}
    assert records["test_perplexity"].between(1, spec.dataset.kwargs_own()["vocab_size"] * 2).all()
    front = outcome.frontier
    assert "test_perplexity_mean" in front.columns and len(front) == 4
    assert "perplexity" in outcome.summary and "%" not in outcome.summary.split("sparsity")[-1]
    assert f"dense_test_perplexity" in parent.data.metrics
    finished = records[records["status"].isin(USABLE_STATUSES)]
    rec = recommend(finished, 0.5)
    assert rec.metric == "perplexity" and rec.winner is not None
    assert rec.winner.val_mean == min(c.val_mean for c in rec.candidates)
    text = format_recommendation(rec)
    assert "test perplexity" in text and "accuracy" not in text
    # the runs table's view plots test perplexity, and each child logged it per event
    view = json.loads(client.get_experiment(parent.info.experiment_id).tags["mlflow.sharedViewState.tune_prune"])
    assert view["compareRunCharts"][0]["yaxis"]["key"] == "test_perplexity"
    child = client.get_run(records[records["strategy"] == "geometric+wanda"]["run_id"].iloc[0])
    assert [m.step for m in client.get_metric_history(child.info.run_id, "test_perplexity")] == [1, 2]
    assert "epoch_val_perplexity" in child.data.metrics and child.data.params["criterion"] == "wanda"


@pytest.mark.integration
def test_the_logged_lm_reloads_with_its_recorded_perplexity(lm_sweep):
    from tune_prune.data import load_dataset
    from tune_prune.loop import evaluate
    from tune_prune.tracking import load_final_model, load_records

    work, spec, outcome = lm_sweep
    records = load_records(outcome.tracking_uri, "1", outcome.parent_run_id)
    row = records[records["strategy"] == "one_shot+wanda"].iloc[-1]
    model = load_final_model(outcome.tracking_uri, row["run_id"])
    trial = next(t for t in spec.trials() if t.strategy == "one_shot+wanda")
    data = load_dataset(trial.dataset.name, **copy.deepcopy(trial.dataset.load_kwargs()))
    assert evaluate(model, data, "test").score == pytest.approx(row["test_perplexity"], rel=1e-4)


# ---------------------------------------------------------------- a Hugging Face dataset on disk

def test_a_saved_hugging_face_dataset_is_a_corpus_like_files(fortunes, tmp_path):
    import datasets

    from tune_prune.text import load_text, read_corpus

    stories = [s for s in (fortunes / "science").read_text(errors="replace").split("\n%\n") if s.strip()]
    whole = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"story": stories}),
                                  "validation": datasets.Dataset.from_dict({"story": stories[:5]})})
    whole.save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(ValueError, match="dataset.hf_split: .* holds splits train, validation"):
        load_text(hf_dataset=str(tmp_path / "ds"), text_column="story", vocab_size=300, cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="dataset.text_column: .* no column 'text'; its columns: story"):
        load_text(hf_dataset=str(tmp_path / "ds"), hf_split="train", vocab_size=300, cache_dir=tmp_path / "c")
    got = load_text(hf_dataset=str(tmp_path / "ds"), hf_split="train", text_column="story", vocab_size=300,
                    block_size=32, cache_dir=tmp_path / "c")
    # the same text as files gives the same blocks: records are joined by the end-of-text token
    files = []
    for i, s in enumerate(stories):
        files.append(tmp_path / f"s{i:05d}.txt")
        files[-1].write_text(s)
    assert read_corpus(sorted(files)).count("<|endoftext|>") == len(stories) - 1
    same = load_text([str(tmp_path / "s*.txt")], vocab_size=300, block_size=32, cache_dir=tmp_path / "c2")
    assert torch.equal(got.train, same.train) and got.key != same.key
    # through a spec: relative paths resolved, and the trials read the same blocks
    spec = parse_spec(lm_raw(tmp_path, dataset=dict(name="text", hf_dataset=str(tmp_path / "ds"), hf_split="train",
                                                    text_column="story", vocab_size=300, block_size=32,
                                                    root=str(tmp_path / "data"))), check_data=True)
    assert spec.dataset.kwargs_own()["hf_dataset"] == str((tmp_path / "ds").resolve())


def test_sparsegpt_prunes_each_row_and_beats_magnitude_before_fine_tuning(fortunes, tmp_path):
    from tune_prune.data import load_dataset
    from tune_prune.loop import Hooks, pretrain_dense, run_trial

    raw = lm_raw(tmp_path, criterion=["global_magnitude", "wanda", "sparsegpt"], target_sparsities=[0.7],
                 strategies=dict(one_shot=dict(patience=None, epochs_per_event=1)))
    raw["pretrain"]["epochs"] = 4
    spec = parse_spec(raw, check_data=True)
    trials = {t.criterion: t for t in spec.trials() if not t.is_dense}
    data = load_dataset(spec.dataset.name, **spec.dataset.load_kwargs())
    state, _ = pretrain_dense(trials["sparsegpt"], data, torch.device("cpu"))
    pruned, finals = {}, []
    for name, trial in trials.items():
        [rec] = run_trial(trial, data, state, torch.device("cpu"), Hooks(on_final=finals.append))
        pruned[name] = rec.pruned_val_perplexity
        assert rec.sparsity == pytest.approx(0.7, abs=0.01)
    weight = dict(finals[-1].named_parameters())["transformer.h.1.attn.attention.q_proj.weight"]
    assert ((weight == 0).sum(1) == round(0.7 * weight.shape[1])).all()  # every row, exactly
    # refitting the kept weights to the layer's inputs is what SparseGPT adds over a mask
    assert pruned["sparsegpt"] < pruned["global_magnitude"]
    assert pruned["sparsegpt"] < pruned["wanda"] * 1.02


def test_sparsegpt_is_refused_outside_language_models(fortunes, tmp_path):
    with pytest.raises(SpecError) as err:
        parse_spec(lm_raw(tmp_path, criterion="sparsegpt", structure="structured"))
    assert err.value.field in ("criterion", "structure")
    from tune_prune.spec import parse_spec as parse

    raw = dict(name="c", dataset=dict(name="digits"), model=dict(name="mlp", hidden=[8]), criterion="sparsegpt",
               budget=dict(epochs=2), target_sparsities=[0.5], strategies=dict(one_shot=dict(patience=1)))
    with pytest.raises(SpecError, match="task: causal_lm") as err:
        parse(raw)
    assert err.value.field == "criterion"


def test_the_tinystories_spec_without_the_hub_is_one_clear_error(tmp_path):
    """Here there is no network: validate names the dataset field and what to do, in one line, exit 2."""
    import subprocess
    import sys

    tinystories = SPEC.parent / "tinystories_gptneo33m.yaml"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNE_PRUNE_DATA": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "-m", "tune_prune", "validate", "--smoke-test", str(tinystories)],
                          capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("tune-prune: error: dataset.hf_dataset: 'roneneldan/TinyStories' cannot be fetched")
    assert "Traceback" not in proc.stderr and not (tmp_path / "tune_prune_runs").exists()
    # and without the data check it is a valid spec of the paper's case
    proc = subprocess.run([sys.executable, "-m", "tune_prune", "validate", "--no-data-check", str(tinystories)],
                          capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert proc.returncode == 0 and "hybrid+sparsegpt" in proc.stdout, proc.stderr[-2000:]


def test_pretrained_weights_without_their_tokenizer_are_refused(fortunes, tmp_path):
    from tune_prune.lm import build_causal_lm

    model_dir = tmp_path / "my_lm"
    build_causal_lm(config={**TINY, "vocab_size": 384}).save_pretrained(model_dir)  # weights, no tokenizer
    raw = lm_raw(tmp_path, model=dict(source="huggingface", name=str(model_dir)))
    raw["pretrain"].pop("epochs")  # pretrained weights: used as they are unless told otherwise
    with pytest.raises(SpecError) as err:
        parse_spec(raw)
    assert err.value.field == "dataset.tokenizer" and "holds no tokenizer" in str(err.value)
    # named explicitly, the user's choice stands; the model counts in keys by its content
    raw["dataset"]["tokenizer"] = str(tmp_path / "tok")
    spec = parse_spec(raw)
    assert spec.model.checkpoint_sha256 and spec.pretrain.epochs == 0 and spec.model.starts_from_weights
