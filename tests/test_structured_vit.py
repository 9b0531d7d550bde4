"""Structured pruning of timm ViTs: whole heads and MLP channels go, the embedding dimension stays."""

import copy
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tune_prune import models
from tune_prune.data import load_dataset
from tune_prune.loop import Hooks, LoopState, pretrain_dense, run_trial
from tune_prune.pruning.structured import prunable_count, resize_to_state
from tune_prune.pruning.structured_vit import ViTPruner
from tune_prune.spec import SpecError, parse_spec

QUICKSTART = Path(__file__).resolve().parent.parent / "search_spaces" / "quickstart.yaml"
C, HEADS, HIDDEN, CLASSES = 48, 4, 192, 5  # embed dim, heads (head_dim 12), MLP width (ratio 4), outputs
TINY = {"depth": 2, "embed_dim": C, "num_heads": HEADS}


def _vit(img_size=16, patch_size=4, **kwargs):
    torch.manual_seed(0)
    return models.import_timm().create_model("vit_small_patch16_224", pretrained=False, num_classes=CLASSES,
                                             img_size=img_size, patch_size=patch_size, **TINY, **kwargs)


def _shapes(model):
    """(heads, MLP width) of every block, each checked against its layers' shapes."""
    out = []
    for blk in model.blocks:
        a, mlp = blk.attn, blk.mlp
        assert a.attn_dim == a.num_heads * a.head_dim and a.head_dim == C // HEADS
        assert a.qkv.weight.shape == (3 * a.attn_dim, C) and a.proj.weight.shape == (C, a.attn_dim)
        assert mlp.fc1.weight.shape == (mlp.fc1.out_features, C) and mlp.fc2.weight.shape == (C, mlp.fc1.out_features)
        out.append((a.num_heads, mlp.fc1.out_features))
    return out


def _by_hand(heads, hidden, tokens=17, patch=4):
    """Prunable parameters and MACs per image of the tiny ViT, from its dimensions alone."""
    d = C // HEADS
    params = 3 * patch * patch * C + C + CLASSES * C + CLASSES  # patch embedding, classifier
    macs = (tokens - 1) * 3 * patch * patch * C + C * CLASSES
    for h, m in zip(heads, hidden):
        a = h * d
        params += (C * 3 * a + 3 * a) + (a * C + C) + (C * m + m) + (m * C + C)
        macs += tokens * (C * 3 * a + a * C + C * m + m * C) + 2 * tokens * tokens * a
    return params, macs


