"""Datasets as uint8 images, split deterministically from ``split_seed``: resident or streamed.

Most datasets fit in memory, so a trial indexes batches out of resident tensors
(on CPU or GPU) instead of running a DataLoader: a :class:`DataBundle`. Data
read from image files (``imagefolder``, ``torchvision``) whose decoded images
would not fit under :func:`resident_limit_bytes` becomes a
:class:`StreamingBundle` instead, whose DataLoader workers decode each batch
from the files. Both kinds have one surface (``batches``, ``prepare``, ``to``,
``in_shape``, ``mean``/``std``, ``with_normalization``, ``storage``) and yield
the same uint8 batches in the same order for the same generator, so a trial
trains identically on either; ``storage`` says which one a run got.

Images stay uint8 until ``prepare`` turns a batch into normalized floats,
which keeps a bundle four times smaller and makes moving it to a GPU cheap.

Splits depend on ``split_seed`` only, never on a trial's seed, so every trial of
a sweep trains, validates and tests on the same examples. Index convention: the
validation (and, without an official test split, the test) examples are held
out of the official training examples, so the three splits are disjoint; each
split keeps the original order of its examples. The splits are chosen from the
labels alone, before anything is decoded, so resident and streaming bundles of
the same data hold the same examples.

torchvision is imported lazily (and only through
:func:`tune_prune._torchvision.import_torchvision`) by the loaders that need it,
so ``import tune_prune.data`` and loading ``digits`` or CIFAR stay light.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gzip
import inspect
import logging
import math
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from tune_prune._torchvision import import_torchvision
from tune_prune.fields import PositiveInt, Size
from tune_prune.registry import Registry

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "STORAGES",
    "Bundle",
    "DataBundle",
    "ImageSource",
    "RawDataset",
    "StreamingBundle",
    "channel_stats",
    "data_root",
    "load_dataset",
    "random_crop_flip",
    "resident_limit_bytes",
]

logger = logging.getLogger(__name__)

ENV_DATA_ROOT = "TUNE_PRUNE_DATA"
DEFAULT_DATA_ROOT = "~/.cache/tune_prune/data"
# Where Debian's dataset-fashion-mnist package puts the IDX .gz files.
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
AUGMENTATIONS = ("crop_flip",)
CROP_PADDING = 4  # pixels of zero padding before the random crop, as in the CIFAR ResNet papers
SPLITS = ("train", "val", "test")

#: dataset.storage: resident tensors, batches streamed from the files, or (auto) resident when they fit.
STORAGES = ("auto", "resident", "streaming")
Storage = Literal["auto", "resident", "streaming"]
#: auto storage keeps decoded images resident up to this share of the machine's memory (and of
#: the GPU's, when one is visible, since a resident bundle moves to the trial's device whole).
#: Each concurrent trial holds its own copy, hence a quarter rather than most of it.
RESIDENT_MEMORY_FRACTION = 0.25
#: A fixed limit in bytes instead of the fraction (None: use the fraction); tests set it.
RESIDENT_LIMIT_BYTES: int | None = None
#: Images per batch when decoding a whole split to make it resident.
DECODE_BATCH = 256

# Tags that make the test / validation / train-subset permutations independent
# streams of the same split_seed: changing val_size never moves the test set.
_TEST_STREAM, _VAL_STREAM, _SUBSET_STREAM = 1, 2, 3


# --------------------------------------------------------------------------- bundles


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split: must be one of {', '.join(SPLITS)}, got {split!r}")


def _batch_chunks(
    n: int, batch_size: int, generator: torch.Generator | None, max_batches: int | None
) -> list[slice] | list[torch.Tensor]:
    """The batches a split is read in: index tensors of a permutation drawn from ``generator``
    (on the generator's device), or slices in stored order when there is no generator."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
        raise ValueError(f"batch_size: must be an int >= 1, got {batch_size!r}")
    starts = range(0, n, batch_size)
    if max_batches is not None:
        starts = starts[:max_batches]
    if generator is None:
        return [slice(i, i + batch_size) for i in starts]
    # Drawn now, before the caller draws augmentation from the same generator: the
    # order of draws (whole permutation, then each batch's crops) is part of a seed's meaning.
    order = torch.randperm(n, generator=generator, device=generator.device)
    return [order[i : i + batch_size] for i in starts]


class _BundleOps:
    """What both bundle kinds share: label lookup and turning a uint8 batch into model input."""

    storage: ClassVar[str]
    in_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str | None

    def labels(self, split: str) -> torch.Tensor:
        """The int64 labels of ``split`` ('train', 'val' or 'test'), on the bundle's device."""
        _check_split(split)
        return getattr(self, f"y_{split}")

    def size(self, split: str) -> int:
        """Number of examples in ``split``."""
        return len(self.labels(split))

    def prepare(
        self, xb: torch.Tensor, train: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Turn a uint8 batch into normalized float32 on ``xb``'s device.

        With ``train=True`` and ``augment == "crop_flip"`` each image also gets
        its own random crop (after 4 px of zero padding) and horizontal flip;
        ``generator`` (on ``xb``'s device) makes that reproducible.
        """
        if xb.dtype != torch.uint8 or xb.dim() != 4 or tuple(xb.shape[1:]) != self.in_shape:
            raise ValueError(
                f"prepare: expected a uint8 batch of shape (B, *{self.in_shape}), "
                f"got {xb.dtype} of shape {tuple(xb.shape)}"
            )
        if train and self.augment == "crop_flip":
            # Pad with black (0) before normalizing, as torchvision's
            # RandomCrop(padding=4) does on CIFAR images.
            xb = random_crop_flip(xb, CROP_PADDING, generator)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=xb.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=xb.device).view(1, -1, 1, 1)
        return xb.to(torch.float32).div_(255.0).sub_(mean).div_(std)

    def _check_augment(self, kind: str) -> None:
        if self.augment is not None and self.augment not in AUGMENTATIONS:
            raise ValueError(
                f"{kind}.augment: must be null or one of {', '.join(AUGMENTATIONS)}, "
                f"got {self.augment!r}"
            )


def _normalization_pair(
    mean: Sequence[float], std: Sequence[float], channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"normalization: need one mean and one std per channel ({channels})")
    return mean, std


@dataclass(frozen=True, eq=False)  # eq=False: field-wise == on tensors is ambiguous
class DataBundle(_BundleOps):
    """Train/val/test splits of one dataset as resident uint8 image and int64 label tensors.

    Images have shape (N, C, H, W); ``mean``/``std`` are per-channel statistics
    of ``x_train / 255`` used by :meth:`prepare`.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str | None = None

    storage: ClassVar[str] = "resident"

    def __post_init__(self) -> None:
        # A loader bug (wrong dtype, mismatched lengths) should fail here, not
        # as a silent float/uint8 mix-up deep inside a trial.
        shape = tuple(self.x_train.shape[1:])
        for split in SPLITS:
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise ValueError(
                    f"DataBundle.x_{split}: expected a uint8 tensor (N, C, H, W), "
                    f"got {x.dtype} of shape {tuple(x.shape)}"
                )
            if tuple(x.shape[1:]) != shape:
                raise ValueError(
                    f"DataBundle.x_{split}: image shape {tuple(x.shape[1:])} != x_train's {shape}"
                )
            if y.dtype != torch.int64 or tuple(y.shape) != (x.shape[0],):
                raise ValueError(
                    f"DataBundle.y_{split}: expected an int64 tensor of shape ({x.shape[0]},), "
                    f"got {y.dtype} of shape {tuple(y.shape)}"
                )
        if len(self.mean) != shape[0] or len(self.std) != shape[0]:
            raise ValueError(f"DataBundle.mean/std: need one value per channel ({shape[0]})")
        self._check_augment("DataBundle")

    @property
    def in_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.x_train.shape[1:]
        return (int(c), int(h), int(w))

    def to(self, device: torch.device | str) -> DataBundle:
        """A new bundle with every tensor on ``device``."""
        moved = {
            f"{kind}_{split}": getattr(self, f"{kind}_{split}").to(device)
            for kind in ("x", "y")
            for split in SPLITS
        }
        return dataclasses.replace(self, **moved)

    def with_normalization(self, mean: Sequence[float], std: Sequence[float]) -> DataBundle:
        """The same data normalized with ``mean``/``std`` (e.g. a pretrained model's own)."""
        mean, std = _normalization_pair(mean, std, self.in_shape[0])
        return dataclasses.replace(self, mean=mean, std=std)

    def batches(
        self,
        split: str,
        batch_size: int,
        generator: torch.Generator | None = None,
        max_batches: int | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images, int64 labels) batches of ``split`` on the bundle's device.

        With ``generator`` the order is ``torch.randperm`` drawn from it at this call
        (on its device); without, the stored order. ``max_batches`` stops early.
        """
        y = self.labels(split)
        chunks = _batch_chunks(len(y), batch_size, generator, max_batches)
        return _index_batches(getattr(self, f"x_{split}"), y, chunks)

    def __repr__(self) -> str:
        def dims(x: torch.Tensor) -> str:
            return "x".join(str(d) for d in x.shape)

        return (
            f"DataBundle(name={self.name!r}, train={dims(self.x_train)}, val={dims(self.x_val)}, "
            f"test={dims(self.x_test)}, num_classes={self.num_classes}, augment={self.augment!r}, "
            f"device={self.x_train.device})"
        )


def _index_batches(
    x: torch.Tensor, y: torch.Tensor, chunks: Sequence[slice | torch.Tensor]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for idx in chunks:
        yield x[idx], y[idx]


class ImageSource(torch.utils.data.Dataset):
    """Images decoded on demand, indexed like the uint8 (N, C, H, W) tensor it never builds.

    ``source[i]`` decodes image ``i`` into a uint8 (C, H, W) tensor; ``source[idx]``
    with an index tensor (or slice) is the subset at those positions, still
    undecoded, so the splitting code treats sources and tensors alike. Sources
    travel to DataLoader worker processes: they hold paths or a dataset object,
    never open files. Subclasses implement ``_decode(item)``.
    """

    def __init__(self, image_shape: tuple[int, int, int], count: int) -> None:
        self._image_shape = tuple(int(d) for d in image_shape)
        self._items = np.arange(count, dtype=np.int64)  # positions in the underlying collection

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), *self._image_shape)  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, torch.Tensor) and index.dim() == 0:
            index = int(index)
        if isinstance(index, Integral):
            item = int(self._items[index])
            image = self._decode(item)
            if tuple(image.shape) != self._image_shape or image.dtype != torch.uint8:
                raise ValueError(
                    f"{self._describe(item)} decodes to {image.dtype} {tuple(image.shape)}, "
                    f"expected uint8 {self._image_shape}; images of different sizes need "
                    "dataset.image_size, which resizes and center-crops them all"
                )
            return image
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        subset = copy.copy(self)
        subset._items = self._items[index]
        return subset

    def decode_all(self, workers: int = 0) -> torch.Tensor:
        """Every image as one resident uint8 (N, C, H, W) tensor, decoded by ``workers`` processes."""
        x = torch.empty(self.shape, dtype=torch.uint8)
        loader = torch.utils.data.DataLoader(self, batch_size=DECODE_BATCH, num_workers=workers)
        pos = 0
        for xb in loader:
            x[pos : pos + len(xb)] = xb
            pos += len(xb)
        return x

    def _decode(self, item: int) -> torch.Tensor:
        raise NotImplementedError

    def _describe(self, item: int) -> str:
        return f"image {item}"


def _resize_crop(size: int | None, resize: int | None) -> Callable[[Any], torch.Tensor]:
    """PIL image -> uint8 (C, H, W): the shorter side resized to ``resize``, then the center
    ``size`` x ``size`` crop (ImageNet's evaluation transform); None keeps the image as it is."""
    tv = import_torchvision()
    t = tv.transforms
    steps = [] if size is None else [t.Resize(resize or size), t.CenterCrop(size)]
    return t.Compose([*steps, t.PILToTensor()])


class _ImageFiles(ImageSource):
    """Image files, each converted to RGB (as ImageFolder's loader does), resized and center-cropped."""

    def __init__(self, paths: Sequence[str], image_size: int, resize: int) -> None:
        super().__init__((3, image_size, image_size), len(paths))
        self._paths = list(paths)
        self._size, self._resize = image_size, resize
        self._transform: Callable[[Any], torch.Tensor] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_transform"] = None  # rebuilt in the worker
        return state

    def _decode(self, item: int) -> torch.Tensor:
        from PIL import Image

        if self._transform is None:
            self._transform = _resize_crop(self._size, self._resize)
        with open(self._paths[item], "rb") as f:
            image = Image.open(f).convert("RGB")
        return self._transform(image)

    def _describe(self, item: int) -> str:
        return self._paths[item]


class _TorchvisionImages(ImageSource):
    """The images of a torchvision dataset object (its ``transform`` unset), as uint8 tensors."""

    def __init__(
        self, dataset: Any, label: str, channels: int, image_size: int | None, resize: int | None,
        image_shape: tuple[int, int, int],
    ) -> None:
        super().__init__(image_shape, len(dataset))
        self._dataset, self._label = dataset, label
        self._mode = "L" if channels == 1 else "RGB"
        self._size, self._resize = image_size, resize
        self._transform: Callable[[Any], torch.Tensor] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_transform"] = None
        return state

    def _decode(self, item: int) -> torch.Tensor:
        return self.convert(self._dataset[item][0])

    def convert(self, image: Any) -> torch.Tensor:
        """One item's image (PIL, array or tensor) as uint8 (C, H, W) in this source's mode and size."""
        from PIL import Image

        if self._transform is None:
            self._transform = _resize_crop(self._size, self._resize)
        if isinstance(image, torch.Tensor):
            image = import_torchvision().transforms.functional.to_pil_image(image)
        elif isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise ValueError(
                f"dataset.class_name: {self._label} yields {type(image).__name__} images, "
                "not PIL images, arrays or tensors"
            )
        if image.mode != self._mode:
            image = image.convert(self._mode)
        return self._transform(image)

    def decode_all(self, workers: int = 0) -> torch.Tensor:
        # Datasets that hold every image decoded already (MNIST's .data, CIFAR's, SVHN's):
        # index that array instead of a PIL round trip per image, once two probes agree.
        in_memory = self._in_memory() if self._size is None else None
        if in_memory is not None:
            return in_memory[torch.from_numpy(self._items)].contiguous()
        return super().decode_all(workers)

    def _in_memory(self) -> torch.Tensor | None:
        data = getattr(self._dataset, "data", None)
        try:
            t = data if isinstance(data, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(data))
        except (TypeError, ValueError):
            return None
        if t.dtype != torch.uint8 or len(t) != len(self._dataset):
            return None
        channels = self._image_shape[0]
        if t.dim() == 3:
            t = t.unsqueeze(1)
        elif t.dim() == 4 and t.shape[1] != channels and t.shape[-1] == channels:
            t = t.permute(0, 3, 1, 2)  # (N, H, W, C), as CIFAR stores it
        if t.dim() != 4 or tuple(t.shape[1:]) != self._image_shape:
            return None
        probes = {int(self._items[0]), int(self._items[-1])} if len(self) else set()
        if not all(torch.equal(t[i], self._decode(i)) for i in probes):
            return None
        return t

    def _describe(self, item: int) -> str:
        return f"{self._label} item {item}"


@dataclass(frozen=True, eq=False)
class StreamingBundle(_BundleOps):
    """Train/val/test splits whose images are decoded from their files batch by batch.

    Labels are resident int64 tensors on ``device``; images come from
    :class:`ImageSource` objects through one torch DataLoader whose
    ``num_workers`` processes decode them (kept alive across epochs; 0: decode in
    this process), into pinned memory when ``device`` is CUDA. Batches follow the
    same order as a resident bundle's for the same generator.

    ``normalization`` is (mean, std); None means the training split's own
    statistics, computed by one pass over it when first needed (a model's own
    normalization, set by :meth:`with_normalization`, makes that pass unnecessary).
    """

    name: str
    train_images: ImageSource
    val_images: ImageSource
    test_images: ImageSource
    y_train: torch.Tensor
    y_val: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    augment: str | None = None
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    num_workers: int = 0
    device: torch.device = torch.device("cpu")
    # the DataLoader (and its workers) and the computed statistics; per bundle object
    _live: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    storage: ClassVar[str] = "streaming"

    def __post_init__(self) -> None:
        shape = tuple(self.train_images.shape[1:])
        for split in SPLITS:
            x, y = getattr(self, f"{split}_images"), getattr(self, f"y_{split}")
            if not isinstance(x, ImageSource) or tuple(x.shape[1:]) != shape:
                raise ValueError(
                    f"StreamingBundle.{split}_images: expected an ImageSource of {shape} images, got {x!r}"
                )
            if y.dtype != torch.int64 or tuple(y.shape) != (len(x),):
                raise ValueError(
                    f"StreamingBundle.y_{split}: expected an int64 tensor of shape ({len(x)},), "
                    f"got {y.dtype} of shape {tuple(y.shape)}"
                )
        if self.normalization is not None:
            _normalization_pair(*self.normalization, shape[0])
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, Integral) or self.num_workers < 0:
            raise ValueError(f"StreamingBundle.num_workers: must be an int >= 0, got {self.num_workers!r}")
        self._check_augment("StreamingBundle")
        object.__setattr__(self, "device", torch.device(self.device))

    @property
    def in_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.train_images.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def mean(self) -> tuple[float, ...]:
        return self._normalization()[0]

    @property
    def std(self) -> tuple[float, ...]:
        return self._normalization()[1]

    def to(self, device: torch.device | str) -> StreamingBundle:
        """A new bundle whose batches and labels land on ``device``."""
        device = torch.device(device)
        labels = {f"y_{s}": getattr(self, f"y_{s}").to(device) for s in SPLITS}
        return self._replace(device=device, **labels)

    def with_normalization(self, mean: Sequence[float], std: Sequence[float]) -> StreamingBundle:
        """The same data normalized with ``mean``/``std`` (e.g. a pretrained model's own)."""
        return self._replace(normalization=_normalization_pair(mean, std, self.in_shape[0]))

    def with_workers(self, num_workers: int) -> StreamingBundle:
        """The same data decoded by ``num_workers`` DataLoader processes (0: in this process)."""
        return self._replace(num_workers=num_workers)

    def batches(
        self,
        split: str,
        batch_size: int,
        generator: torch.Generator | None = None,
        max_batches: int | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images, int64 labels) batches of ``split`` on the bundle's device.

        The same batches, in the same order, as :meth:`DataBundle.batches` on the
        decoded data: the permutation is drawn from ``generator`` at this call.
        """
        y = self.labels(split)
        # Before the permutation and outside any iteration: the statistics pass reads
        # the training split through the same DataLoader.
        self._normalization()
        chunks = _batch_chunks(len(y), batch_size, generator, max_batches)
        return self._stream(split, y, chunks)

    def _stream(
        self, split: str, y: torch.Tensor, chunks: Sequence[slice | torch.Tensor]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        offset = sum(self.size(s) for s in SPLITS[: SPLITS.index(split)])
        batches = [
            list(range(c.start + offset, min(c.stop, len(y)) + offset))
            if isinstance(c, slice)
            else (c.cpu() + offset).tolist()
            for c in chunks
        ]
        # Workers decode pieces of at most DECODE_BATCH images: an evaluation batch of
        # 1024 is spread over the workers, and what is in flight stays bounded.
        pieces = [b[i : i + DECODE_BATCH] for b in batches for i in range(0, len(b), DECODE_BATCH)]
        loader, release = self._loader(pieces)
        pinned = self.device.type == "cuda"
        try:
            decoded = iter(loader)
            for batch, idx in zip(batches, chunks):
                parts = [
                    next(decoded).to(self.device, non_blocking=pinned)
                    for _ in range(0, len(batch), DECODE_BATCH)
                ]
                yield (parts[0] if len(parts) == 1 else torch.cat(parts)), y[idx]
        finally:
            release()

    def _loader(self, indices: list[list[int]]) -> tuple[Any, Callable[[], None]]:
        """The DataLoader for one pass over ``indices`` (global positions in train+val+test)."""
        live = self._live
        if self.num_workers > 0 and not live.get("busy"):
            # One loader whose workers outlive each pass: its batch list is swapped per pass
            # (indices are drawn in this process, so the workers never see a stale order).
            if "loader" not in live:
                live["sampler"] = _BatchList([])
                live["loader"] = self._data_loader(live["sampler"], persistent=True)
            live["sampler"].batches = indices
            live["busy"] = True
            return live["loader"], lambda: live.update(busy=False)
        # No workers, or a pass started inside another one: a loader of its own.
        return self._data_loader(_BatchList(indices), persistent=False), lambda: None

    def _data_loader(self, sampler: _BatchList, persistent: bool) -> torch.utils.data.DataLoader:
        images = torch.utils.data.ConcatDataset([getattr(self, f"{s}_images") for s in SPLITS])
        return torch.utils.data.DataLoader(
            images,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=persistent and self.num_workers > 0,
        )

    def _normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.normalization is not None:
            return self.normalization
        if "stats" not in self._live:
            counts = torch.zeros((self.in_shape[0], 256), dtype=torch.int64)
            for xb, _ in self._stream("train", self.y_train, _batch_chunks(self.size("train"), DECODE_BATCH, None, None)):
                counts += _channel_counts(xb)
            self._live["stats"] = _stats_from_counts(counts)
        return self._live["stats"]

    def _replace(self, **changes: Any) -> StreamingBundle:
        # computed statistics travel with the copy; the DataLoader does not (it is per device)
        if "normalization" not in changes:
            changes["normalization"] = self.normalization or self._live.get("stats")
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        def dims(x: ImageSource) -> str:
            return "x".join(str(d) for d in x.shape)

        return (
            f"StreamingBundle(name={self.name!r}, train={dims(self.train_images)}, "
            f"val={dims(self.val_images)}, test={dims(self.test_images)}, num_classes={self.num_classes}, "
            f"augment={self.augment!r}, num_workers={self.num_workers}, device={self.device})"
        )


class _BatchList(torch.utils.data.Sampler):
    """A batch sampler that yields a given list of index batches (swappable between passes)."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


#: A dataset as a trial sees it: resident tensors or streamed from files.
Bundle = Union[DataBundle, StreamingBundle]


def resident_limit_bytes() -> int:
    """Bytes of decoded images that auto storage keeps resident (see RESIDENT_MEMORY_FRACTION)."""
    if RESIDENT_LIMIT_BYTES is not None:
        return int(RESIDENT_LIMIT_BYTES)
    limits = [_host_memory_bytes()]
    if torch.cuda.is_available():
        limits.append(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    return int(RESIDENT_MEMORY_FRACTION * min(limits))


def _host_memory_bytes() -> int:
    """Physical memory, or the container's memory limit when that is lower (cgroup v2 or v1)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            total = min(total, int(Path(limit_file).read_text().strip()))  # "max": no limit
    return total


def _default_workers() -> int:
    # The trial's CPU share is its torch thread count (the trainable sets it); one core
    # stays with the training loop, the others decode.
    return max(0, torch.get_num_threads() - 1)



def random_crop_flip(
    xb: torch.Tensor, padding: int = CROP_PADDING, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Randomly crop (after zero padding) and horizontally flip each image of a batch.

    One offset pair and one flip bit per image, drawn from ``generator``; the
    crop and the flip are a single gather on the whole batch, no Python loop.
    Works for any dtype and device; returns a new (B, C, H, W) tensor.
    """
    n, c, h, w = xb.shape
    if n == 0:
        return xb.clone()
    device = xb.device
    padded = F.pad(xb, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    flip = torch.randint(0, 2, (n,), generator=generator, device=device).bool()
    rows = top[:, None] + torch.arange(h, device=device)  # (n, h)
    col = torch.arange(w, device=device)
    # A flipped crop reads the padded columns left + w-1-j instead of left + j.
    cols = left[:, None] + torch.where(flip[:, None], w - 1 - col, col)  # (n, w)
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * padding))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))




def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of ``x / 255`` for a uint8 (N, C, H, W) tensor.

    Computed from a 256-bin histogram per channel: exact, and it never builds a
    float copy of the whole training set. A constant channel gets std 1 so that
    normalizing it cannot divide by zero.
    """
    if x.dtype != torch.uint8:
        raise ValueError(f"channel_stats: expected uint8 images, got {x.dtype}")
    return _stats_from_counts(_channel_counts(x))


def _channel_counts(x: torch.Tensor) -> torch.Tensor:
    """(C, 256) int64 histogram of a uint8 (N, C, H, W) batch: summed over batches, it is
    the whole split's, so a streamed split gets the same statistics as a resident one."""
    return torch.stack([torch.bincount(x[:, ch].reshape(-1).cpu(), minlength=256) for ch in range(x.shape[1])])


def _stats_from_counts(counts: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for ch in range(counts.shape[0]):
        c = counts[ch].to(torch.float64)
        total = c.sum()
        mean = float((c * levels).sum() / total)
        var = max(float((c * levels**2).sum() / total) - mean**2, 0.0)
        std = math.sqrt(var)
        means.append(mean)
        stds.append(std if std > 1e-8 else 1.0)
    return tuple(means), tuple(stds)


# --------------------------------------------------------------------------- splitting


def _check_size(value: object, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{field}: must be an int >= 1 or a float in (0, 1), got {value!r}")
    if isinstance(value, Integral):
        if value < 1:
            raise ValueError(f"{field}: must be an int >= 1 or a float in (0, 1), got {value!r}")
    elif not 0.0 < float(value) < 1.0:
        raise ValueError(f"{field}: must be an int >= 1 or a float in (0, 1), got {value!r}")


def _resolve_size(value: int | float, total: int, field: str) -> int:
    """Number of examples to hold out of ``total``: a count, or a fraction of it."""
    _check_size(value, field)
    count = int(value) if isinstance(value, Integral) else max(1, round(float(value) * total))
    if count >= total:
        raise ValueError(
            f"{field}: holding out {count} of {total} examples leaves none to train on"
        )
    return count


def _permutation(n: int, split_seed: int, stream: int) -> torch.Tensor:
    # numpy's SeedSequence takes (seed, stream) directly, and its streams are the
    # same on every platform; pin numpy (deploy/constraints.txt) to keep splits
    # identical across installs, as NEP 19 lets Generator methods change.
    rng = np.random.default_rng([split_seed, stream])
    return torch.from_numpy(rng.permutation(n))


def _holdout(n: int, count: int, split_seed: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Partition range(n) into (kept, held_out) index tensors, each sorted; |held_out| == count."""
    perm = _permutation(n, split_seed, stream)
    return perm[count:].sort().values, perm[:count].sort().values


def _carve_test(
    x: torch.Tensor, y: torch.Tensor, test_size: int | float, split_seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For datasets without an official test split: hold one out of all examples."""
    train_idx, test_idx = _holdout(
        len(y), _resolve_size(test_size, len(y), "dataset.test_size"), split_seed, _TEST_STREAM
    )
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


# --------------------------------------------------------------------------- registry


class RawDataset(NamedTuple):
    """What a registered loader returns: the full train pool and the test split.

    :func:`load_dataset` then holds out validation, applies ``train_subset``,
    decides resident or streaming (for ImageSources) and computes the
    normalization statistics, the same way for every dataset.
    """

    x_train: torch.Tensor | ImageSource  # uint8 (N, C, H, W), decoded or decoded on demand
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor | ImageSource
    y_test: torch.Tensor
    num_classes: int
    augment: str | None
    storage: str = "auto"  # the dataset.storage asked for; tensors are resident whatever it says


# A loader is called as loader(root=..., download=..., split_seed=..., **options);
# its other keyword-only parameters are the dataset's own options.
DATASETS: Registry[Callable[..., RawDataset]] = Registry("dataset")
_COMMON_ARGS = ("root", "val_size", "train_subset", "split_seed", "download")
_LOADER_ARGS = ("root", "download", "split_seed")


# dataset name -> a check, run at spec time, that the dataset's files can be
# found (or fetched): it only looks at paths, it reads no data. It raises
# FileNotFoundError or ValueError whose message starts with the field at fault.
_DATA_CHECKS: dict[str, Callable[..., None]] = {}


def _data_check(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def add(fn: Callable[..., None]) -> Callable[..., None]:
        _DATA_CHECKS[name] = fn
        return fn

    return add


def check_data(name: str, *, root: str | None = None, download: bool = False, **options: object) -> None:
    """Check, without reading it, that dataset ``name`` can be found (or downloaded) as configured.

    Raises FileNotFoundError or ValueError whose message starts with the field to
    fix (``dataset.root: ...``). Datasets that need no files pass silently.
    """
    check = _DATA_CHECKS.get(name)
    if check is not None:
        own = inspect.signature(check).parameters
        check(root=root, download=download, **{k: v for k, v in options.items() if k in own})


#: (C, H, W) and class count of the datasets whose shape is fixed.
_SHAPES: dict[str, tuple[tuple[int, int, int], int]] = {
    "digits": ((1, 8, 8), 10),
    "fashion_mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
}


def describe(name: str, *, root: str | None = None, **options: object) -> tuple[tuple[int, int, int], int]:
    """(C, H, W) of one input and the number of classes of dataset ``name``, without loading it."""
    channels = options.pop("channels", None)
    if channels is not None:
        (_, h, w), classes = describe(name, root=root, **options)
        return (int(channels), h, w), classes  # type: ignore[call-overload]
    if name in _SHAPES:
        return _SHAPES[name]
    if name == "imagefolder":
        size = int(options.get("image_size", 32))  # type: ignore[call-overload]
        classes = _check_image_tree(str(root), "dataset.root") if root is not None else []
        return (3, size, size), len(classes)
    if name == "torchvision":
        return _torchvision_describe(root, **options)  # type: ignore[arg-type]
    raise ValueError(f"dataset.name: no shape known for {name!r}")


def _loader_options(loader: Callable[..., RawDataset]) -> list[str]:
    params = inspect.signature(loader).parameters
    return sorted(p for p in params if p not in _LOADER_ARGS)


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Where datasets live: ``root``, else $TUNE_PRUNE_DATA, else ~/.cache/tune_prune/data."""
    chosen = root if root is not None else os.environ.get(ENV_DATA_ROOT) or DEFAULT_DATA_ROOT
    return Path(chosen).expanduser()


def load_dataset(
    name: str,
    *,
    root: str | None = None,
    val_size: int | float = 0.1,
    train_subset: int | None = None,
    split_seed: int = 0,
    download: bool = False,
    **options: object,
) -> Bundle:
    """Load dataset ``name`` and split it deterministically: resident, or streamed from its files.

    ``val_size`` (a count, or a fraction of the official training examples) is
    held out of training; ``train_subset`` then keeps a random subset of that
    many training examples (validation and test are never shrunk). All splits
    depend on ``split_seed`` only. ``options`` are the dataset's own options
    (e.g. ``test_size`` for digits, ``image_size`` for imagefolder).

    Data decoded by its loader (digits, Fashion-MNIST, CIFAR) is always a resident
    :class:`DataBundle`. Image files (imagefolder, torchvision) follow the
    ``storage`` option: ``auto`` keeps them resident when the decoded train, val and
    test images fit under :func:`resident_limit_bytes`, else a
    :class:`StreamingBundle` decodes them batch by batch; ``bundle.storage`` says which.
    """
    if name == "text":  # a corpus for a causal LM: token blocks, not labelled images
        from tune_prune.text import load_text_bundle

        return load_text_bundle(root=root, val_size=val_size, train_subset=train_subset, split_seed=split_seed,
                                download=download, **options)  # type: ignore[arg-type]
    loader = DATASETS.get(name)
    _check_size(val_size, "dataset.val_size")
    if train_subset is not None and (
        isinstance(train_subset, bool) or not isinstance(train_subset, Integral) or train_subset < 1
    ):
        raise ValueError(f"dataset.train_subset: must be null or an int >= 1, got {train_subset!r}")
    if isinstance(split_seed, bool) or not isinstance(split_seed, Integral) or split_seed < 0:
        raise ValueError(f"dataset.split_seed: must be an int >= 0, got {split_seed!r}")
    if not isinstance(download, bool):
        raise ValueError(f"dataset.download: must be true or false, got {download!r}")
    channels = options.pop("channels", None)
    own = _loader_options(loader)
    for key in sorted(options):
        if key not in own:
            raise ValueError(
                f"dataset.{key}: not an option of dataset {name!r}; accepted: "
                + ", ".join([*_COMMON_ARGS, *own])
            )

    raw = loader(root=root, download=download, split_seed=int(split_seed), **options)
    if channels is not None:
        raw = _with_channels(raw, int(channels))  # type: ignore[call-overload]
    n = len(raw.y_train)
    train_idx, val_idx = _holdout(
        n, _resolve_size(val_size, n, "dataset.val_size"), int(split_seed), _VAL_STREAM
    )
    if train_subset is not None:
        if train_subset > len(train_idx):
            raise ValueError(
                f"dataset.train_subset: {train_subset} is more than the {len(train_idx)} training "
                f"examples of {name!r} left after holding out validation"
            )
        # Indices into train_idx from their own stream: a larger subset is a
        # superset of a smaller one, and the validation set does not move.
        pick = (
            _permutation(len(train_idx), int(split_seed), _SUBSET_STREAM)[:train_subset]
            .sort()
            .values
        )
        train_idx = train_idx[pick]
    parts = {"train": raw.x_train[train_idx], "val": raw.x_train[val_idx], "test": raw.x_test}
    labels = {
        "train": raw.y_train[train_idx].contiguous(),
        "val": raw.y_train[val_idx].contiguous(),
        "test": raw.y_test.contiguous(),
    }
    if _choose_storage(name, raw.storage, parts) == "streaming":
        return StreamingBundle(
            name=name,
            **{f"{s}_images": parts[s] for s in SPLITS},
            **{f"y_{s}": labels[s] for s in SPLITS},
            num_classes=raw.num_classes,
            augment=raw.augment,
            num_workers=_default_workers(),
        )
    workers = _default_workers()
    x = {
        s: v.contiguous() if isinstance(v, torch.Tensor) else v.decode_all(workers)
        for s, v in parts.items()
    }
    mean, std = channel_stats(x["train"])
    return DataBundle(
        name=name,
        x_train=x["train"],
        y_train=labels["train"],
        x_val=x["val"],
        y_val=labels["val"],
        x_test=x["test"],
        y_test=labels["test"],
        num_classes=raw.num_classes,
        mean=mean,
        std=std,
        augment=raw.augment,
    )


def _with_channels(raw: RawDataset, channels: int) -> RawDataset:
    """Grayscale images with their one channel repeated ``channels`` times (for networks that want RGB)."""
    if not isinstance(raw.x_train, torch.Tensor) or not isinstance(raw.x_test, torch.Tensor):
        raise ValueError("dataset.channels: only for data decoded in memory (image files are read as RGB already)")
    have = raw.x_train.shape[1]
    if have == channels:
        return raw
    if have != 1:
        raise ValueError(f"dataset.channels: the images have {have} channels; only 1-channel images can be "
                         f"repeated to {channels}")
    return raw._replace(x_train=raw.x_train.expand(-1, channels, -1, -1).contiguous(),
                        x_test=raw.x_test.expand(-1, channels, -1, -1).contiguous())


def _check_storage(storage: object) -> str:
    if storage not in STORAGES:
        raise ValueError(f"dataset.storage: must be one of {', '.join(STORAGES)}, got {storage!r}")
    return str(storage)


def _choose_storage(name: str, requested: str, parts: dict[str, torch.Tensor | ImageSource]) -> str:
    """resident or streaming: what was asked for, or (auto) resident when the decoded images fit."""
    if all(isinstance(v, torch.Tensor) for v in parts.values()):
        return "resident"  # decoded by the loader already
    requested = _check_storage(requested)
    if requested != "auto":
        return requested
    needed, limit = sum(math.prod(v.shape) for v in parts.values()), resident_limit_bytes()
    chosen = "resident" if needed <= limit else "streaming"
    logger.info("dataset %s: %.2f GB of decoded images, resident limit %.2f GB: %s",
                name, needed / 1e9, limit / 1e9, chosen)
    return chosen


# --------------------------------------------------------------------------- loaders


@DATASETS.register
def digits(
    *, root: str | None, download: bool, split_seed: int, test_size: Size = 0.2
) -> RawDataset:
    """scikit-learn's bundled 1,797 8x8 digits (no files, no download; ``root`` is unused)."""
    _check_size(test_size, "dataset.test_size")
    from sklearn.datasets import load_digits  # lazy: importing sklearn costs about a second

    d = load_digits()
    # Pixel values are 0..16; spread them over the uint8 range like any other image.
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    x = torch.from_numpy(images).unsqueeze(1).contiguous()  # (1797, 1, 8, 8)
    y = torch.from_numpy(d.target.astype(np.int64))
    x_train, y_train, x_test, y_test = _carve_test(x, y, test_size, split_seed)
    return RawDataset(x_train, y_train, x_test, y_test, num_classes=10, augment=None)


_FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _gunzip_atomic(src: Path, dst: Path) -> None:
    # Concurrent trials may stage the same file: each writes its own temp file
    # and os.replace makes the finished one appear in a single step, so no
    # reader ever sees half a file.
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, length=1 << 20)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _stage_fashion_mnist(raw_dir: Path) -> list[str]:
    """Put the raw IDX files torchvision reads into ``raw_dir``; return the names still missing."""
    missing = []
    for name in _FASHION_MNIST_FILES:
        target = raw_dir / name
        if target.is_file():
            continue
        for source in (raw_dir / f"{name}.gz", Path(FASHION_MNIST_SYSTEM_DIR) / f"{name}.gz"):
            if source.is_file():
                _gunzip_atomic(source, target)
                break
        else:
            missing.append(name)
    return missing


def _fashion_mnist_missing(missing: list[str], base: Path) -> str:
    return (
        f"dataset.root: Fashion-MNIST not found: looked for {', '.join(missing)} (plain or .gz) "
        f"in {base / 'FashionMNIST' / 'raw'} and for the .gz files in {FASHION_MNIST_SYSTEM_DIR}. "
        "Install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist), "
        "or set `download: true` (dataset.download) on a machine with internet; "
        f"dataset.root or ${ENV_DATA_ROOT} chooses the data directory (now {base})"
    )


@_data_check("fashion_mnist")
def _check_fashion_mnist(*, root: str | None, download: bool) -> None:
    base = data_root(root)
    raw_dir = base / "FashionMNIST" / "raw"
    missing = [
        name
        for name in _FASHION_MNIST_FILES
        if not any(
            p.is_file()
            for p in (raw_dir / name, raw_dir / f"{name}.gz", Path(FASHION_MNIST_SYSTEM_DIR) / f"{name}.gz")
        )
    ]
    if missing and not download:
        raise FileNotFoundError(_fashion_mnist_missing(missing, base))


@DATASETS.register
def fashion_mnist(*, root: str | None, download: bool, split_seed: int) -> RawDataset:
    """Fashion-MNIST (60k train, 10k test, 1x28x28) read by torchvision from ROOT/FashionMNIST/raw/.

    Missing raw files are gunzipped from .gz files in that directory or from
    Debian's dataset-fashion-mnist package before torchvision is asked to
    download anything.
    """
    base = data_root(root)
    raw_dir = base / "FashionMNIST" / "raw"
    missing = _stage_fashion_mnist(raw_dir)
    if missing and not download:
        raise FileNotFoundError(_fashion_mnist_missing(missing, base))
    tv = import_torchvision()
    splits = []
    for train in (True, False):
        ds = tv.datasets.FashionMNIST(str(base), train=train, download=download)
        # .data/.targets are the whole split already decoded: no per-item loop.
        splits += [ds.data.unsqueeze(1).contiguous(), ds.targets.to(torch.int64)]
    return RawDataset(*splits, num_classes=10, augment=None)


def _read_cifar_batch(
    path: Path, label_key: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    # CIFAR ships as pickles (written by Python 2); only load files you trust.
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")  # latin1: what Python-2 numpy pickles need
    if not isinstance(entry, dict):
        raise ValueError(
            f"{path}: not a CIFAR batch (expected a pickled dict, got {type(entry).__name__})"
        )
    # Keys are bytes (b"data") when written from Python 3, str from Python 2 under latin1.
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if "data" not in entry or label_key not in entry:
        raise ValueError(
            f"{path}: not a CIFAR batch: expected keys 'data' and {label_key!r}, "
            f"found {sorted(map(str, entry))}"
        )
    data = np.asarray(entry["data"], dtype=np.uint8)
    labels = np.asarray(entry[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise ValueError(
            f"{path}: expected 'data' of shape (N, 3072) and N labels, "
            f"got {data.shape} and {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{path}: labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}"
        )
    # Each row is the R plane, then G, then B, each 32x32 row-major: exactly (3, 32, 32).
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar(
    root: str | None,
    download: bool,
    *,
    name: str,
    folder: str,
    archive: str,
    train_files: Sequence[str],
    test_files: Sequence[str],
    label_key: str,
    num_classes: int,
    torchvision_class: str,
) -> RawDataset:
    base = data_root(root)
    directory = base / folder
    if _cifar_missing(directory, (*train_files, *test_files)) and download:
        # torchvision only fetches and extracts here; it is not used for reading
        # because its md5 checks reject anything but the official files.
        tv = import_torchvision()
        getattr(tv.datasets, torchvision_class)(str(base), train=True, download=True)
    if absent := _cifar_missing(directory, (*train_files, *test_files)):
        raise FileNotFoundError(_cifar_missing_message(name, absent, base, folder, archive))

    def read(files: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [_read_cifar_batch(directory / f, label_key, num_classes) for f in files]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        return torch.from_numpy(x), torch.from_numpy(y)

    x_train, y_train = read(train_files)
    x_test, y_test = read(test_files)
    return RawDataset(
        x_train, y_train, x_test, y_test, num_classes=num_classes, augment="crop_flip"
    )


def _cifar_missing(directory: Path, files: Sequence[str]) -> list[Path]:
    return [directory / f for f in files if not (directory / f).is_file()]


def _cifar_missing_message(name: str, absent: list[Path], base: Path, folder: str, archive: str) -> str:
    return (
        f"dataset.root: {name}: missing {absent[0]}"
        + (f" and {len(absent) - 1} more file(s)" if len(absent) > 1 else "")
        + f". Expected CIFAR's "
        f"python-format files (the extracted {archive}) in {base / folder}; point dataset.root or "
        f"${ENV_DATA_ROOT} at the directory containing {folder}/, or set `download: true` "
        "(dataset.download) on a machine with internet"
    )


_CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz",
                [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", ["train", "test"]),
}


def _check_cifar(name: str) -> Callable[..., None]:
    folder, archive, files = _CIFAR_FILES[name]

    def check(*, root: str | None, download: bool) -> None:
        base = data_root(root)
        absent = _cifar_missing(base / folder, files)
        if absent and not download:
            raise FileNotFoundError(_cifar_missing_message(name, absent, base, folder, archive))

    return check


for _name in _CIFAR_FILES:
    _data_check(_name)(_check_cifar(_name))


@DATASETS.register
def cifar10(*, root: str | None, download: bool, split_seed: int) -> RawDataset:
    """CIFAR-10 from ROOT/cifar-10-batches-py/ (data_batch_1..5, test_batch), 3x32x32."""
    return _load_cifar(
        root,
        download,
        name="cifar10",
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        train_files=[f"data_batch_{i}" for i in range(1, 6)],
        test_files=["test_batch"],
        label_key="labels",
        num_classes=10,
        torchvision_class="CIFAR10",
    )


@DATASETS.register
def cifar100(*, root: str | None, download: bool, split_seed: int) -> RawDataset:
    """CIFAR-100 (fine labels) from ROOT/cifar-100-python/ (train, test), 3x32x32."""
    return _load_cifar(
        root,
        download,
        name="cifar100",
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        train_files=["train"],
        test_files=["test"],
        label_key="fine_labels",
        num_classes=100,
        torchvision_class="CIFAR100",
    )


def _check_image_size(image_size: object, resize: object, field: str = "dataset.image_size") -> None:
    for name, value in ((field, image_size), ("dataset.resize", resize)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, Integral) or value < 1):
            raise ValueError(f"{name}: must be an int >= 1, got {value!r}")
    if resize is not None:
        if image_size is None:
            raise ValueError("dataset.resize: needs dataset.image_size, the side of the center crop taken after it")
        if resize < image_size:  # type: ignore[operator]
            raise ValueError(
                f"dataset.resize: must be >= dataset.image_size ({image_size}): the shorter side is "
                f"resized to {resize}, then the center {image_size}x{image_size} is cropped, got {resize}"
            )


def _image_folder(
    root: str, image_size: int, resize: int, field: str
) -> tuple[_ImageFiles, torch.Tensor, list[str]]:
    """An ImageFolder tree (checked by ``_check_image_tree``) as an undecoded ImageSource, its
    labels and its class names."""
    path = Path(root).expanduser()
    tv = import_torchvision()
    try:
        # Only lists the files (its rules pick the classes, their order and the image
        # extensions); decoding happens in the ImageSource, resident or streaming.
        ds = tv.datasets.ImageFolder(str(path))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{field}: {e}") from e
    images = _ImageFiles([p for p, _ in ds.samples], image_size, resize)
    return images, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes)


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _check_image_tree(root: str, field: str) -> list[str]:
    """The class folder names of an ImageFolder tree; raise naming ``field`` if it is not one."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"{field}: {path} is not a directory; imagefolder expects {path}/<class_name>/<image>"
        )
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise FileNotFoundError(
            f"{field}: {path} has no class sub-directories; imagefolder expects {path}/<class_name>/<image>"
        )
    for cls in classes:
        if not any(f.suffix.lower() in _IMAGE_SUFFIXES for f in (path / cls).rglob("*") if f.is_file()):
            raise FileNotFoundError(
                f"{field}: class folder {path / cls} holds no image file ({', '.join(_IMAGE_SUFFIXES)})"
            )
    return classes


@_data_check("imagefolder")
def _check_imagefolder(
    *, root: str | None, download: bool, test_root: str | None = None, test_size: object = None,
    image_size: object = 32, resize: object = None,
) -> None:
    if root is None:
        raise ValueError(
            "dataset.root: required for imagefolder: a directory with one sub-directory "
            "of images per class"
        )
    if test_root is not None and test_size is not None:
        raise ValueError("dataset.test_size: not used when dataset.test_root is set; give one of them")
    _check_image_size(image_size, resize)
    classes = _check_image_tree(root, "dataset.root")
    if test_root is not None:
        test_classes = _check_image_tree(test_root, "dataset.test_root")
        if test_classes != classes:
            raise ValueError(
                f"dataset.test_root: class folders {test_classes} differ from dataset.root's {classes}"
            )


@DATASETS.register
def imagefolder(
    *,
    root: str | None,
    download: bool,
    split_seed: int,
    image_size: PositiveInt = 32,
    resize: PositiveInt | None = None,
    test_root: str | None = None,
    test_size: Size | None = None,
    storage: Storage = "auto",
) -> RawDataset:
    """Your own images, ROOT/<class_name>/<image>, resized and center-cropped to RGB image_size^2.

    Each image's shorter side is resized to ``resize`` (default ``image_size``), then
    the center ``image_size`` x ``image_size`` is cropped: ``image_size: 224, resize:
    256`` is ImageNet's evaluation transform. The test split is ``test_root`` (same
    class names) if given, else ``test_size`` (default 0.2) held out of ``root``.
    ``storage``: see :func:`load_dataset`. ``download`` is ignored.
    """
    # the same checks `validate` runs (root, test_root and their classes, sizes), for callers of the API
    _check_imagefolder(root=root, download=download, test_root=test_root, test_size=test_size,
                       image_size=image_size, resize=resize)
    if test_size is not None:
        _check_size(test_size, "dataset.test_size")
    _check_storage(storage)
    size, resize = int(image_size), int(resize or image_size)
    x, y, classes = _image_folder(str(root), size, resize, "dataset.root")
    if test_root is None:
        x_train, y_train, x_test, y_test = _carve_test(
            x, y, 0.2 if test_size is None else test_size, split_seed
        )
    else:
        x_test, y_test, _ = _image_folder(test_root, size, resize, "dataset.test_root")
        x_train, y_train = x, y
    return RawDataset(
        x_train, y_train, x_test, y_test, num_classes=len(classes), augment="crop_flip", storage=storage
    )


# --------------------------------------------------------------------------- torchvision by class name


class _TvInfo(NamedTuple):
    channels: int  # after decoding: 1 for grayscale datasets, else 3 (RGB)
    size: tuple[int, int] | None  # native (H, W); None: the images vary in size
    classes: int | None  # None: depends on the arguments; read from the data


_VARIES = None
#: torchvision.datasets classes that yield (image, class index) pairs. Grayscale ones decode
#: to one channel (as fashion_mnist does), the rest to RGB; what is not listed is read from the data.
_TORCHVISION_CLASSES: dict[str, _TvInfo] = {
    "CIFAR10": _TvInfo(3, (32, 32), 10),
    "CIFAR100": _TvInfo(3, (32, 32), 100),
    "Caltech101": _TvInfo(3, _VARIES, None),
    "Caltech256": _TvInfo(3, _VARIES, None),
    "Country211": _TvInfo(3, _VARIES, 211),
    "DTD": _TvInfo(3, _VARIES, 47),
    "EMNIST": _TvInfo(1, (28, 28), None),
    "EuroSAT": _TvInfo(3, (64, 64), 10),
    "FER2013": _TvInfo(1, (48, 48), 7),
    "FGVCAircraft": _TvInfo(3, _VARIES, None),
    "FakeData": _TvInfo(3, None, None),  # shape and classes come from its kwargs
    "FashionMNIST": _TvInfo(1, (28, 28), 10),
    "Flowers102": _TvInfo(3, _VARIES, 102),
    "Food101": _TvInfo(3, _VARIES, 101),
    "GTSRB": _TvInfo(3, _VARIES, 43),
    "ImageNet": _TvInfo(3, _VARIES, 1000),
    "Imagenette": _TvInfo(3, _VARIES, 10),
    "KMNIST": _TvInfo(1, (28, 28), 10),
    "MNIST": _TvInfo(1, (28, 28), 10),
    "OxfordIIITPet": _TvInfo(3, _VARIES, 37),
    "PCAM": _TvInfo(3, (96, 96), 2),
    "Places365": _TvInfo(3, _VARIES, 365),
    "QMNIST": _TvInfo(1, (28, 28), 10),
    "RenderedSST2": _TvInfo(3, _VARIES, 2),
    "SEMEION": _TvInfo(1, (16, 16), 10),
    "STL10": _TvInfo(3, (96, 96), 10),
    "SUN397": _TvInfo(3, _VARIES, 397),
    "SVHN": _TvInfo(3, (32, 32), 10),
    "StanfordCars": _TvInfo(3, _VARIES, 196),
    "USPS": _TvInfo(1, (16, 16), 10),
}
TorchvisionClass = Literal[tuple(sorted(_TORCHVISION_CLASSES))]  # type: ignore[valid-type]
#: (train, test) split names of classes whose constructor takes split=, where they are not train/test.
_TORCHVISION_SPLITS = {
    "FGVCAircraft": ("trainval", "test"),
    "ImageNet": ("train", "val"),
    "Imagenette": ("train", "val"),
    "OxfordIIITPet": ("trainval", "test"),
    "Places365": ("train-standard", "val"),
}
_TV_SET_BY_US = ("root", "download", "transform", "target_transform", "transforms")


def _torchvision_class(class_name: object) -> type:
    """The torchvision.datasets class named ``class_name``; the error lists the accepted names."""
    if class_name not in _TORCHVISION_CLASSES:
        raise ValueError(
            f"dataset.class_name: unknown torchvision classification dataset {class_name!r}; "
            f"accepted: {', '.join(sorted(_TORCHVISION_CLASSES))}"
        )
    tv = import_torchvision()
    cls = getattr(tv.datasets, str(class_name), None)
    if cls is None:
        raise ValueError(
            f"dataset.class_name: {class_name} is not in the installed torchvision {tv.__version__}"
        )
    return cls


def _torchvision_layout(cls: type) -> str:
    """How a class picks its official splits: a train= flag, a split= name, or neither (one pool)."""
    params = inspect.signature(cls).parameters
    # MNIST's subclasses (EMNIST, QMNIST) take train= through **kwargs; EMNIST's split= picks letters/digits
    if "train" in params or issubclass(cls, import_torchvision().datasets.MNIST):
        return "train"
    return "split" if "split" in params else "pool"


def _check_torchvision_options(
    cls: type, class_name: str, train_split: object, test_split: object, test_size: object, kwargs: object
) -> dict[str, Any]:
    """Refuse options the class's layout does not use; return the extra constructor kwargs."""
    layout = _torchvision_layout(cls)
    if layout != "split":
        for name, value in (("train_split", train_split), ("test_split", test_split)):
            if value is not None:
                raise ValueError(
                    f"dataset.{name}: torchvision {class_name} takes no split= argument"
                    + (" (its official splits come from train=)" if layout == "train" else "")
                )
    elif any(not (v is None or isinstance(v, str)) for v in (train_split, test_split)):
        raise ValueError("dataset.train_split/test_split: must be split names such as train, val or test")
    if layout != "pool" and test_size is not None:
        raise ValueError(
            f"dataset.test_size: torchvision {class_name} has an official test split; "
            "test_size only applies to datasets without one"
        )
    if test_size is not None:
        _check_size(test_size, "dataset.test_size")
    if kwargs is None or (isinstance(kwargs, (list, tuple)) and not kwargs):
        extra: dict[str, Any] = {}  # an empty mapping comes back from a frozen spec as ()
    elif isinstance(kwargs, dict):
        extra = dict(kwargs)
    else:
        raise ValueError(f"dataset.kwargs: must be a mapping of keyword arguments, got {kwargs!r}")
    ours = set(_TV_SET_BY_US) | ({"train"} if layout == "train" else {"split"} if layout == "split" else set())
    taken = sorted(ours & set(extra))
    if taken:
        raise ValueError(
            f"dataset.kwargs: {', '.join(taken)} is set by tune_prune (use dataset.root, dataset.download, "
            "dataset.train_split/test_split, dataset.image_size)"
        )
    params = inspect.signature(cls).parameters
    needed = [
        n for n, p in params.items()
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and n not in ours and n not in extra
    ]
    if needed:
        raise ValueError(
            f"dataset.kwargs: torchvision {class_name} needs {', '.join(needed)} "
            f"(e.g. kwargs: {{{needed[0]}: ...}}); see torchvision.datasets.{class_name}"
        )
    return extra


def _torchvision_shape(
    class_name: str, image_size: int | None, extra: dict[str, Any]
) -> tuple[int, tuple[int, int]]:
    """(channels, (H, W)) of the decoded images; refused when they vary and image_size is not set."""
    info = _TORCHVISION_CLASSES[class_name]
    channels, size = info.channels, info.size
    if class_name == "FakeData":
        shape = tuple(extra.get("image_size", (3, 224, 224)))
        channels, size = (1 if shape[0] == 1 else 3), (int(shape[1]), int(shape[2]))
    if image_size is not None:
        return channels, (int(image_size), int(image_size))
    if size is _VARIES:
        raise ValueError(
            f"dataset.image_size: torchvision {class_name} images vary in size; set image_size "
            "(e.g. image_size: 224 with resize: 256, ImageNet's evaluation transform)"
        )
    return channels, size


def _open_torchvision(cls: type, class_name: str, base: Path, download: bool, extra: dict[str, Any]) -> Any:
    params = inspect.signature(cls).parameters
    mnist_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values()) and issubclass(
        cls, import_torchvision().datasets.MNIST
    )
    kw = dict(extra)
    if "root" in params:
        kw["root"] = str(base)
    if "download" in params or mnist_kwargs:
        kw["download"] = download
    try:
        return cls(**kw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"dataset.kwargs: torchvision {class_name}({_shown_kwargs(kw)}) refused them: {e}") from e
    except (RuntimeError, OSError) as e:  # torchvision's "Dataset not found or corrupted"
        raise FileNotFoundError(
            f"dataset.root: torchvision {class_name} found no usable files under {base}: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}. Point dataset.root (or "
            f"${ENV_DATA_ROOT}) at the directory torchvision.datasets.{class_name} expects as its root, or set "
            "`download: true` (dataset.download) on a machine with internet"
        ) from e


def _shown_kwargs(kw: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kw.items())


def _label_int(value: Any, class_name: str) -> int:
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(
            f"dataset.class_name: torchvision {class_name} yields {type(value).__name__} targets, "
            "not class indices; only classification datasets can be used"
        )
    return int(value)


def _torchvision_labels(ds: Any, class_name: str) -> torch.Tensor:
    """Every item's class index, read from the dataset's own label list when it has one."""
    n = len(ds)
    labels = None
    for attr in ("targets", "labels", "_labels", "y", "samples", "_samples", "imgs"):
        value = getattr(ds, attr, None)
        if value is None:
            continue
        try:
            if attr in ("samples", "_samples", "imgs"):
                value = [pair[1] for pair in value]
            t = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError, IndexError, KeyError):
            continue
        if t.dim() == 1 and len(t) == n and not t.is_floating_point() and t.dtype != torch.bool:
            labels = t.to(torch.int64)
            break
    # The attribute is only trusted when it agrees with what the items say (QMNIST's
    # targets, for one, are rows of eight numbers).
    if labels is not None and not all(
        _label_int(ds[i][1], class_name) == int(labels[i]) for i in {0, n - 1} if n
    ):
        labels = None
    if labels is None:
        labels = torch.tensor([_label_int(ds[i][1], class_name) for i in range(n)], dtype=torch.int64)
    if n and int(labels.min()) < 0:
        raise ValueError(
            f"dataset.class_name: torchvision {class_name} has unlabeled items (label {int(labels.min())}); "
            "choose a labeled split (dataset.train_split / test_split)"
        )
    return labels


def _torchvision_source(
    ds: Any, class_name: str, channels: int, size: tuple[int, int], image_size: int | None, resize: int | None
) -> _TorchvisionImages:
    return _TorchvisionImages(ds, f"torchvision {class_name}", channels, image_size, resize, (channels, *size))


def _declared_classes(ds: Any) -> int:
    """The class count a dataset object states (its class names, or FakeData's num_classes); 0 if none."""
    count = getattr(ds, "num_classes", None)
    if isinstance(count, Integral) and not isinstance(count, bool):
        return int(count)
    names = getattr(ds, "classes", None)
    return len(names) if isinstance(names, Sequence) else 0


def _torchvision_num_classes(datasets: Sequence[Any], labels: Sequence[torch.Tensor]) -> int:
    declared = max((_declared_classes(d) for d in datasets), default=0)
    seen = max((int(y.max()) + 1 for y in labels if len(y)), default=0)
    return max(declared, seen)


@_data_check("torchvision")
def _check_torchvision(
    *, root: str | None, download: bool, class_name: object = None, image_size: object = None,
    resize: object = None, train_split: object = None, test_split: object = None,
    test_size: object = None, kwargs: object = None,
) -> None:
    cls = _torchvision_class(class_name)
    _check_image_size(image_size, resize)
    extra = _check_torchvision_options(cls, str(class_name), train_split, test_split, test_size, kwargs)
    _torchvision_shape(str(class_name), image_size, extra)  # type: ignore[arg-type]
    if class_name == "FashionMNIST":
        _check_fashion_mnist(root=root, download=download)
        return
    base = data_root(root)
    if "root" in inspect.signature(cls).parameters and not download and not base.is_dir():
        raise FileNotFoundError(
            f"dataset.root: {base} does not exist; torchvision {class_name} reads its files from there. "
            f"Point dataset.root (or ${ENV_DATA_ROOT}) at the directory torchvision.datasets.{class_name} "
            "expects as its root, or set `download: true` (dataset.download) on a machine with internet"
        )


def _torchvision_describe(
    root: str | None, class_name: object = None, image_size: int | None = None,
    train_split: str | None = None, kwargs: object = None, **_: object,
) -> tuple[tuple[int, int, int], int]:
    cls = _torchvision_class(class_name)
    name = str(class_name)
    extra = _check_torchvision_options(cls, name, train_split, None, None, kwargs)
    channels, size = _torchvision_shape(name, image_size, extra)
    classes = _TORCHVISION_CLASSES[name].classes
    if classes is not None:
        return (channels, *size), classes
    # EMNIST's classes depend on its split, FakeData's on its kwargs: open the data (no download)
    ds = _open_torchvision(cls, name, data_root(root), False, {**extra, **_torchvision_split(cls, name, train_split, True)})
    classes = _declared_classes(ds) or _torchvision_num_classes([ds], [_torchvision_labels(ds, name)])
    return (channels, *size), classes


def _torchvision_split(cls: type, class_name: str, split: str | None, train: bool) -> dict[str, Any]:
    """The constructor argument that selects the training (``train``) or test split."""
    layout = _torchvision_layout(cls)
    if layout == "train":
        return {"train": train}
    if layout == "split":
        default = _TORCHVISION_SPLITS.get(class_name, ("train", "test"))[0 if train else 1]
        return {"split": split or default}
    return {}


@DATASETS.register
def torchvision(
    *,
    root: str | None,
    download: bool,
    split_seed: int,
    class_name: TorchvisionClass,
    image_size: PositiveInt | None = None,
    resize: PositiveInt | None = None,
    train_split: str | None = None,
    test_split: str | None = None,
    test_size: Size | None = None,
    kwargs: dict[str, Any] | None = None,
    storage: Storage = "auto",
) -> RawDataset:
    """A classification dataset of torchvision.datasets by class name (MNIST, CIFAR10, SVHN, STL10, ...).

    Read by torchvision from ``root`` (``download`` fetches it where there is
    internet). Grayscale datasets give 1-channel images, the others RGB;
    ``image_size`` resizes the shorter side to ``resize`` (default image_size) and
    center-crops, as imagefolder does; without it images keep their native size.
    The official splits come from ``train=`` or ``split=`` (``train_split`` /
    ``test_split`` name them where the defaults, train and test, do not fit);
    datasets without one hold ``test_size`` (default 0.2) out. ``kwargs`` are more
    constructor arguments (e.g. ``{split: balanced}`` for EMNIST). RGB data gets
    crop/flip augmentation, grayscale none, as cifar10 and fashion_mnist do.
    """
    cls = _torchvision_class(class_name)
    name = str(class_name)
    _check_image_size(image_size, resize)
    _check_storage(storage)
    extra = _check_torchvision_options(cls, name, train_split, test_split, test_size, kwargs)
    channels, size = _torchvision_shape(name, image_size, extra)
    base = data_root(root)
    if name == "FashionMNIST":
        missing = _stage_fashion_mnist(base / "FashionMNIST" / "raw")
        if missing and not download:
            raise FileNotFoundError(_fashion_mnist_missing(missing, base))
    size_args = (int(image_size) if image_size else None, int(resize or image_size) if image_size else None)
    pool = _open_torchvision(cls, name, base, download, {**extra, **_torchvision_split(cls, name, train_split, True)})
    x, y = _torchvision_source(pool, name, channels, size, *size_args), _torchvision_labels(pool, name)
    opened = [pool]
    if _torchvision_layout(cls) == "pool":
        x_train, y_train, x_test, y_test = _carve_test(x, y, 0.2 if test_size is None else test_size, split_seed)
    else:
        test = _open_torchvision(cls, name, base, download, {**extra, **_torchvision_split(cls, name, test_split, False)})
        opened.append(test)
        x_train, y_train = x, y
        x_test, y_test = _torchvision_source(test, name, channels, size, *size_args), _torchvision_labels(test, name)
        if tuple(x_test.shape[1:]) != tuple(x_train.shape[1:]):
            raise ValueError(
                f"dataset.image_size: torchvision {name}'s test images are {tuple(x_test.shape[2:])}, its training "
                f"images {tuple(x_train.shape[2:])}; set image_size to bring both to one size"
            )
    return RawDataset(
        x_train, y_train, x_test, y_test,
        num_classes=_torchvision_num_classes(opened, [y_train, y_test]),
        augment="crop_flip" if channels == 3 else None,
        storage=storage,
    )
