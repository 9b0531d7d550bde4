import copy

import pytest
import yaml

from tune_prune.spec import SpecError, TrialSpec, load_spec, parse_spec


@pytest.fixture
def raw(quickstart_path):
    return yaml.safe_load(quickstart_path.read_text())


def test_quickstart_expands_to_every_strategy_sparsity_and_seed_plus_dense(raw):
    spec = parse_spec(raw)
    trials = spec.trials()
    counts = {}
    for t in trials:
        counts[t.schedule] = counts.get(t.schedule, 0) + 1
    n_targets, n_seeds = len(raw["target_sparsities"]), len(raw["seeds"])
    assert counts == {"dense": n_seeds, "one_shot": 2 * n_targets * n_seeds, "constant": n_targets * n_seeds,
                      "geometric": n_targets * n_seeds, "hybrid": n_targets * n_seeds}
    assert len({t.key for t in trials}) == len(trials)
    # every pruned trial reaches its target within budget
    for t in trials:
        if not t.is_dense:
            assert t.sparsities[-1] == t.target
            assert len(t.sparsities) <= t.budget.epochs


def test_smoke_test_overrides_shrink_the_sweep(raw):
    full, smoke = parse_spec(raw), parse_spec(raw, smoke_test=True)
    assert len(smoke.trials()) < len(full.trials())
    assert {t.schedule for t in smoke.trials()} == {t.schedule for t in full.trials()}


PINNED = {
    "name": "pin",
    "dataset": {"name": "digits"},
    "model": {"name": "mlp"},
    "budget": {"epochs": 20},
    "target_sparsities": [0.9],
    "seeds": [0],
    "strategies": {"geometric": {"rate0": 0.2, "patience": 3}},
}


PINNED_NAMES = ["dense-s0-08dc4dca", "geometric-s0.9-b52494a4"]


def test_trial_names_are_deterministic_content_keys():
    # Pinned literal keys: an accidental change of the canonical settings shows here.
    names = [t.name for t in parse_spec(copy.deepcopy(PINNED)).trials()]
    assert names == PINNED_NAMES
    assert [t.name for t in parse_spec(copy.deepcopy(PINNED)).trials()] == names
    changed = copy.deepcopy(PINNED)
    changed["finetune"] = {"lr": 0.02}
    assert parse_spec(changed).trials()[1].name != names[1]


def test_seed_changes_key_but_not_config_key(raw):
    trials = [t for t in parse_spec(raw).trials() if t.schedule == "geometric" and t.target == 0.9]
    assert len({t.key for t in trials}) == 2
    assert len({t.config_key for t in trials}) == 1
    assert len({t.dense_key for t in trials}) == 2


def test_trial_spec_round_trips_through_a_dict(raw):
    for t in parse_spec(raw).trials()[:10]:
        assert TrialSpec.from_dict(t.to_dict()) == t


@pytest.mark.parametrize("name", ["fortunes_tiny_gptneo.yaml", "quickstart.yaml", "fashion_mnist_structured.yaml"])
def test_trial_spec_round_trips_through_json_as_tune_hands_it_to_a_worker(name, quickstart_path):
    """Trials travel to Tune as JSON; nested options (the text dataset's file list) come back equal."""
    import json

    for t in load_spec(quickstart_path.parent / name).trials()[:6]:
        back = TrialSpec.from_dict(json.loads(json.dumps(t.to_dict())))
        assert back == t and back.key == t.key and hash(back.dataset) == hash(t.dataset)


def _set(raw, path, value):
    d = raw
    keys = path.split(".")
    for k in keys[:-1]:
        d = d[k]
    if value is _DELETE:
        del d[keys[-1]]
    else:
        d[keys[-1]] = value
    return raw


_DELETE = object()