def test_heads_and_mlp_channels_are_cut_to_the_ratio_of_original_counts_and_nothing_else():
    model = _vit()
    dense = {k: v.shape for k, v in model.state_dict().items()}
    pruner = ViTPruner(model, torch.zeros(1, 3, 16, 16))
    assert (pruner.dense_params, pruner.dense_macs) == _by_hand([HEADS] * 2, [HIDDEN] * 2)
    for ratio in (0.5, 0.75):  # cumulative over the ORIGINAL counts, not over what was left
        pruner.prune_to(ratio)
        heads, hidden = round((1 - ratio) * HEADS), round((1 - ratio) * HIDDEN)
        assert _shapes(model) == [(heads, hidden)] * 2
        params, macs = _by_hand([heads] * 2, [hidden] * 2)
        assert prunable_count(model) == params
        got = pruner.reached()
        assert got["param_sparsity"] == pytest.approx(1 - params / pruner.dense_params, abs=1e-12)
        assert got["mac_sparsity"] == pytest.approx(1 - macs / pruner.dense_macs, abs=1e-12)
        assert got["channel_sparsity"] == pytest.approx(ratio)  # qkv and fc1 widths, both exact here
        assert pruner.measured_sparsity() == ratio
    # the residual stream, tokens, norms and classifier keep their shapes
    for k, tensor in model.state_dict().items():
        if not any(part in k for part in (".qkv.", ".proj.weight", ".fc1.", ".fc2.weight")):
            assert tensor.shape == dense[k], k
    report = pruner.layer_report()["blocks.1.attn.qkv"]
    assert (report["heads"], report["original_heads"], report["channels"]) == (1, HEADS, 3 * C // HEADS)
    model.train()
    x = torch.randn(3, 3, 16, 16)
    out = model(x)
    assert out.shape == (3, CLASSES)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_one_head_never_goes_and_a_bad_ratio_is_refused():
    model = _vit()
    pruner = ViTPruner(model, torch.zeros(1, 3, 16, 16))
    pruner.prune_to(0.99)
    assert _shapes(model) == [(1, round(0.01 * HIDDEN))] * 2
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        pruner.prune_to(1.0)


def _weaken(model, head, channels, scale=1e-3):
    """Make ``head`` and MLP ``channels`` of every block weak: tiny inputs, zero outputs (they add nothing)."""
    d = C // HEADS
    with torch.no_grad():
        for blk in model.blocks:
            for s in range(3):  # the head's q, k and v rows
                blk.attn.qkv.weight[s * C + head * d: s * C + (head + 1) * d] *= scale
            blk.attn.proj.weight[:, head * d:(head + 1) * d] = 0
            blk.mlp.fc1.weight[channels] *= scale
            blk.mlp.fc2.weight[:, channels] = 0


@pytest.mark.parametrize("criterion", ["l2_magnitude", "global_magnitude"])
def test_magnitude_cuts_the_weakest_head_and_channels_and_the_rest_computes_as_before(criterion):
    model = _vit()
    weak = list(range(0, HIDDEN, 4))  # a quarter of the MLP channels
    _weaken(model, head=2, channels=weak)
    qkv_before = model.blocks[0].attn.qkv.weight.detach().clone()
    x = torch.randn(2, 3, 16, 16)
    expected = model.eval()(x)
    ViTPruner(model, torch.zeros(1, 3, 16, 16)).prune_to(0.25, criterion)
    assert _shapes(model) == [(3, HIDDEN - len(weak))] * 2
    d, strong = C // HEADS, [0, 1, 3]
    rows = [s * C + h * d + j for s in range(3) for h in strong for j in range(d)]  # q, k, v of heads 0, 1, 3
    assert torch.equal(model.blocks[0].attn.qkv.weight, qkv_before[rows])
    assert (model.blocks[0].mlp.fc2.weight != 0).all()
    # what went contributed nothing; what stayed is wired as before, heads reshaped by the new num_heads
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("criterion", ["taylor", "hessian_diag"])
def test_gradient_criteria_cut_the_head_and_channels_without_gradient(criterion):
    model = _vit()
    d, gone = C // HEADS, list(range(HIDDEN // 4))
    grad = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    for b in range(2):
        for s in range(3):
            grad[f"blocks.{b}.attn.qkv.weight"][s * C + 1 * d: s * C + 2 * d] = 0  # head 1: no gradient
        grad[f"blocks.{b}.attn.proj.weight"][:, d:2 * d] = 0
        grad[f"blocks.{b}.mlp.fc1.weight"][gone] = 0
        grad[f"blocks.{b}.mlp.fc2.weight"][:, gone] = 0
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight[C + d: C + 2 * d] *= 100  # head 1's keys: the largest weights
    before = model.blocks[0].attn.qkv.weight.detach().clone()
    fc1_before = model.blocks[0].mlp.fc1.weight.detach().clone()
    squared = {n: g.square() for n, g in grad.items()}
    ViTPruner(model, torch.zeros(1, 3, 16, 16)).prune_to(0.25, criterion, grad, squared)
    rows = [s * C + h * d + j for s in range(3) for h in (0, 2, 3) for j in range(d)]
    assert torch.equal(model.blocks[0].attn.qkv.weight, before[rows])
    assert torch.equal(model.blocks[0].mlp.fc1.weight, fc1_before[len(gone):])
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kwargs", [{}, {"qk_norm": True, "scale_attn_norm": True, "scale_mlp_norm": True}])
def test_resize_to_state_rebuilds_a_pruned_vit_exactly(kwargs):
    model = _vit(**kwargs)
    ViTPruner(model, torch.zeros(1, 3, 16, 16)).prune_to(0.6)
    state = model.state_dict()
    rebuilt = resize_to_state(_vit(**kwargs), state)
    rebuilt.load_state_dict(state)
    assert _shapes(rebuilt) == _shapes(model) == [(2, round(0.4 * HIDDEN))] * 2
    x = torch.randn(3, 3, 16, 16)
    assert torch.equal(model.eval()(x), rebuilt.eval()(x))


def test_models_whose_attention_it_cannot_prune_are_refused():
    with pytest.raises(ValueError, match=r"does not handle attention layers AttentionPoolLatent: it prunes "
                                         r"attention heads only in timm Vision Transformers"):
        ViTPruner(_vit(global_pool="map"), torch.zeros(1, 3, 16, 16))
    glu = _vit(mlp_layer=models.import_timm().layers.SwiGLUPacked)
    with pytest.raises(ValueError, match=r"MLPs that are not timm's Mlp .*blocks.0.mlp and 1 more: GluMlp"):
        ViTPruner(glu, torch.zeros(1, 3, 16, 16))


# ---------------------------------------------------------------- spec and training loop

def _raw(model, structure="structured"):
    raw = yaml.safe_load(QUICKSTART.read_text())
    for key in ("smoke_test", "target_sparsities", "seeds", "strategies"):
        raw.pop(key)
    raw.update(dataset={"name": "digits", "val_size": 0.2, "train_subset": 600, "channels": 3},
               model=copy.deepcopy(model), structure=structure, target_sparsities=[0.75], seeds=[0],
               strategies={"geometric": {"rate0": 0.5, "patience": 1}},  # events at 0.5 and 0.75
               pretrain={"epochs": 8, "lr": 0.1, "batch_size": 32}, budget={"epochs": 6})
    return raw


VIT_SPEC = {"source": "timm", "name": "vit_small_patch16_224",
            "kwargs": {"img_size": 8, "patch_size": 4, **TINY}}  # 4 patches: learns 8x8 digits in seconds


@pytest.fixture(scope="module")
def vit_trial():
    torch.set_num_threads(1)
    spec = parse_spec(_raw(VIT_SPEC), check_data=True)  # validate accepts a structured timm ViT
    trial = next(t for t in spec.trials() if not t.is_dense)
    assert trial.sparsities == pytest.approx((0.5, 0.75)) and trial.structure == "structured"
    data = load_dataset("digits", val_size=0.2, train_subset=600, channels=3)
    state, _ = pretrain_dense(trial, data, torch.device("cpu"))
    return trial, data, state


def test_a_structured_vit_trial_prunes_heads_and_channels_and_resumes_identically(vit_trial):
    trial, data, state = vit_trial
    saved: list[LoopState] = []
    layers, finals = {}, []
    hooks = Hooks(on_event=lambda r, s: saved.append(s), on_layers=layers.update, on_final=finals.append)
    full = run_trial(trial, data, state, torch.device("cpu"), hooks)
    assert [r.sparsity for r in full] == pytest.approx([0.5, 0.75])
    assert _shapes(finals[0]) == [(1, HIDDEN // 4)] * 2
    assert layers["blocks.0.attn.qkv"]["heads"] == 1  # the loop picked the ViT pruner
    dense_params = prunable_count(models.build(trial.model, data.in_shape, data.num_classes))
    assert prunable_count(finals[0]) == round((1 - full[-1].param_sparsity) * dense_params)
    assert full[-1].cost_epochs <= trial.budget.epochs
    assert full[-1].val_accuracy > 0.5 and full[-1].best_epoch > 0  # it learns: the resumed event really trains
    resumed = run_trial(trial, data, state, torch.device("cpu"), resume=saved[0])
    assert [r.val_accuracy for r in resumed] == [r.val_accuracy for r in full[1:]]
    assert [r.test_loss for r in resumed] == [r.test_loss for r in full[1:]]
    assert [r.mac_sparsity for r in resumed] == [r.mac_sparsity for r in full[1:]]


def test_validate_refuses_attention_it_cannot_prune_naming_what_it_can(tmp_path, monkeypatch):
    module = tmp_path / "mha_net_for_structured_vit.py"
    module.write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self, num_classes):\n"
        "        super().__init__()\n"
        "        self.embed = torch.nn.Linear(8, 16)\n"
        "        self.attn = torch.nn.MultiheadAttention(16, 2, batch_first=True)\n"
        "        self.head = torch.nn.Linear(16, num_classes)\n"
        "    def forward(self, x):\n"
        "        t = self.embed(x.mean(1))\n"
        "        return self.head(self.attn(t, t, t)[0].mean(1))\n"
        "def build(num_classes=10):\n"
        "    return Net(num_classes)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the python source appends the working directory
    mha = {"source": "python", "name": "mha_net_for_structured_vit:build"}
    parse_spec(_raw(mha, structure="unstructured"), check_data=True)  # fine unstructured
    with pytest.raises(SpecError) as info:
        parse_spec(_raw(mha), check_data=True)
    assert info.value.field == "structure"
    assert "does not handle attention layers MultiheadAttention: it prunes attention heads only in timm Vision " \
           "Transformers" in str(info.value) and "use structure: unstructured" in str(info.value)
    pooled = {**VIT_SPEC, "kwargs": {**VIT_SPEC["kwargs"], "global_pool": "map"}}
    with pytest.raises(SpecError, match="attention layers AttentionPoolLatent"):
        parse_spec(_raw(pooled), check_data=True)
