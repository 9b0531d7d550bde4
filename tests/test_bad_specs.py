"""Every kind of bad spec is refused by `validate` and by `sweep` alike: exit 2, one line naming
the field, no traceback, and nothing created (no file, no Ray, no MLflow store or run).

CASES is also the table the issue-9 note was made from: `python tests/test_bad_specs.py` prints
each case with the line it gets.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tune_prune.cli import main

QUICKSTART = Path(__file__).resolve().parent.parent / "search_spaces" / "quickstart.yaml"
DELETE = object()


def _edit(*changes: tuple[str, Any]) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """Changes to the quickstart spec: (dotted path, new value or DELETE)."""
    return ("edit", changes)


def _text(text: str) -> tuple[str, str]:
    return ("text", text)


def _bytes(data: bytes) -> tuple[str, bytes]:
    return ("bytes", data)


_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 10) + "]\n" for i in range(6))
_DEEP = "name: deep\nx: " + "[" * 80 + "]" * 80 + "\n"
_BIG = "name: big\n" + "# padding\n" * 120_000
_QS = QUICKSTART.read_text()
_IMG = {"name": "imagefolder", "root": "{tmp}/images"}

#: case -> (change, the start of the one error line after "tune-prune: error: ")
CASES: dict[str, tuple[Any, str]] = {
    # the mistakes issue 9 lists
    "model option typo": (_edit(("model", {"name": "mlp", "hiden": [16]})),
                          "model.hiden: unknown field; accepted: name, source, hidden, checkpoint"),
    "model option value": (_edit(("model", {"name": "mlp", "hidden": [0]})),
                           "model.hidden: must be a non-empty list of ints >= 1"),
    "imagefolder root missing": (_edit(("dataset", {**_IMG, "root": "{tmp}/nowhere"})),
                                 "dataset.root: {tmp}/nowhere is not a directory"),
    "not UTF-8": (_bytes(_QS.encode().replace(b"quickstart", b"qu\xefckstart")), "spec: {spec} is not UTF-8 text"),
    "duplicate key": (_text(_QS + "seeds: [0]\n"), "spec: {spec} has the key 'seeds' twice, at lines 34 and"),
    "name escapes the runs dir": (_edit(("name", "../../somewhere")), "name: must be 1-100 letters"),
    "max_failures -1": (_edit(("max_failures", -1)), "max_failures: must be an integer >= 0, got -1"),
    # the file itself
    "binary file": (_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), "spec: {spec} is a binary file"),
    "empty file": (_text(""), "spec: must be a mapping of fields"),
    "top level is a list": (_text("- name: x\n"), "spec: must be a mapping of fields"),
    "malformed YAML": (_text("name: x\nstrategies: [unclosed\n"), "spec: {spec} is not valid YAML at line"),
    "two documents": (_text(_QS + "---\nname: again\n"), "spec: {spec} is not valid YAML at line"),
    "alias bomb": (_text(_BOMB), "spec: {spec} expands to more than 100,000 nodes"),
    "recursive alias": (_text("name: &a [*a]\n"), "spec: {spec} has a recursive alias at line 1"),
    "nested too deep": (_text(_DEEP), "spec: {spec} is nested more than 64 levels deep"),
    "file too large": (_text(_BIG), "spec: {spec} is 1,200,010 bytes; a spec is at most 1,048,576 bytes"),
    # names and paths
    "name with a slash": (_edit(("name", "team/sweep")), "name: must be 1-100 letters"),
    "name missing": (_edit(("name", DELETE)), "name: is required"),
    "empty storage_path": (_edit(("storage_path", "")), "storage_path: must be a non-empty path"),
    # sections
    "unknown top-level field": (_edit(("colour", "blue")), "colour: unknown field; accepted: name, dataset, model"),
    "section is not a mapping": (_edit(("finetune", 0.01)), "finetune: must be a mapping, got float 0.01"),
    "dataset is a string": (_edit(("dataset", "digits")), "dataset: must be a mapping"),
    # dataset
    "unknown dataset": (_edit(("dataset.name", "mnist")), "dataset.name: unknown dataset 'mnist'; accepted: cifar10"),
    "dataset option typo": (_edit(("dataset.test_sise", 0.2)), "dataset.test_sise: unknown field; accepted: name, test_size, root"),
    "dataset option value": (_edit(("dataset.test_size", 1.5)), "dataset.test_size: must be an int >= 1 (a count)"),
    "val_size zero": (_edit(("dataset.val_size", 0)), "dataset.val_size: must be an int >= 1 (a count)"),
    "train_subset zero": (_edit(("dataset.train_subset", 0)), "dataset.train_subset: must be an integer >= 1"),
    "split_seed negative": (_edit(("dataset.split_seed", -1)), "dataset.split_seed: must be an integer >= 0"),
    "download as a string": (_edit(("dataset.download", "yes")), "dataset.download: must be true or false, got 'yes'"),
    "imagefolder without root": (_edit(("dataset", {"name": "imagefolder"})),
                                 "dataset.root: required for imagefolder"),
    "imagefolder without classes": (_edit(("dataset", {**_IMG, "root": "{tmp}/flat"})),
                                    "dataset.root: {tmp}/flat has no class sub-directories"),
    "imagefolder test_root and test_size": (_edit(("dataset", {**_IMG, "test_root": "{tmp}/images",
                                                               "test_size": 0.2})),
                                            "dataset.test_size: not used when dataset.test_root is set"),
    "cifar10 files missing": (_edit(("dataset", {"name": "cifar10", "root": "{tmp}/empty"})),
                              "dataset.root: cifar10: missing {tmp}/empty/cifar-10-batches-py/data_batch_1"),
    # model
    "unknown model": (_edit(("model", {"name": "vgg19"})), "model.name: unknown model 'vgg19'; accepted: lenet_300_100"),
    "model width zero": (_edit(("model", {"name": "small_cnn", "width": 0})), "model.width: must be an integer >= 1"),
    "model width as a string": (_edit(("model", {"name": "small_cnn", "width": "32"})),
                                "model.width: must be an integer, got '32'"),
    "model without a name": (_edit(("model", {"hidden": [8]})), "model.name: is required"),
    # sparsities and seeds
    "sparsity 1.0": (_edit(("target_sparsities", [0.5, 1.0])), "target_sparsities[1]: must be a sparsity in [0, 1)"),
    "sparsity 0": (_edit(("target_sparsities", [0.0])), "target_sparsities[0]: 0 is the dense baseline"),
    "sparsity negative": (_edit(("target_sparsities", [-0.1])), "target_sparsities[0]: must be a sparsity in [0, 1)"),
    "sparsities duplicated": (_edit(("target_sparsities", [0.5, 0.5])), "target_sparsities: has duplicates"),
    "sparsities empty": (_edit(("target_sparsities", [])), "target_sparsities: must not be empty"),
    "sparsities not a list": (_edit(("target_sparsities", 0.5)), "target_sparsities: must be a list, got 0.5"),
    "seeds duplicated": (_edit(("seeds", [1, 1])), "seeds: has duplicates: [1, 1]"),
    "seed negative": (_edit(("seeds", [0, -2])), "seeds[1]: must be an integer >= 0, got -2"),
    "seed not an integer": (_edit(("seeds", [1.5])), "seeds[0]: must be an integer, got 1.5"),
    # budget
    "budget missing": (_edit(("budget", DELETE)), "budget: is required"),
    "budget zero": (_edit(("budget.epochs", 0)), "budget.epochs: must be an integer >= 1, got 0"),
    "budget as a boolean": (_edit(("budget.epochs", True)), "budget.epochs: must be an integer, got True"),
    "unknown budget policy": (_edit(("budget.policy", "greedy")),
                              "budget.policy: unknown value 'greedy'; accepted: carry_over, even, front_loaded"),
    "accelerator hours without an epoch time": (_edit(("budget.sweep_accelerator_hours", 1)),
                                                "budget.epoch_seconds: is required"),
    "sweep over its epoch budget": (_edit(("budget.sweep_epochs", 1000)),
                                    "budget.sweep_epochs: the sweep plans up to 1880 epochs"),
    "unbounded budget without a cap": (_edit(("budget", {"epochs": None})),
                                       "budget.max_event_epochs: is required with budget.epochs: null"),
    "policy with an unbounded budget": (_edit(("budget", {"epochs": None, "max_event_epochs": 100, "policy": "even"})),
                                        "budget.policy: has no effect with budget.epochs: null"),
    "safety cap not above patience": (_edit(("budget", {"epochs": None, "max_event_epochs": 5})),
                                      "budget.max_event_epochs: 5 is not above one_shot's patience 10: patience "
                                      "could never end an event"),
    "strategy policy with an unbounded budget": (
        _edit(("budget", {"epochs": None, "max_event_epochs": 100}), ("strategies.hybrid.budget_policy", "even")),
        "strategies.hybrid.budget_policy: has no effect with budget.epochs: null"),
    "safety cap zero": (_edit(("budget.max_event_epochs", 0)), "budget.max_event_epochs: must be an integer >= 1, got 0"),
    "more events than budget": (_edit(("strategies.geometric.rate0", 0.02)),
                                "budget.epochs: geometric(target=0.98, rate0=0.02) has 194 prune events"),
    "fixed schedule over budget": (_edit(("strategies.constant", {"step": 0.1, "patience": None,
                                                                  "epochs_per_event": 5})),
                                   "strategies.constant.epochs_per_event: constant(target=0.98, step=0.1) with epochs_per_event=5 needs"),
    # strategies
    "no strategies": (_edit(("strategies", {})), "strategies: must map schedule names"),
    "unknown schedule": (_edit(("strategies.cyclic", {"patience": 1})),
                         "strategies.cyclic: unknown field; accepted: constant, geometric, hybrid, one_shot"),
    "required knob missing": (_edit(("strategies.geometric.rate0", DELETE)), "strategies.geometric.rate0: is required"),
    "rate above one": (_edit(("strategies.geometric.rate0", 1.5)),
                       "strategies.geometric.rate0: must be a number in (0, 1), got 1.5"),
    "negative patience": (_edit(("strategies.one_shot.patience", [3, -3])),
                          "strategies.one_shot.patience: must be an integer >= 0"),
    "patience as a word": (_edit(("strategies.constant.patience", "ten")),
                           "strategies.constant.patience: must be an integer >= 0"),
    "knob of another schedule": (_edit(("strategies.one_shot.rate0", 0.1)),
                                 "strategies.one_shot.rate0: unknown field; accepted: patience, epochs_per_event, lr"),
    "empty knob list": (_edit(("strategies.constant.step", [])), "strategies.constant.step: must not be an empty list"),
    "fixed epochs without epochs_per_event": (_edit(("strategies.constant.patience", None)),
                                              "strategies.constant.epochs_per_event: is required for fixed-epoch"),
    "range in a grid": (_edit(("strategies.geometric.rate0", {"low": 0.1, "high": 0.3})),
                        "strategies.geometric.rate0: ranges ({low, high}) need search.mode: adaptive"),
    "range upside down": (_edit(("search", {"mode": "adaptive"}),
                                ("strategies.geometric.rate0", {"low": 0.3, "high": 0.1})),
                          "strategies.geometric.rate0: a range needs low < high"),
    # training, resources, execution
    "zero learning rate": (_edit(("finetune.lr", 0)), "finetune.lr: must be a number > 0, or a non-empty list"),
    "finetune option typo": (_edit(("finetune.learning_rate", 0.1)),
                             "finetune.learning_rate: unknown field; accepted: lr, batch_size"),
    "pretrain epochs zero": (_edit(("pretrain.epochs", 0)), "pretrain.epochs: 0 means: use the starting weights"),
    "zero cpus": (_edit(("resources.cpu", 0)), "resources.cpu: must be a number > 0"),
    "gpu fraction above one": (_edit(("resources.gpu", 1.5)), "resources.gpu: must be a fraction <= 1"),
    "unknown criterion": (_edit(("criterion", "random")), "criterion: unknown value 'random'; accepted: "),
    "wanda in structured mode": (_edit(("structure", "structured"), ("criterion", "wanda")),
                                 "criterion: wanda ranks weights within each output row; structured mode"),
    "unknown structure": (_edit(("structure", "blocks")), "structure: unknown value 'blocks'; accepted: structured"),
    "unknown amp": (_edit(("execution", {"amp": "fp8"})), "execution.amp: unknown value 'fp8'; accepted: auto, bf16"),
    "channels_last as a word": (_edit(("execution", {"channels_last": "yes"})),
                                "execution.channels_last: must be auto, true or false"),
    "zero timing repeats": (_edit(("speed", {"repeats": 0})), "speed.repeats: must be an integer >= 1"),
    "unknown search mode": (_edit(("search", {"mode": "random"})), "search.mode: unknown value 'random'"),
    "reduction factor one": (_edit(("search", {"reduction_factor": 1})), "search.reduction_factor: must be an integer >= 2"),
    # smoke_test overrides are checked even when not applied
    "smoke_test typo": (_edit(("smoke_test.seed", [0])), "smoke_test.seed: unknown field; accepted: name, dataset"),
    "smoke_test bad value": (_edit(("smoke_test.budget", {"epochs": 0})),
                             "smoke_test.budget.epochs: must be an integer >= 1, got 0"),
}


def _apply(raw: dict[str, Any], changes: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for path, value in changes:
        node = raw
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if value is DELETE:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return raw


def _fill(value: Any, tmp: Path) -> Any:
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp))
    if isinstance(value, dict):
        return {k: _fill(v, tmp) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, tmp) for v in value]
    return value


def write_case(case: str, spec_dir: Path, data_dir: Path) -> tuple[Path, str]:
    """Write the case's spec file into ``spec_dir``; return it and the expected line."""
    (change, expected) = CASES[case]
    (data_dir / "images" / "cat").mkdir(parents=True, exist_ok=True)
    (data_dir / "images" / "cat" / "a.png").write_bytes(b"not read at spec time")
    (data_dir / "flat").mkdir(exist_ok=True)
    (data_dir / "empty").mkdir(exist_ok=True)
    path = spec_dir / "spec.yaml"
    kind, payload = change
    if kind == "edit":
        raw = _apply(yaml.safe_load(_QS), tuple((p, _fill(v, data_dir)) for p, v in payload))
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
    elif kind == "text":
        path.write_text(payload)
    else:
        path.write_bytes(payload)
    return path, expected.replace("{tmp}", str(data_dir)).replace("{spec}", str(path))