@pytest.mark.parametrize(
    "path,value,field,accepted",
    [
        ("strategies.cyclic", {"patience": 1}, "strategies.cyclic", "constant, geometric, hybrid, one_shot"),
        ("model.name", "vgg", "model.name", "lenet_300_100"),
        ("dataset.name", "mnist", "dataset.name", "fashion_mnist"),
        ("target_sparsities", [0.5, 1.0], "target_sparsities[1]", "[0, 1)"),
        ("target_sparsities", [-0.2], "target_sparsities[0]", "[0, 1)"),
        ("budget.epochs", 0, "budget.epochs", "integer >= 1"),
        ("budget.epochs", -5, "budget.epochs", "integer >= 1"),
        ("budget.policy", "greedy", "budget.policy", "carry_over, even, front_loaded"),
        ("strategies.one_shot.patience", [-1], "strategies.one_shot.patience", ">= 0"),
        ("strategies.geometric.rate0", 1.5, "strategies.geometric.rate0", "number in (0, 1)"),
        ("seeds", [], "seeds", "must not be empty"),
        ("finetune.lr", 0, "finetune.lr", "> 0"),
        ("resources.gpu", -1, "resources.gpu", ">= 0"),
        ("colour", "blue", "colour", "accepted: name"),
        ("budget.epochs", _DELETE, "budget.epochs", "is required"),
    ],
)
def test_bad_input_names_the_field_and_what_is_accepted(raw, path, value, field, accepted):
    with pytest.raises(SpecError) as info:
        parse_spec(_set(raw, path, value))
    assert info.value.field == field
    assert str(info.value).startswith(field + ":")
    assert accepted in str(info.value)


def test_iterative_schedule_with_more_events_than_budget_is_refused(raw):
    raw["strategies"]["geometric"]["rate0"] = 0.02  # 0.98 needs 194 events
    with pytest.raises(SpecError, match=r"budget.epochs: geometric\(target=0.98, rate0=0.02\) has 194 prune events .*\(5 other configuration\(s\) too\).*>= 194"):
        parse_spec(raw)


def test_fixed_epoch_schedule_that_cannot_fit_its_budget_is_refused(raw):
    raw["strategies"]["constant"] = {"step": 0.1, "patience": None, "epochs_per_event": 4}
    with pytest.raises(SpecError, match=r"strategies.constant.epochs_per_event: .* needs 10 x 4 = 40 epochs"):
        parse_spec(raw)


def test_fixed_epochs_need_epochs_per_event(raw):
    raw["strategies"]["constant"] = {"step": 0.1, "patience": None}
    with pytest.raises(SpecError, match="strategies.constant.epochs_per_event"):
        parse_spec(raw)


def test_malformed_yaml_reports_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ndataset: {name: digits\nmodel: mlp\n")
    with pytest.raises(SpecError, match=r"^spec: .*not valid YAML at line"):
        load_spec(p)


def test_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "nope.yaml")


@pytest.mark.parametrize("smoke", [False, True])
def test_every_shipped_search_space_validates(quickstart_path, smoke):
    specs = sorted(quickstart_path.parent.glob("*.yaml"))
    assert {p.name for p in specs} >= {"quickstart.yaml", "fashion_mnist_lenet_paper.yaml", "cifar10_resnet18_paper.yaml",
                                       "fashion_mnist_lenet_budget.yaml", "cifar10_resnet18_budget.yaml"}
    for path in specs:
        spec = load_spec(path, smoke_test=smoke)
        schedules = {t.schedule for t in spec.trials()}
        if smoke or spec.task == "causal_lm":
            # a smoke run may leave strategies out (large models on a CPU), never the baseline; the
            # small LM spec compares criteria on one-shot and geometric
            assert {"dense", "one_shot", "geometric"} <= schedules
        else:
            assert schedules == {"dense", "one_shot", "constant", "geometric", "hybrid"}


def test_smoke_test_replaces_a_section_that_names_another_model_or_dataset(raw):
    raw["model"] = {"source": "torchvision", "name": "resnet18", "weights": "IMAGENET1K_V1"}
    raw["pretrain"]["epochs"] = 0
    raw["smoke_test"]["model"] = {"name": "mlp", "hidden": [8]}
    raw["smoke_test"]["pretrain"] = {"epochs": 1}
    raw["smoke_test"]["dataset"] = {"test_size": 0.3}  # same dataset: merged into the spec's
    smoke = parse_spec(raw, smoke_test=True)
    assert smoke.model.name == "mlp" and smoke.model.source == "builtin" and smoke.model.kwargs() == {"hidden": [8]}
    assert smoke.dataset.kwargs_own()["test_size"] == 0.3 and smoke.dataset.val_size == 0.2
    full = parse_spec(raw)
    assert full.model.source == "torchvision" and full.pretrain.epochs == 0


def test_how_data_is_held_is_not_part_of_any_key(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"")
    raw = copy.deepcopy(PINNED)
    raw["dataset"] = {"name": "imagefolder", "root": str(tmp_path)}
    keys = {}
    for storage in (None, "resident", "streaming"):
        if storage:
            raw["dataset"]["storage"] = storage
        trials = parse_spec(copy.deepcopy(raw)).trials()
        keys[storage] = [(t.key, t.dense_key) for t in trials]
    assert keys[None] == keys["resident"] == keys["streaming"]


