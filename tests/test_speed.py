"""Inference timing of final models: what is measured, how, and the CSR export."""

import math

import pandas as pd
import pytest
import torch
from torch import nn

from tune_prune import frontier as fr
from tune_prune.models import build_model
from tune_prune.pruning.masks import MaskSet
from tune_prune.report import speed_table
from tune_prune.speed import compare, speedup_metrics, to_csr


class Counting(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.batches = inner, []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return self.inner(x)


def test_variants_are_warmed_up_then_timed_in_rotating_order_at_both_batch_sizes(monkeypatch):
    import tune_prune.speed as speed

    order = []

    class Named(Counting):
        def __init__(self, name):
            super().__init__(nn.Linear(4, 2))
            self.name = name

        def forward(self, x):
            order.append((self.name, x.shape[0]))
            return super().forward(x)

    monkeypatch.setattr(speed, "MIN_SAMPLE_SECONDS", 0.0)  # one call per sample: countable
    a, b, c = Named("a"), Named("b"), Named("c")
    t = compare({"a": a, "b": b, "c": c}, (4,), torch.device("cpu"), batch_size=32, warmup=2, repeats=3)
    for m in (a, b, c):
        assert m.batches == [1, 1, 32, 32] + [1, 32] * 3  # warm-up per input, then one sample per round
        assert not m.training
    timed = [name for name, n in order[12:] if n == 1]
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # each round starts one later
    assert t["a"].latency_ms > 0 and t["a"].throughput > 0


def test_a_sample_of_a_tiny_model_repeats_calls_to_last_long_enough():
    m = Counting(nn.Linear(4, 2))
    compare({"m": m}, (4,), torch.device("cpu"), batch_size=8, warmup=1, repeats=2)
    assert len(m.batches) > 2 * (1 + 2)  # far more calls than one per sample: a call takes microseconds


def test_csr_export_computes_the_same_function_and_converts_only_sparse_linears():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10, hidden=[64, 32])
    masks = MaskSet(model)
    masks.prune_to(0.9)
    with torch.no_grad():
        model[3].weight.normal_()  # make one layer dense again: it must stay nn.Linear
    csr, converted = to_csr(model)
    layers = [m for m in csr.modules() if type(m).__name__ in ("Linear", "CsrLinear")]
    kinds = [type(m).__name__ for m in layers]
    assert converted == kinds.count("CsrLinear") == 2 and kinds[1] == "Linear"
    x = torch.randn(7, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(csr(x), model.eval()(x), atol=1e-5)
    assert isinstance(model[1], nn.Linear)  # the original is untouched


def test_speedup_metrics_report_ratios_of_the_measured_times():
    torch.manual_seed(0)
    dense = build_model("mlp", (1, 8, 8), 10, hidden=[64])
    pruned = build_model("mlp", (1, 8, 8), 10, hidden=[64])
    MaskSet(pruned).prune_to(0.95)
    m = speedup_metrics(dense, pruned, (1, 8, 8), torch.device("cpu"), structured=False, batch_size=16, repeats=3)
    assert m["latency_speedup"] == pytest.approx(m["dense_latency_ms"] / m["latency_ms"])
    assert m["throughput_speedup"] == pytest.approx(m["throughput"] / m["dense_throughput"])
    assert "csr_latency_speedup" in m and all(math.isfinite(v) and v > 0 for v in m.values())
    s = speedup_metrics(dense, pruned, (1, 8, 8), torch.device("cpu"), structured=True, batch_size=16, repeats=3)
    assert not any(k.startswith("csr") for k in s)


def _records():
    """Two configurations of one strategy: one aimed at 0.9 (passing 0.5), one aimed at 0.5."""
    rows = []
    for key, target, events, lat in (("a", 0.9, [(1, 0.5), (2, 0.9)], 2.0), ("b", 0.5, [(1, 0.5)], 1.5)):
        for event, sparsity in events:
            rows.append(dict(run_id=key, status="FINISHED", trial_name=key, trial_key=key, strategy="geometric",
                             config_key=key, config=key, target_sparsity=target, seed=0, event=event,
                             sparsity=sparsity, val_accuracy=0.9 if key == "a" else 0.8, test_accuracy=0.9,
                             cost_epochs=event, param_sparsity=sparsity, mac_sparsity=float("nan"),
                             latency_ms=1.0, dense_latency_ms=lat, latency_speedup=lat, throughput_speedup=lat,
                             csr_latency_speedup=float("nan"), csr_throughput_speedup=float("nan")))
    return pd.DataFrame(rows)


def test_speed_belongs_only_to_levels_a_run_was_aimed_at():
    front = fr.frontier(_records(), [0.5, 0.9])
    at = {r.sparsity_level: r for r in front.itertuples()}
    # at 0.5 the winner on validation is config a, which only passed through 0.5
    assert at[0.5].config_key == "a" and math.isnan(at[0.5].latency_speedup_mean)
    assert at[0.9].latency_speedup_mean == 2.0
    table = speed_table(front)
    assert table["latency speed-up"].tolist() == ["-", "2.00x"]
    assert "MACs removed (%)" not in table.columns  # unstructured: nothing measured there
    assert "CSR latency speed-up" not in table.columns  # no CSR export was timed
    # timing off and unstructured: nothing to show beyond the frontier itself
    untimed = _records().assign(latency_speedup=float("nan"), throughput_speedup=float("nan"),
                                latency_ms=float("nan"), dense_latency_ms=float("nan"))
    assert speed_table(fr.frontier(untimed, [0.5, 0.9])).empty