@pytest.mark.parametrize("command", ["validate", "sweep"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_spec_is_refused_in_one_line_with_nothing_created(case, command, tmp_path, monkeypatch, capsys):
    spec_dir, data_dir = tmp_path / "work", tmp_path / "data"
    spec_dir.mkdir()
    data_dir.mkdir()
    path, expected = write_case(case, spec_dir, data_dir)
    monkeypatch.chdir(spec_dir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TUNE_PRUNE_DATA", str(data_dir / "empty"))
    code = main([command, str(path)])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1, err
    assert lines[0].startswith(f"tune-prune: error: {expected}"), lines[0]
    assert "Traceback" not in err and out == ""
    # nothing started or half-written: no store, no runs directory, no cache, no Ray
    assert sorted(p.name for p in spec_dir.iterdir()) == ["spec.yaml"]
    if "ray" in sys.modules:
        import ray

        assert not ray.is_initialized()


def test_there_are_at_least_forty_kinds():
    assert len(CASES) >= 40


def test_a_bad_experiment_name_is_refused_before_anything_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["sweep", str(QUICKSTART), "--experiment", "../elsewhere"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tune-prune: error: --experiment: must be 1-100 letters")
    assert list(tmp_path.iterdir()) == []


def test_yaml_merge_keys_may_override_without_being_duplicates(tmp_path):
    from tune_prune.spec import load_spec

    text = _QS.replace("finetune:                # after every prune event: fresh SGD, constant LR\n",
                       "finetune:\n  <<: &ft {lr: 0.5, batch_size: 64}\n")
    path = tmp_path / "merge.yaml"
    path.write_text(text)
    spec = load_spec(path)
    assert spec.finetune.lr == 0.01  # the explicit key after the merge wins, as YAML says
    assert spec.finetune.batch_size == 64


if __name__ == "__main__":  # print the table: case | the line it gets
    import tempfile

    for name in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            work, data = Path(tmp, "work"), Path(tmp, "data")
            work.mkdir()
            data.mkdir()
            spec_path, _ = write_case(name, work, data)
            import contextlib
            import io
            import os

            os.chdir(work)
            os.environ["TUNE_PRUNE_DATA"] = str(data / "empty")
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = main(["validate", str(spec_path)])
            line = err.getvalue().strip().replace(tmp, "<tmp>")
            print(f"| {name} | {code} | `{line.removeprefix('tune-prune: error: ')}` |")
