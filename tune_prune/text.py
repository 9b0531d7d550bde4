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

A corpus can also be a Hugging Face dataset: a directory written by
``datasets.Dataset.save_to_disk`` (or a ``DatasetDict``'s, with ``hf_split``), or a hub
id where the machine has network access; its ``text_column`` is read, records joined
by the end-of-text token like files. Its key hashes the directory's files (a hub id:
the id, split and revision).

``load_text_bundle`` is what a ``task: causal_lm`` trial loads: the blocks as a
:class:`TextBundle`, which the training loop reads like an image bundle (batches of
blocks; the "labels" of a block are the block itself, shifted inside the model).
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
            raise FileNotFoundError(f"dataset.files: no file matches {pattern!r}")
        files += matched
    return list(dict.fromkeys(p.resolve() for p in files))


def read_corpus(files: Iterable[Path]) -> str:
    """The files' text, joined by the end-of-text token; a file that is not UTF-8 text is refused by name."""
    parts = []
    for f in files:
        data = Path(f).read_bytes()
        if b"\0" in data:
            raise ValueError(f"dataset.files: {f} is a binary file, not text")
        try:
            parts.append(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ValueError(f"dataset.files: {f} is not UTF-8 text (byte {exc.start})") from None
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


def _hf_records(source: str, split: str | None, column: str, revision: str | None) -> tuple[dict[str, Any], Any]:
    """(identity, a function returning the text) of a Hugging Face dataset on disk or on the hub."""
    local = Path(source).expanduser()
    if local.is_dir():
        files = sorted(p for p in local.resolve().rglob("*") if p.is_file())
        identity = {"hf_disk": _sha(files), "split": split, "column": column}
    else:
        identity = {"hf_hub": source, "split": split or "train", "column": column, "revision": revision}

    def read() -> str:
        try:
            import datasets
        except ImportError:  # pragma: no cover - a dependency of the package
            raise RuntimeError("dataset.hf_dataset needs the datasets package (pip install datasets)") from None
        if local.is_dir():
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                if split is None or split not in ds:
                    raise ValueError(f"dataset.hf_split: {source} holds splits {', '.join(ds)}; name one"
                                     + ("" if split is None else f" (not {split!r})"))
                ds = ds[split]
        else:
            try:
                ds = datasets.load_dataset(source, split=split or "train", revision=revision)
            except (ConnectionError, OSError) as exc:
                raise ValueError(f"dataset.hf_dataset: {source!r} cannot be fetched from the Hugging Face hub here "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); where there is network "
                                 "access, save it with save_to_disk and give that directory") from None
        if column not in ds.column_names:
            raise ValueError(f"dataset.text_column: {source} has no column {column!r}; its columns: "
                             f"{', '.join(ds.column_names)}")
        return SPECIAL_TOKENS[0].join(str(t) for t in ds[column])

    return identity, read


def load_text(files: Sequence[str] | None = None, *, tokenizer: str | None = None, vocab_size: int = 2048,
              block_size: int = 128, val_size: int | float = 0.1, test_size: int | float = 0.1,
              split_seed: int = 0, cache_dir: str | Path = ".tune_prune_cache", hf_dataset: str | None = None,
              hf_split: str | None = None, text_column: str = "text", hf_revision: str | None = None) -> TextBlocks:
    """Tokenize, pack and split a corpus once; later calls with the same content load the cache.

    The corpus is ``files`` (paths or globs) or ``hf_dataset`` (a saved dataset directory,
    or a hub id). ``tokenizer``: a local directory for ``AutoTokenizer`` (the model's own
    tokenizer), or None to train a byte-level BPE of ``vocab_size`` tokens on the corpus itself.
    """
    if (files is None) == (hf_dataset is None):
        raise ValueError("dataset.files: give exactly one of files and hf_dataset")
    identity: dict[str, Any] = {"block_size": block_size, "val_size": val_size,
                                "test_size": test_size, "split_seed": split_seed}
    if files is not None:
        paths = corpus_files(files)
        identity["corpus"] = _sha(paths)
        read = lambda: read_corpus(paths)  # noqa: E731
    else:
        identity["corpus"], read = _hf_records(hf_dataset, hf_split, text_column, hf_revision)
    if tokenizer is None:
        identity["tokenizer"] = {"trained": "byte_level_bpe", "vocab_size": vocab_size}
    elif Path(tokenizer).expanduser().is_dir():
        tok_dir = str(Path(tokenizer).expanduser().resolve())
        identity["tokenizer"] = {"path_content": _sha(sorted(p for p in Path(tok_dir).rglob("*") if p.is_file()))}
    elif tokenizer.startswith(("/", ".", "~")) or tokenizer.count("/") > 1:
        raise FileNotFoundError(f"dataset.tokenizer: no such directory: {tokenizer}")
    else:  # a hub id, fetched where there is network access
        tok_dir = tokenizer
        identity["tokenizer"] = {"hub": tokenizer}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / "text"
    entry = cache / f"{key}.pt"
    if entry.exists():
        saved = torch.load(entry, weights_only=True)
        return TextBlocks(saved["train"], saved["val"], saved["test"], int(saved["vocab_size"]), block_size, key)
    text = read()
    if tokenizer is None:
        tok = train_tokenizer(text, vocab_size)
        ids, vocab = tok.encode(text).ids, tok.get_vocab_size()
    else:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(tok_dir)
        except OSError as exc:
            raise ValueError(f"dataset.tokenizer: {tokenizer!r} cannot be loaded ({str(exc).splitlines()[0][:160]}); "
                             "give a local tokenizer directory (save_pretrained)") from None
        # one long text: the tokenizer's max length is a per-sequence limit, blocks are cut below
        ids, vocab = tok(text, verbose=False)["input_ids"], len(tok)
    train, val, test = split_blocks(pack(ids, block_size), val_size, test_size, split_seed)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"train": train, "val": val, "test": test, "vocab_size": vocab, "identity": identity}, tmp)
    if tokenizer is None:
        tok.save(str(cache / f"{key}.tokenizer.json"))
    os.replace(tmp, entry)  # atomic: a reader never sees half a cache entry
    return TextBlocks(train, val, test, vocab, block_size, key)


