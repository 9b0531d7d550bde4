"""Bad input: one clear line naming the field, exit code 2, nothing started or written."""

import subprocess
import sys

import pytest
import yaml

from tune_prune.cli import main


def _write(tmp_path, raw):
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(raw) if not isinstance(raw, str) else raw)
    return p


@pytest.fixture
def good(quickstart_path):
    return yaml.safe_load(quickstart_path.read_text())


CASES = {
    "malformed yaml": ("name: x\nstrategies: [unclosed\n", "spec:"),
    "unknown schedule": (("strategies", {"cyclic": {"patience": 1}}), "strategies.cyclic:"),
    "unknown model": (("model", {"name": "vgg19"}), "model.name:"),
    "unknown dataset": (("dataset", {"name": "mnist"}), "dataset.name:"),
    "sparsity 1.0": (("target_sparsities", [0.5, 1.0]), "target_sparsities[1]:"),
    "sparsity negative": (("target_sparsities", [-0.1]), "target_sparsities[0]:"),
    "budget zero": (("budget", {"epochs": 0}), "budget.epochs:"),
    "negative patience": (("strategies", {"one_shot": {"patience": -3}}), "strategies.one_shot.patience:"),
    "unknown structure": (("structure", "blocks"), "structure:"),
    "gpu fraction above one": (("resources", {"cpu": 1, "gpu": 1.5}), "resources.gpu:"),
    "unknown amp": (("execution", {"amp": "fp8"}), "execution.amp:"),
    "zero timing repeats": (("speed", {"repeats": 0}), "speed.repeats:"),
    "fixed schedule over budget": (
        ("strategies", {"constant": {"step": 0.1, "patience": None, "epochs_per_event": 5}}),
        "strategies.constant.epochs_per_event:",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_sweep_refuses_bad_input_without_side_effects(case, good, tmp_path, monkeypatch, capsys):
    change, field = CASES[case]
    if isinstance(change, str):
        path = _write(tmp_path, change)
    else:
        good[change[0]] = change[1]
        path = _write(tmp_path, good)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code = main(["sweep", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"tune-prune: error: {field}")
    # nothing started or half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]
    if "ray" in sys.modules:
        import ray

        assert not ray.is_initialized()


def test_validate_refuses_too(good, tmp_path, capsys):
    good["budget"] = {"epochs": 5}
    code = main(["validate", str(_write(tmp_path, good))])
    assert code == 2
    assert "budget.epochs:" in capsys.readouterr().err


def test_validate_prints_the_plan(quickstart_path, capsys):
    assert main(["validate", str(quickstart_path)]) == 0
    out = capsys.readouterr().out
    # patience trials: between every event stopping as soon as patience allows and every event using its cap
    assert "62 trials" in out and "894 to 1800 in patience trials + 80 pretraining" in out
    assert "= 974 to 1880 epochs" in out


def test_validate_refuses_a_sweep_over_its_accelerator_hours(good, tmp_path, capsys):
    # 1880 epochs x 0.5 s x 1 core = 0.261 accelerator-hours
    good["budget"].update(sweep_accelerator_hours=0.25, epoch_seconds=0.5)
    assert main(["validate", str(_write(tmp_path, good))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tune-prune: error: budget.sweep_accelerator_hours: the sweep plans up to 0.261")
    good["budget"]["sweep_accelerator_hours"] = 0.3
    assert main(["validate", str(_write(tmp_path, good))]) == 0
    assert "= 0.135 to 0.261 accelerator-hours" in capsys.readouterr().out


def test_validate_refuses_a_sweep_over_its_epoch_budget(good, tmp_path, capsys):
    good["budget"]["sweep_epochs"] = 1000
    assert main(["validate", str(_write(tmp_path, good))]) == 2
    assert "budget.sweep_epochs: the sweep plans up to 1880 epochs" in capsys.readouterr().err


def test_accelerator_hours_need_an_epoch_time(good, tmp_path, capsys):
    good["budget"]["sweep_accelerator_hours"] = 1
    assert main(["validate", str(_write(tmp_path, good))]) == 2
    assert "budget.epoch_seconds: is required" in capsys.readouterr().err


def test_console_script_exit_code_is_2(tmp_path):
    bad = _write(tmp_path, "name: x\ndataset: {name: digits}\nmodel: {name: mlp}\nbudget: {epochs: -1}\n"
                           "target_sparsities: [0.5]\nstrategies: {one_shot: {patience: 1}}\n")
    proc = subprocess.run([sys.executable, "-m", "tune_prune", "sweep", str(bad)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "tune-prune: error: budget.epochs: must be an integer >= 1, got -1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


def test_a_tracking_uri_with_credentials_is_refused_before_anything_starts(quickstart_path, tmp_path,
                                                                           monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["sweep", str(quickstart_path), "--tracking-uri", "http://alice:s3cret@127.0.0.1:5000"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("tune-prune: error: --tracking-uri: the URI carries credentials")
    assert "s3cret" not in err  # not even in the error message
    assert list(tmp_path.iterdir()) == []
