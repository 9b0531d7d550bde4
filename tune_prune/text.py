"""Text for causal language models: files -> tokens -> packed blocks -> seeded splits, cached.

A corpus is a list of local UTF-8 files (globs allowed). The tokenizer is either loaded
from a local directory (anything ``transformers.AutoTokenizer`` reads: the model's own)
or trained on the corpus itself, byte-level BPE with a fixed vocabulary, which is how
the offline tests and the CPU spec get one with no download. The token stream is cut
into blocks of ``block_size`` tokens (the tail that does not fill a block is dropped),
and the blocks are split into train/val/test by a seeded permutation, so the splits do
not depend on the trial seed and every trial sees the same test blocks.

The result is cached under ``cache_dir/text/<key>.pt`` (plus the trained tokenizer),
where the key hashes the files' CONTENT (not their paths), the tokenizer's identity,
the block size and the split settings: a changed file never reuses an old entry.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

#: tokens reserved at the start of a trained vocabulary
SPECIAL_TOKENS = ("<|endoftext|>",)


@dataclass
class TextBlocks:
    """Packed token blocks per split, [n_blocks, block_size] int64 each."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    vocab_size: int
    block_size: int
    key: str  # content key of the corpus + tokenizer + packing + split

    def split(self, name: str) -> torch.Tensor:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def to(self, device: torch.device | str) -> "TextBlocks":
        return TextBlocks(self.train.to(device), self.val.to(device), self.test.to(device), self.vocab_size,
                          self.block_size, self.key)


def corpus_files(patterns: Sequence[str]) -> list[Path]:
    """The files the patterns name, sorted and de-duplicated; an error names a pattern that matches none."""
    files: list[Path] = []
    for pattern in patterns:
        matched = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                         if Path(p).is_file())
        if not matched:
            raise FileNotFoundError(f"no file matches {pattern!r}")
        files += matched
    return list(dict.fromkeys(p.resolve() for p in files))


def read_corpus(files: Iterable[Path]) -> str:
    """The files' text, joined by the end-of-text token; a file that is not UTF-8 text is refused by name."""
    parts = []
    for f in files:
        data = Path(f).read_bytes()
        if b"\0" in data:
            raise ValueError(f"{f} is a binary file, not text")
        try:
            parts.append(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ValueError(f"{f} is not UTF-8 text (byte {exc.start})") from None
    return SPECIAL_TOKENS[0].join(parts)


def _sha(files: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(hashlib.sha256(Path(f).read_bytes()).digest())
    return h.hexdigest()


def train_tokenizer(text: str, vocab_size: int):
    """A byte-level BPE tokenizer trained on ``text`` (deterministic for a given text and size)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_chunks(text), trainer=trainer)
    return tok


def _chunks(text: str, size: int = 1 << 16) -> Iterable[str]:
    for i in range(0, len(text), size):
        yield text[i:i + size]


def pack(ids: Sequence[int] | torch.Tensor, block_size: int) -> torch.Tensor:
    """Consecutive blocks of ``block_size`` tokens; the incomplete tail is dropped."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    n = ids.numel() // block_size
    if n == 0:
        raise ValueError(f"the corpus has {ids.numel()} tokens, fewer than one block of {block_size}")
    return ids[: n * block_size].view(n, block_size)


def _count(size: int | float, n: int) -> int:
    return int(size) if isinstance(size, int) and not isinstance(size, bool) else int(round(size * n))


def split_blocks(blocks: torch.Tensor, val_size: int | float, test_size: int | float,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train, val, test) by a seeded permutation of the blocks; sizes are counts or fractions."""
    n = blocks.shape[0]
    n_val, n_test = _count(val_size, n), _count(test_size, n)
    if n_val < 1 or n_test < 1 or n_val + n_test >= n:
        raise ValueError(f"{n} blocks cannot give {n_val} validation and {n_test} test blocks and still train")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, test, train = order[:n_val], order[n_val:n_val + n_test], order[n_val + n_test:]
    return blocks[train.sort().values], blocks[val.sort().values], blocks[test.sort().values]


def load_text(files: Sequence[str], *, tokenizer: str | None = None, vocab_size: int = 2048,
              block_size: int = 128, val_size: int | float = 0.1, test_size: int | float = 0.1,
              split_seed: int = 0, cache_dir: str | Path = ".tune_prune_cache") -> TextBlocks:
    """Tokenize, pack and split a corpus once; later calls with the same content load the cache.

    ``tokenizer``: a local directory for ``AutoTokenizer`` (the model's own tokenizer), or
    None to train a byte-level BPE of ``vocab_size`` tokens on the corpus itself.
    """
    paths = corpus_files(files)
    identity: dict[str, Any] = {"corpus": _sha(paths), "block_size": block_size, "val_size": val_size,
                                "test_size": test_size, "split_seed": split_seed}
    if tokenizer is None:
        identity["tokenizer"] = {"trained": "byte_level_bpe", "vocab_size": vocab_size}
    else:
        tok_dir = Path(tokenizer).expanduser().resolve()
        identity["tokenizer"] = {"path_content": _sha(sorted(p for p in tok_dir.rglob("*") if p.is_file()))}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / "text"
    entry = cache / f"{key}.pt"
    if entry.exists():
        saved = torch.load(entry, weights_only=True)
        return TextBlocks(saved["train"], saved["val"], saved["test"], int(saved["vocab_size"]), block_size, key)
    text = read_corpus(paths)
    if tokenizer is None:
        tok = train_tokenizer(text, vocab_size)
        ids, vocab = tok.encode(text).ids, tok.get_vocab_size()
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tok_dir))
        ids, vocab = tok(text)["input_ids"], len(tok)
    train, val, test = split_blocks(pack(ids, block_size), val_size, test_size, split_seed)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_suffix(".tmp")
    torch.save({"train": train, "val": val, "test": test, "vocab_size": vocab, "identity": identity}, tmp)
    if tokenizer is None:
        tok.save(str(cache / f"{key}.tokenizer.json"))
    os.replace(tmp, entry)  # atomic: a reader never sees half a cache entry
    return TextBlocks(train, val, test, vocab, block_size, key)