@dataclass
class TextBundle:
    """A causal-LM dataset as the training loop reads it: batches of token blocks.

    ``batches`` yields (blocks, blocks): a block is its own target (the model shifts it
    by one token); ``labels(split)`` is the split's blocks, so ``len`` counts blocks.
    ``num_classes`` is the vocabulary size (the LM head's outputs).
    """

    name: str
    blocks: TextBlocks
    train_subset: int | None = None
    task: str = "causal_lm"
    storage: str = "resident"
    augment: None = None

    def __post_init__(self) -> None:
        if self.train_subset is not None:
            n = self.blocks.train.shape[0]
            if self.train_subset > n:
                raise ValueError(f"dataset.train_subset: {self.train_subset} is more than the {n} training blocks")
            pick = torch.randperm(n, generator=torch.Generator().manual_seed(1))[: self.train_subset].sort().values
            self.blocks = TextBlocks(self.blocks.train[pick.to(self.blocks.train.device)], self.blocks.val,
                                     self.blocks.test, self.blocks.vocab_size, self.blocks.block_size,
                                     self.blocks.key)
            self.train_subset = None

    @property
    def in_shape(self) -> tuple[int]:
        return (self.blocks.block_size,)

    @property
    def num_classes(self) -> int:
        return self.blocks.vocab_size

    def labels(self, split: str) -> torch.Tensor:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split: must be one of train, val, test, got {split!r}")
        return self.blocks.split(split)

    def size(self, split: str) -> int:
        return int(self.labels(split).shape[0])

    def tokens(self, split: str) -> int:
        return self.size(split) * self.blocks.block_size

    def batches(self, split: str, batch_size: int, generator: torch.Generator | None = None,
                max_batches: int | None = None) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of blocks: a seeded permutation with ``generator``, stored order without."""
        x = self.labels(split)
        n = x.shape[0]
        starts = range(0, n, batch_size)
        if max_batches is not None:
            starts = starts[:max_batches]
        order = None if generator is None else torch.randperm(n, generator=generator, device=generator.device)
        for i in starts:
            xb = x[i:i + batch_size] if order is None else x[order[i:i + batch_size].to(x.device)]
            yield xb, xb

    def prepare(self, xb: torch.Tensor, train: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        return xb  # token ids go in as they are

    def to(self, device: torch.device | str) -> "TextBundle":
        return TextBundle(self.name, self.blocks.to(device), None, self.task, self.storage)

    def with_normalization(self, mean: Sequence[float], std: Sequence[float]) -> "TextBundle":
        raise ValueError("model.normalize: token inputs have no normalisation")

    def __repr__(self) -> str:
        b = self.blocks
        return (f"TextBundle({self.name}: {b.train.shape[0]}/{b.val.shape[0]}/{b.test.shape[0]} blocks of "
                f"{b.block_size} tokens, vocabulary {b.vocab_size})")


#: the dataset name of a text corpus in a spec
TEXT_DATASET = "text"


def load_text_bundle(*, files: Sequence[str] | None = None, hf_dataset: str | None = None,
                     hf_split: str | None = None, text_column: str = "text", hf_revision: str | None = None,
                     tokenizer: str | None = None, vocab_size: int = 2048, block_size: int = 128,
                     val_size: int | float = 0.1, test_size: int | float = 0.1, train_subset: int | None = None,
                     split_seed: int = 0, cache_dir: str | Path | None = None, root: str | None = None,
                     download: bool = False) -> TextBundle:
    """The ``text`` dataset of a spec, ready for a causal-LM trial (see load_text)."""
    if cache_dir is None:
        from tune_prune.data import data_root

        cache_dir = data_root(root)
    blocks = load_text(files, tokenizer=tokenizer, vocab_size=vocab_size, block_size=block_size, val_size=val_size,
                       test_size=test_size, split_seed=split_seed, cache_dir=cache_dir, hf_dataset=hf_dataset,
                       hf_split=hf_split, text_column=text_column, hf_revision=hf_revision)
    return TextBundle(TEXT_DATASET, blocks, train_subset)