def test_relative_data_paths_mean_the_working_directory_of_the_driver(tmp_path, monkeypatch):
    # Ray runs trials in directories of its own: the spec must carry absolute paths to them
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    (tmp_path / "imgs" / "a" / "x.png").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    raw = copy.deepcopy(PINNED)
    raw["dataset"] = {"name": "imagefolder", "root": "imgs", "test_root": "./imgs"}
    spec = parse_spec(raw)
    assert spec.dataset.root == str(tmp_path / "imgs")
    assert spec.dataset.kwargs_own()["test_root"] == str(tmp_path / "imgs")
    # the record holds the resolved paths: `resume`, run from elsewhere, parses the same trials
    monkeypatch.chdir(tmp_path / "imgs")
    again = parse_spec(spec.resolved_dict())
    assert again.dataset == spec.dataset and [t.key for t in again.trials()] == [t.key for t in spec.trials()]


def test_a_grid_of_absolute_first_sparsities_leaves_out_the_points_at_or_above_the_target(capsys):
    from tune_prune.cli import main

    raw = copy.deepcopy(PINNED)
    raw["target_sparsities"] = [0.7, 0.8, 0.92]
    raw["strategies"] = {"hybrid": {"first_sparsity": [0.5, 0.6, 0.7, 0.8], "rate0": 0.1, "patience": 2,
                                    "first_patience": 5}}
    spec = parse_spec(raw)
    pairs = sorted((dict(t.knobs)["first_sparsity"], t.target) for t in spec.trials() if not t.is_dense)
    # the paper's Tables 3-4: p_k only below the target
    assert pairs == sorted((p, t) for p in (0.5, 0.6, 0.7, 0.8) for t in (0.7, 0.8, 0.92) if p < t)
    assert spec.left_out() == {"hybrid": 3}
    for both in ({"first_fraction": 0.7}, {}):
        bad = copy.deepcopy(raw)
        bad["strategies"]["hybrid"].update(both)
        if not both:
            del bad["strategies"]["hybrid"]["first_sparsity"]
        with pytest.raises(SpecError, match=r"^strategies.hybrid.first_fraction: give exactly one of first_fraction "
                                            r"and first_sparsity"):
            parse_spec(bad)
    adaptive = copy.deepcopy(raw)
    adaptive["search"] = {"mode": "adaptive"}
    with pytest.raises(SpecError, match=r"^strategies.hybrid.first_sparsity: in adaptive search every value"):
        parse_spec(adaptive)


def test_a_strategy_can_have_its_own_budget_policy(raw):
    plain = {t.key for t in parse_spec(copy.deepcopy(raw)).trials() if t.schedule != "hybrid"}
    raw["strategies"]["hybrid"]["budget_policy"] = "front_loaded"
    spec = parse_spec(copy.deepcopy(raw))
    policies = {(t.schedule, t.budget.policy) for t in spec.trials() if not t.is_dense}
    assert policies == {("one_shot", "carry_over"), ("constant", "carry_over"), ("geometric", "carry_over"),
                        ("hybrid", "front_loaded")}
    assert {t.key for t in spec.trials() if t.schedule != "hybrid"} == plain  # the others are untouched
    assert all("budget_policy=front_loaded" in t.config_label() for t in spec.trials() if t.schedule == "hybrid")
    raw["strategies"]["hybrid"]["budget_policy"] = "greedy"
    with pytest.raises(SpecError, match=r"^strategies.hybrid.budget_policy: must be a budget policy "
                                        r"\(carry_over, even, front_loaded\), got 'greedy'"):
        parse_spec(raw)


def test_a_learning_rate_list_is_an_axis_of_every_strategy_that_sets_none(raw):
    raw["finetune"]["lr"] = [0.001, 0.01]
    raw["strategies"]["hybrid"]["lr"] = 0.05  # says otherwise
    spec = parse_spec(copy.deepcopy(raw))
    lrs = {}
    for t in spec.trials():
        if not t.is_dense:
            lrs.setdefault(t.schedule, set()).add(t.finetune.lr)
    assert lrs == {"one_shot": {0.001, 0.01}, "constant": {0.001, 0.01}, "geometric": {0.001, 0.01},
                   "hybrid": {0.05}}
    single = copy.deepcopy(raw)
    single["finetune"]["lr"] = 0.01
    assert len(parse_spec(single).trials()) < len(spec.trials())
    raw["finetune"]["lr"] = [0.01, 0.01]
    with pytest.raises(SpecError, match=r"^finetune.lr: must not repeat a value"):
        parse_spec(raw)
