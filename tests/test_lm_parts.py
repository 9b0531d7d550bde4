"""Language-model building blocks (issue 14): text -> blocks, a GPT-Neo from its config,
what gets pruned in a transformer, perplexity, and the Wanda criterion.

Real English text that exists offline: Debian's `fortunes` package. Models are built
from a config (nothing can be downloaded here); the tokenizer is trained on the text.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import need
from tune_prune.pruning import criteria
from tune_prune.pruning.masks import MaskSet

FORTUNES = Path("/usr/share/games/fortunes")
TINY_NEO = dict(vocab_size=512, max_position_embeddings=64, hidden_size=32, num_layers=2, num_heads=4,
                intermediate_size=64, window_size=16, attention_types=[[["global", "local"], 1]])


@pytest.fixture(scope="module")
def corpus():
    need(FORTUNES.is_dir(), "Debian's fortunes package (apt-get install fortunes)")
    return [str(FORTUNES / "computers"), str(FORTUNES / "science")]


@pytest.fixture(scope="module")
def blocks(corpus, tmp_path_factory):
    from tune_prune.text import load_text

    return load_text(corpus, vocab_size=512, block_size=32, val_size=0.1, test_size=0.1,
                     cache_dir=tmp_path_factory.mktemp("cache"))


def test_text_is_packed_split_by_seed_and_cached_by_content(corpus, blocks, tmp_path):
    from tune_prune.text import load_text, pack, split_blocks

    assert blocks.train.shape[1] == blocks.val.shape[1] == 32 and blocks.train.dtype == torch.long
    n = blocks.train.shape[0] + blocks.val.shape[0] + blocks.test.shape[0]
    assert blocks.val.shape[0] == blocks.test.shape[0] == round(0.1 * n) and n > 1000
    assert int(blocks.train.max()) < blocks.vocab_size <= 512
    # no block is in two splits
    rows = lambda t: {tuple(r.tolist()) for r in t}  # noqa: E731
    assert not rows(blocks.val) & rows(blocks.test)
    # the split depends on split_seed only, deterministically
    b = pack(torch.arange(1000), 10)
    assert all(torch.equal(x, y) for x, y in zip(split_blocks(b, 5, 5, 0), split_blocks(b, 5, 5, 0)))
    assert not torch.equal(split_blocks(b, 5, 5, 0)[1], split_blocks(b, 5, 5, 1)[1])
    # cached by content: the same text elsewhere hits the cache; changed text does not
    copy = tmp_path / "copy.txt"
    copy.write_bytes(Path(corpus[0]).read_bytes())
    first = load_text([str(copy)], vocab_size=512, block_size=32, cache_dir=tmp_path / "c")
    moved = tmp_path / "moved.txt"
    copy.rename(moved)
    assert load_text([str(moved)], vocab_size=512, block_size=32, cache_dir=tmp_path / "c").key == first.key
    moved.write_text(moved.read_text() + "\nA new line changes the corpus.\n")
    assert load_text([str(moved)], vocab_size=512, block_size=32, cache_dir=tmp_path / "c").key != first.key
    with pytest.raises(FileNotFoundError, match="no file matches"):
        load_text([str(tmp_path / "none*.txt")], cache_dir=tmp_path / "c")


def test_a_tiny_gpt_neo_from_its_config_prunes_its_attention_and_mlp_linears_only():
    from tune_prune.lm import build_causal_lm, transformer_linears

    model = build_causal_lm(config=TINY_NEO)
    linears = transformer_linears(model)
    assert len(linears) == 2 * 6  # q, k, v, out_proj, c_fc, c_proj per block
    assert all(".attn." in n or ".mlp." in n for n in linears) and "lm_head" not in linears
    masks = MaskSet(model, include=linears)
    assert not any("wte" in n or "wpe" in n or "ln" in n or "lm_head" in n for n in masks.params)
    masks.prune_to(0.5)
    assert masks.measured_sparsity() == pytest.approx(0.5, abs=1e-4)
    # the tied embedding / LM head stays whole
    assert (model.lm_head.weight != 0).all() and model.lm_head.weight is model.transformer.wte.weight


def test_perplexity_is_exp_of_the_mean_token_loss_and_falls_with_training(blocks):
    from tune_prune.lm import build_causal_lm, evaluate_lm, lm_loss

    torch.manual_seed(0)
    model = build_causal_lm(config={**TINY_NEO, "vocab_size": blocks.vocab_size})
    before = evaluate_lm(model, blocks.val)
    assert before.perplexity == pytest.approx(math.exp(before.loss))
    assert before.tokens == blocks.val.numel() - blocks.val.shape[0]
    # untrained: near a uniform guess over the vocabulary
    assert 0.5 * blocks.vocab_size < before.perplexity < 2 * blocks.vocab_size
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        opt.zero_grad()
        lm_loss(model, blocks.train[torch.randint(0, blocks.train.shape[0], (16,), generator=g)]).backward()
        opt.step()
    after = evaluate_lm(model, blocks.val)
    assert after.perplexity < 0.5 * before.perplexity


def test_wanda_prunes_the_smallest_weight_times_input_norm_within_each_row():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0],
                      [4.0, 3.0, 2.0, 1.0]])
    x_sq = torch.tensor([100.0, 1.0, 1.0, 1.0])  # feature 0 is loud: ||x_0|| = 10
    s = criteria.wanda_scores(w, x_sq)
    # |w| * ||x||: row 0 = [10, 2, 3, 4], row 1 = [40, 3, 2, 1]; ranks within each row
    assert s.tolist() == [[0.875, 0.125, 0.375, 0.625], [0.875, 0.625, 0.375, 0.125]]
    layer = torch.nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    masks = MaskSet(torch.nn.Sequential(layer))
    masks.prune_to(0.5, scores={"0.weight": s})
    # each row loses its two lowest |w|*||x|| entries; plain magnitude would have cut w[0, 0]
    assert (layer.weight != 0).tolist() == [[True, False, False, True], [True, True, False, False]]


def test_wanda_calibration_reads_the_inputs_of_every_prunable_linear_and_plugs_into_scores():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    masks = MaskSet(model)
    x = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0]])
    sums = criteria.activation_sq_sums(model, masks.params, lambda: model(x))
    assert set(sums) == {"0.weight", "2.weight"}
    assert sums["0.weight"].tolist() == [10.0, 4.0, 1.0]
    hidden = torch.relu(model[0](x)).detach()
    assert torch.allclose(sums["2.weight"], hidden.pow(2).sum(0))
    assert not model[0]._forward_hooks  # hooks are removed
    out = criteria.scores("wanda", masks.params, activations=sums)
    assert set(out) == set(masks.params) and all(((v > 0) & (v < 1)).all() for v in out.values())
    with pytest.raises(ValueError, match="activation statistics"):
        criteria.scores("wanda", masks.params)


def test_a_wanda_trial_on_real_digits_reaches_its_schedule():
    from test_loop import make_trial
    from dataclasses import replace

    from tune_prune.data import load_dataset
    from tune_prune.loop import pretrain_dense, run_trial

    torch.set_num_threads(1)
    data = load_dataset("digits", val_size=0.2, train_subset=600)
    trial = replace(make_trial("geometric", 0.8, (("rate0", 0.5),), patience=1, budget=6), criterion="wanda")
    dense, _ = pretrain_dense(trial, data, torch.device("cpu"))
    records = run_trial(trial, data, dense, torch.device("cpu"))
    assert [round(r.sparsity, 4) for r in records] == [round(s, 4) for s in trial.sparsities]
