"""`tune-prune schema`: the spec's JSON Schema, for editors; the shipped specs pass it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tune_prune.cli import main

SPECS = Path(__file__).resolve().parent.parent / "search_spaces"


@pytest.fixture(scope="module")
def printed(tmp_path_factory) -> dict:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["schema"]) == 0
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def validator(printed):
    jsonschema.Draft7Validator.check_schema(printed)
    return jsonschema.Draft7Validator(printed)


def _spec_files() -> list[Path]:
    files = sorted(SPECS.glob("*.yaml"))
    assert {p.name for p in files} >= {"quickstart.yaml", "fashion_mnist_lenet_paper.yaml", "cifar10_resnet18_paper.yaml",
                                       "fashion_mnist_lenet_budget.yaml", "cifar10_resnet18_budget.yaml"}
    return files


@pytest.mark.parametrize("path", _spec_files(), ids=lambda p: p.name)
def test_every_shipped_spec_passes_the_printed_schema(validator, path):
    raw = yaml.safe_load(path.read_text())
    assert [e.message for e in validator.iter_errors(raw)] == []
    # and it tells editors where the schema is
    assert path.read_text().splitlines()[0] == "# yaml-language-server: $schema=spec.schema.json"


@pytest.mark.parametrize("where", ["top", "model", "dataset", "strategy", "budget"])
def test_the_schema_rejects_an_unknown_key_at_every_level(validator, where):
    raw = yaml.safe_load((SPECS / "quickstart.yaml").read_text())
    target = {"top": raw, "model": raw["model"], "dataset": raw["dataset"],
              "strategy": raw["strategies"]["geometric"], "budget": raw["budget"]}[where]
    assert validator.is_valid(raw)
    target["colour"] = "blue"
    assert not validator.is_valid(raw)


@pytest.mark.parametrize("path,value", [
    ("model.hidden", [0]), ("dataset.val_size", 1.5), ("budget.epochs", 0), ("budget.policy", "greedy"),
    ("seeds", []), ("target_sparsities", [1.0]), ("strategies.geometric.rate0", 1.5), ("name", "../up"),
    ("execution.channels_last", "yes"), ("max_failures", -1),
])
def test_the_schema_rejects_what_the_spec_parser_rejects(validator, path, value):
    from tune_prune.spec import SpecError, parse_spec

    raw = yaml.safe_load((SPECS / "quickstart.yaml").read_text())
    node = raw
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    assert not validator.is_valid(raw)
    with pytest.raises(SpecError):
        parse_spec(copy.deepcopy(raw))


def test_the_committed_schema_file_is_what_the_command_prints(printed):
    # search_spaces/spec.schema.json is what the shipped specs' modelines point at; regenerate
    # it with `tune-prune schema > search_spaces/spec.schema.json` when the spec changes.
    assert json.loads((SPECS / "spec.schema.json").read_text()) == printed


def test_model_and_dataset_options_come_from_their_builders(printed):
    from tune_prune.data import DATASETS
    from tune_prune.models import MODELS

    defs = printed["$defs"]
    assert {"name", "hidden", "checkpoint"} <= set(defs["Model_mlp"]["properties"])
    assert "width" not in defs["Model_mlp"]["properties"]
    assert defs["Model_small_cnn"]["properties"]["width"]["minimum"] == 1
    assert {"image_size", "test_root", "test_size", "root"} <= set(defs["Dataset_imagefolder"]["properties"])
    assert {f"Model_{n}" for n in MODELS.names()} <= set(defs)
    assert {f"Dataset_{n}" for n in DATASETS.names()} <= set(defs)
