"""bf16 autocast and channels_last: resolved per device, applied to every forward, masks still exact."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from tune_prune.data import load_dataset
from tune_prune.loop import FastPath, Hooks, pretrain_dense, run_trial
from tune_prune.models import build_model
from tune_prune.pruning.structured import prunable_count
from tune_prune.spec import STRUCTURED, ModelSpec, SpecError, parse_spec

CPU = torch.device("cpu")


def test_auto_is_off_on_cpu_and_explicit_choices_win():
    cnn, mlp = build_model("small_cnn", (1, 8, 8), 10), build_model("mlp", (1, 8, 8), 10)
    assert FastPath.resolve("auto", "auto", CPU, cnn) == FastPath(False, False)
    assert FastPath.resolve("bf16", True, CPU, mlp) == FastPath(True, True)
    assert FastPath.resolve("fp32", False, CPU, cnn) == FastPath(False, False)
    with pytest.raises(ValueError, match="accepted: auto, bf16, fp32"):
        FastPath.resolve("fp16", "auto", CPU, cnn)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_auto_turns_both_on_for_conv_models_on_cuda():
    cuda = torch.device("cuda")
    fast = FastPath.resolve("auto", "auto", cuda, build_model("small_cnn", (1, 8, 8), 10))
    assert fast.channels_last and fast.amp == torch.cuda.is_bf16_supported()
    assert not FastPath.resolve("auto", "auto", cuda, build_model("mlp", (1, 8, 8), 10)).channels_last


def test_spec_execution_section_is_validated(quickstart_path):
    import yaml

    raw = yaml.safe_load(quickstart_path.read_text())
    raw["execution"] = {"amp": "bf16", "channels_last": True}
    spec = parse_spec(raw)
    assert (spec.execution.amp, spec.execution.channels_last) == ("bf16", True)
    # speed choices are not part of what a trial is
    assert [t.key for t in spec.trials()] == [t.key for t in parse_spec({**raw, "execution": {}}).trials()]
    for bad, field in (({"amp": "fp16"}, "execution.amp"), ({"channels_last": "yes"}, "execution.channels_last"),
                       ({"tf32": True}, "execution.tf32")):
        raw["execution"] = bad
        with pytest.raises(SpecError) as info:
            parse_spec(raw)
        assert info.value.field == field


class _Dtypes:
    """Records the dtype and layout every Conv2d/Linear computes in."""

    def __init__(self, model: nn.Module) -> None:
        self.seen: set[tuple[torch.dtype, bool]] = set()
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.register_forward_hook(self._hook)

    def _hook(self, module, inputs, out):
        # (a 1x1 map is both layouts at once, so test the NHWC one only)
        self.seen.add((out.dtype, out.is_contiguous(memory_format=torch.channels_last) if out.dim() == 4 else None))


@pytest.fixture(scope="module")
def cnn():
    from test_loop import make_trial

    torch.set_num_threads(1)
    data = load_dataset("digits", val_size=0.2, train_subset=600)
    trial = replace(make_trial(target=0.8, knobs=(("rate0", 0.5),), patience=1, budget=6),
                    model=ModelSpec(name="small_cnn", options=(("width", 8),)))
    state, _ = pretrain_dense(trial, data, CPU)
    return trial, data, state


def test_training_and_evaluation_forwards_run_in_bf16_channels_last(cnn):
    from tune_prune.loop import evaluate, train_epoch

    _, data, _ = cnn
    fast = FastPath(amp=True, channels_last=True)
    model = fast.model(build_model("small_cnn", data.in_shape, data.num_classes, width=8))
    probe = _Dtypes(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = train_epoch(model, opt, data, 64, torch.Generator().manual_seed(0), fast=fast)
    assert loss == loss and probe.seen == {(torch.bfloat16, True), (torch.bfloat16, None)}
    probe.seen.clear()
    evaluate(model, data, "val", fast=fast)
    assert probe.seen == {(torch.bfloat16, True), (torch.bfloat16, None)}
    probe.seen.clear()
    evaluate(model, data, "val")  # the default stays fp32
    assert {d for d, _ in probe.seen} == {torch.float32}


@pytest.mark.parametrize("structure", ["unstructured", STRUCTURED])
def test_a_trial_under_bf16_and_channels_last_computes_that_way_and_keeps_its_schedule(cnn, structure):
    trial, data, state = cnn
    trial = replace(trial, structure=structure)
    fast = FastPath(amp=True, channels_last=True)
    finals = []
    records = run_trial(trial, data, state, CPU, Hooks(on_final=finals.append), fast=fast)
    final = finals[0]
    probe = _Dtypes(final)
    with torch.no_grad(), fast.autocast(CPU):
        final(fast.batch(data.prepare(data.x_val[:8], train=False)))
    assert (torch.bfloat16, True) in probe.seen  # conv outputs: bf16, NHWC
    assert all(p.dtype == torch.float32 for p in final.parameters())  # master weights stay fp32
    convs = [m.weight for m in final.modules() if isinstance(m, nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert [r.sparsity for r in records] == pytest.approx(list(trial.sparsities), abs=1e-4)
    weights = [p for m in final.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters(recurse=False)]
    if structure == "unstructured":
        # exact zeros survived bf16 training in channels_last layout
        zeros = sum(int((p == 0).sum()) for p in weights)
        assert zeros / sum(p.numel() for p in weights) == pytest.approx(trial.target, abs=1e-4)
    else:
        # the channels were cut out for real, by the ratio the run logged
        dense = build_model("small_cnn", data.in_shape, data.num_classes, width=8)
        assert prunable_count(final) == pytest.approx((1 - records[-1].param_sparsity) * prunable_count(dense), abs=0.5)
        assert records[-1].param_sparsity > trial.target - 1e-4
    assert records[-1].val_accuracy > 0.3  # still learns (chance is 0.1)
