"""Dataset registry, deterministic splits, prepare()/augmentation and the on-disk readers.

CIFAR and the small Fashion-MNIST cases write files in the exact on-disk
formats into tmp_path; digits and (when Debian's dataset-fashion-mnist is
installed) Fashion-MNIST use real data.
"""

from __future__ import annotations

import dataclasses
import gzip
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tune_prune.data as data
from tune_prune.data import DATASETS, DataBundle, channel_stats, load_dataset, random_crop_flip
from tune_prune.registry import Registry, UnknownNameError

# --------------------------------------------------------------------------- registry


def test_registry_get_unknown_lists_accepted_names():
    reg: Registry[int] = Registry("widget")
    reg.register(1, name="b")
    reg.register(2, name="a")
    with pytest.raises(UnknownNameError) as info:
        reg.get("c")
    assert str(info.value) == "unknown widget 'c'; accepted: a, b"
    assert (info.value.kind, info.value.name, info.value.accepted) == ("widget", "c", ["a", "b"])
    assert isinstance(info.value, ValueError)


def test_registry_decorator_names_and_duplicates():
    reg: Registry = Registry("thing")

    @reg.register
    def zeta():
        return "z"

    @reg.register(name="alpha")
    def _anything():
        return "a"

    assert reg.get("zeta") is zeta
    assert reg.get("alpha")() == "a"
    assert reg.names() == ["alpha", "zeta"] == list(reg)
    assert "zeta" in reg and "nope" not in reg and ["unhashable"] not in reg
    assert len(reg) == 2
    with pytest.raises(ValueError, match="'zeta' is already registered"):
        reg.register(lambda: None, name="zeta")


def test_unknown_name_error_survives_pickling():
    # Ray ships exceptions between processes by pickling them.
    err = pickle.loads(pickle.dumps(UnknownNameError("model", "x", ["b", "a"])))
    assert str(err) == "unknown model 'x'; accepted: a, b" and err.accepted == ["a", "b"]


def test_dataset_registry_keys():
    assert DATASETS.names() == ["cifar10", "cifar100", "digits", "fashion_mnist", "imagefolder", "torchvision"]


def test_unknown_dataset_lists_accepted_names():
    with pytest.raises(
        UnknownNameError, match="unknown dataset 'mnist'; accepted: cifar10, cifar100, digits"
    ):
        load_dataset("mnist")


def test_importing_data_and_models_does_not_import_torchvision_or_sklearn():
    code = (
        "import sys, tune_prune.data, tune_prune.models; "
        "assert 'torchvision' not in sys.modules and 'sklearn' not in sys.modules, "
        "[m for m in sys.modules if m.startswith(('torchvision', 'sklearn'))]"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- digits and splits


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_dataset("digits")


def test_digits_shapes_dtypes_and_sizes(digits):
    b = digits
    assert b.name == "digits" and b.num_classes == 10 and b.augment is None
    assert b.in_shape == (1, 8, 8)
    # test: round(0.2 * 1797) = 359; val: round(0.1 * 1438) = 144 of the rest.
    assert (len(b.x_train), len(b.x_val), len(b.x_test)) == (1294, 144, 359)
    assert len(b.x_train) + len(b.x_val) + len(b.x_test) == 1797
    for split in ("train", "val", "test"):
        x, y = getattr(b, f"x_{split}"), getattr(b, f"y_{split}")
        assert x.dtype == torch.uint8 and x.shape[1:] == (1, 8, 8) and x.is_contiguous()
        assert y.dtype == torch.int64 and y.shape == (len(x),)
        assert set(y.tolist()) == set(range(10))
    # 0..16 scaled by 255/16: both ends of the uint8 range occur.
    assert int(b.x_train.min()) == 0 and int(b.x_train.max()) == 255
    allowed = {round(v * 255 / 16) for v in range(17)}
    assert set(torch.unique(b.x_train).tolist()) <= allowed


def test_holdout_partitions_the_indices():
    kept, held = data._holdout(100, 30, split_seed=5, stream=2)
    assert len(held) == 30 and len(kept) == 70
    assert sorted(kept.tolist() + held.tolist()) == list(range(100))
    assert kept.tolist() == sorted(kept.tolist()) and held.tolist() == sorted(held.tolist())


def test_split_depends_only_on_split_seed(digits):
    same = load_dataset("digits", split_seed=0)
    other = load_dataset("digits", split_seed=1)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(same, f"x_{split}"), getattr(digits, f"x_{split}"))
        assert torch.equal(getattr(same, f"y_{split}"), getattr(digits, f"y_{split}"))
    assert not torch.equal(other.x_test, digits.x_test)
    assert not torch.equal(other.y_val, digits.y_val)


def test_test_split_does_not_move_with_val_size_or_train_subset(digits):
    b = load_dataset("digits", val_size=300, train_subset=100)
    assert torch.equal(b.x_test, digits.x_test) and torch.equal(b.y_test, digits.y_test)
    assert len(b.x_val) == 300 and len(b.x_train) == 100


def test_train_subset_shrinks_train_only(digits):
    b = load_dataset("digits", train_subset=200)
    assert len(b.x_train) == 200
    assert torch.equal(b.x_val, digits.x_val) and torch.equal(b.x_test, digits.x_test)
    # Normalization statistics describe the data actually trained on.
    assert b.mean == channel_stats(b.x_train)[0]


def test_val_size_as_count(digits):
    b = load_dataset("digits", val_size=50)
    assert len(b.x_val) == 50 and len(b.x_train) == 1797 - 359 - 50


@pytest.mark.parametrize("bad", [2.5, 0, -3, 1.0, 0.0, "0.1", True, None])
def test_bad_val_size_names_the_field(bad):
    with pytest.raises(
        ValueError, match=r"dataset\.val_size: must be an int >= 1 or a float in \(0, 1\)"
    ):
        load_dataset("digits", val_size=bad)


def test_val_size_that_leaves_nothing_to_train_on():
    with pytest.raises(ValueError, match=r"dataset\.val_size: holding out 1438 of 1438"):
        load_dataset("digits", val_size=1438)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"train_subset": 0}, "train_subset"),
        ({"train_subset": 1.5}, "train_subset"),
        ({"train_subset": 5000}, "train_subset"),
        ({"split_seed": -1}, "split_seed"),
        ({"split_seed": "0"}, "split_seed"),
        ({"download": "yes"}, "download"),
        ({"test_size": 1.5}, "test_size"),
        ({"test_size": 1797}, "test_size"),
        ({"image_size": 32}, "image_size"),  # not an option of digits
    ],
)
def test_bad_options_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"dataset\.{field}:"):
        load_dataset("digits", **kwargs)


def test_unknown_option_lists_accepted_options():
    with pytest.raises(
        ValueError,
        match=r"dataset\.colour: not an option of dataset 'digits'; accepted: .*test_size",
    ):
        load_dataset("digits", colour=True)


# --------------------------------------------------------------------------- bundle and prepare()


def _synthetic_bundle(n: int = 16, augment: str | None = "crop_flip", seed: int = 0) -> DataBundle:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 12, 10), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    mean, std = channel_stats(x)
    return DataBundle("synthetic", x, y, x[:2], y[:2], x[:3], y[:3], 4, mean, std, augment)


def test_prepare_normalizes_train_set_to_zero_mean_unit_std(digits):
    x = digits.prepare(digits.x_train, train=True)
    assert x.dtype == torch.float32 and x.shape == digits.x_train.shape
    assert abs(float(x.mean())) < 1e-5
    assert abs(float(x.std(unbiased=False)) - 1) < 1e-4
    # digits has no augmentation: train and eval preparation agree.
    assert torch.equal(x, digits.prepare(digits.x_train, train=False))


def test_channel_stats_match_float_computation():
    b = _synthetic_bundle()
    xf = b.x_train.double() / 255
    assert np.allclose(b.mean, xf.mean(dim=(0, 2, 3)).numpy())
    assert np.allclose(b.std, xf.std(dim=(0, 2, 3), unbiased=False).numpy())
    constant = torch.full((4, 1, 3, 3), 7, dtype=torch.uint8)
    assert channel_stats(constant) == ((7 / 255,), (1.0,))  # no division by zero later


def test_prepare_rejects_non_uint8_batches(digits):
    with pytest.raises(ValueError, match="expected a uint8 batch"):
        digits.prepare(digits.x_train.float(), train=False)


def test_crop_flip_keeps_shape_is_reproducible_and_changes_images():
    b = _synthetic_bundle()
    xb = b.x_train
    out1 = b.prepare(xb, train=True, generator=torch.Generator().manual_seed(3))
    out2 = b.prepare(xb, train=True, generator=torch.Generator().manual_seed(3))
    out3 = b.prepare(xb, train=True, generator=torch.Generator().manual_seed(4))
    plain = b.prepare(xb, train=False)
    assert out1.shape == plain.shape == xb.shape and out1.dtype == torch.float32
    assert torch.equal(out1, out2)
    assert not torch.equal(out1, out3)
    changed = [not torch.equal(out1[i], plain[i]) for i in range(len(xb))]
    assert sum(changed) >= len(xb) // 2  # 1 in 162 draws is the identity


def test_crop_flip_is_a_padded_crop_then_flip_of_each_image():
    xb = torch.randint(
        1, 256, (8, 2, 6, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    out = random_crop_flip(xb, padding=2, generator=torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(xb, (2, 2, 2, 2))
    flips = set()
    for i in range(len(xb)):
        matches = [
            (top, left, flip)
            for top in range(5)
            for left in range(5)
            for flip in (False, True)
            if torch.equal(
                out[i],
                (lambda c: c.flip(-1) if flip else c)(padded[i, :, top : top + 6, left : left + 5]),
            )
        ]
        assert matches, f"image {i} is not a crop/flip of its padded original"
        flips.add(matches[0][2])
    assert flips == {False, True}  # both branches exercised with this seed


def test_bundle_to_returns_a_new_bundle_and_is_frozen(digits):
    moved = digits.to("cpu")
    assert moved is not digits and torch.equal(moved.x_train, digits.x_train)
    assert moved.mean == digits.mean and moved.name == "digits"
    with pytest.raises(dataclasses.FrozenInstanceError):
        digits.name = "other"  # type: ignore[misc]
    assert "train=1294x1x8x8" in repr(digits)


def test_bundle_rejects_inconsistent_tensors():
    b = _synthetic_bundle()
    with pytest.raises(ValueError, match=r"DataBundle\.x_val"):
        dataclasses.replace(b, x_val=b.x_val.float())
    with pytest.raises(ValueError, match=r"DataBundle\.y_test"):
        dataclasses.replace(b, y_test=b.y_test[:1])


# --------------------------------------------------------------------------- CIFAR


def _cifar_rows(n: int, start: int, rng: np.random.Generator) -> np.ndarray:
    rows = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    rows[:, 0] = np.arange(start, start + n)  # pixel R(0,0) carries the example's global index
    return rows


def _write_batch(
    path: Path, rows: np.ndarray, label_key: str, labels: list[int], str_keys: bool
) -> None:
    entry = {
        "batch_label": "test batch",
        "data": rows,
        label_key: labels,
        "filenames": [f"{i}.png" for i in range(len(rows))],
    }
    if not str_keys:  # Python 3 writers produce bytes keys, as in the CIFAR docs' example
        entry = {k.encode(): v for k, v in entry.items()}
    with open(path, "wb") as f:
        pickle.dump(entry, f)


def _write_cifar10(
    root: Path, per_batch: int = 20, str_keys: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    xs, ys = [], []
    for b in range(5):
        rows = _cifar_rows(per_batch, b * per_batch, rng)
        labels = rng.integers(0, 10, per_batch).tolist()
        _write_batch(d / f"data_batch_{b + 1}", rows, "labels", labels, str_keys)
        xs.append(rows)
        ys += labels
    test_rows = _cifar_rows(per_batch, 0, rng)
    # A known test image: R plane all 10, G plane all 20, B plane all 30, plus two marks.
    test_rows[0] = np.repeat(np.array([10, 20, 30], dtype=np.uint8), 1024)
    test_rows[0, 0] = 200  # R at (0, 0)
    test_rows[0, 1024 + 32 * 1 + 2] = 201  # G at row 1, col 2
    test_rows[0, 2048 + 32 * 31 + 31] = 202  # B at (31, 31)
    test_labels = rng.integers(0, 10, per_batch).tolist()
    _write_batch(d / "test_batch", test_rows, "labels", test_labels, str_keys)
    return np.concatenate(xs), np.array(ys), test_rows, np.array(test_labels)


@pytest.mark.parametrize("str_keys", [False, True], ids=["bytes_keys", "str_keys"])
def test_cifar10_round_trips_pixels_and_labels(tmp_path, str_keys):
    x_rows, y, test_rows, test_y = _write_cifar10(tmp_path, str_keys=str_keys)
    b = load_dataset("cifar10", root=str(tmp_path), val_size=10)
    assert b.in_shape == (3, 32, 32) and b.num_classes == 10 and b.augment == "crop_flip"
    assert (len(b.x_train), len(b.x_val), len(b.x_test)) == (90, 10, 20)

    assert torch.equal(b.x_test, torch.from_numpy(test_rows.reshape(-1, 3, 32, 32)))
    assert b.y_test.tolist() == test_y.tolist() and b.y_test.dtype == torch.int64
    known = b.x_test[0]
    assert known[0, 0, 0] == 200 and known[1, 1, 2] == 201 and known[2, 31, 31] == 202
    assert (known[0, 5, 5], known[1, 5, 5], known[2, 5, 5]) == (10, 20, 30)

    # Train and val are a disjoint partition of the 100 training rows, each intact.
    train_ids = b.x_train[:, 0, 0, 0].tolist()
    val_ids = b.x_val[:, 0, 0, 0].tolist()
    assert sorted(train_ids + val_ids) == list(range(100))
    for split_x, split_y, ids in ((b.x_train, b.y_train, train_ids), (b.x_val, b.y_val, val_ids)):
        assert torch.equal(split_x.reshape(len(ids), -1), torch.from_numpy(x_rows[ids]))
        assert split_y.tolist() == y[ids].tolist()


def test_cifar100_reads_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    train_rows, test_rows = _cifar_rows(30, 0, rng), _cifar_rows(12, 0, rng)
    train_labels, test_labels = list(range(70, 100)), list(range(12))
    for name, rows, labels in (
        ("train", train_rows, train_labels),
        ("test", test_rows, test_labels),
    ):
        entry = {
            b"data": rows,
            b"fine_labels": labels,
            b"coarse_labels": [label % 20 for label in labels],
        }
        with open(d / name, "wb") as f:
            pickle.dump(entry, f)
    b = load_dataset("cifar100", root=str(tmp_path), val_size=5)
    assert b.num_classes == 100 and b.augment == "crop_flip"
    assert torch.equal(b.x_test, torch.from_numpy(test_rows.reshape(-1, 3, 32, 32)))
    assert b.y_test.tolist() == test_labels
    by_id = dict(
        zip(
            b.x_train[:, 0, 0, 0].tolist() + b.x_val[:, 0, 0, 0].tolist(),
            b.y_train.tolist() + b.y_val.tolist(),
            strict=True,
        )
    )
    assert by_id == {i: 70 + i for i in range(30)}


def test_cifar_root_defaults_to_env_var(tmp_path, monkeypatch):
    _write_cifar10(tmp_path, per_batch=4)
    monkeypatch.setenv(data.ENV_DATA_ROOT, str(tmp_path))
    assert len(load_dataset("cifar10", val_size=2).x_train) == 18


def test_cifar_missing_files_name_the_expected_path(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"cifar-10-batches-py.data_batch_1.*download: true"
    ):
        load_dataset("cifar10", root=str(tmp_path))
    _write_cifar10(tmp_path, per_batch=4)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3") as info:
        load_dataset("cifar10", root=str(tmp_path))
    assert "data_batch_1" not in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python.train"):
        load_dataset("cifar100", root=str(tmp_path))


def test_cifar_rejects_a_malformed_batch(tmp_path):
    _write_cifar10(tmp_path, per_batch=4)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), dtype=np.uint8), b"labels": [0] * 4}, f)
    with pytest.raises(ValueError, match=r"test_batch: expected 'data' of shape \(N, 3072\)"):
        load_dataset("cifar10", root=str(tmp_path))


# --------------------------------------------------------------------------- Fashion-MNIST


def _write_idx_gz(directory: Path, n_train: int = 30, n_test: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        # IDX: big-endian magic (2051 images / 2049 labels), then dimensions, then raw bytes.
        with gzip.open(directory / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        with gzip.open(directory / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 2049, n) + labels.tobytes())
        arrays[f"{prefix}_images"], arrays[f"{prefix}_labels"] = images, labels
    return arrays


@pytest.fixture
def no_system_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "no-debian-package"))


def test_fashion_mnist_reads_idx_gz_files_from_raw_dir(tmp_path, no_system_fashion_mnist):
    raw = tmp_path / "FashionMNIST" / "raw"
    arrays = _write_idx_gz(raw)
    b = load_dataset("fashion_mnist", root=str(tmp_path), val_size=5)
    assert b.in_shape == (1, 28, 28) and b.num_classes == 10 and b.augment is None
    assert (len(b.x_train), len(b.x_val), len(b.x_test)) == (25, 5, 10)
    assert torch.equal(b.x_test, torch.from_numpy(arrays["t10k_images"]).unsqueeze(1))
    assert b.y_test.tolist() == arrays["t10k_labels"].tolist() and b.y_test.dtype == torch.int64
    # Unpacked once, atomically: the plain files exist and no temp file is left behind.
    names = sorted(p.name for p in raw.iterdir())
    assert [n for n in names if not n.endswith(".gz")] == sorted(data._FASHION_MNIST_FILES)
    assert torch.equal(
        load_dataset("fashion_mnist", root=str(tmp_path), val_size=5).x_train, b.x_train
    )


def test_fashion_mnist_stages_from_the_system_directory(tmp_path, monkeypatch):
    system = tmp_path / "system"
    arrays = _write_idx_gz(system, n_train=12, n_test=4)
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", str(system))
    b = load_dataset("fashion_mnist", root=str(tmp_path / "root"), val_size=2)
    assert (len(b.x_train), len(b.x_test)) == (10, 4)
    assert torch.equal(b.x_test[:, 0], torch.from_numpy(arrays["t10k_images"]))
    assert (tmp_path / "root" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_fashion_mnist_missing_data_says_how_to_get_it(tmp_path, no_system_fashion_mnist):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as info:
        load_dataset("fashion_mnist", root=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message and "download: true" in message


@pytest.mark.needs(
    Path(data.FASHION_MNIST_SYSTEM_DIR, "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_real_debian_files(tmp_path):
    b = load_dataset("fashion_mnist", root=str(tmp_path))
    assert (len(b.x_train), len(b.x_val), len(b.x_test)) == (54000, 6000, 10000)
    assert b.y_test.bincount().tolist() == [1000] * 10
    assert abs(b.mean[0] - 0.2860) < 2e-3 and abs(b.std[0] - 0.3530) < 2e-3


# --------------------------------------------------------------------------- imagefolder


def _write_images(root: Path, classes: dict[str, tuple[int, int, int]], per_class: int) -> None:
    from PIL import Image

    for name, colour in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (14, 10), colour).save(root / name / f"{i}.png")
    # A grayscale image must come back with 3 identical channels.
    Image.new("L", (9, 9), 128).save(root / next(iter(classes)) / "gray.png")


COLOURS = {"cat": (255, 0, 0), "dog": (0, 0, 255)}


def test_imagefolder_loads_resized_rgb_images(tmp_path):
    _write_images(tmp_path, COLOURS, per_class=5)  # 11 images
    b = load_dataset("imagefolder", root=str(tmp_path), image_size=8, test_size=3, val_size=2)
    assert b.in_shape == (3, 8, 8) and b.num_classes == 2 and b.augment == "crop_flip"
    assert (len(b.x_train), len(b.x_val), len(b.x_test)) == (6, 2, 3)
    x = torch.cat([b.x_train, b.x_val, b.x_test])
    y = torch.cat([b.y_train, b.y_val, b.y_test])
    colours = {tuple(img[:, 4, 4].tolist()) for img in x}
    assert colours == {(255, 0, 0), (0, 0, 255), (128, 128, 128)}
    by_label = {0: COLOURS["cat"], 1: COLOURS["dog"]}  # classes in sorted folder order
    for img, label in zip(x, y, strict=True):
        pixel = tuple(img[:, 4, 4].tolist())
        # the gray one lives in "cat"
        assert pixel == by_label[int(label)] or (pixel == (128, 128, 128) and label == 0), (pixel, label)


def test_imagefolder_with_separate_test_root(tmp_path):
    _write_images(tmp_path / "train", COLOURS, per_class=4)
    _write_images(tmp_path / "test", COLOURS, per_class=2)
    b = load_dataset(
        "imagefolder", root=str(tmp_path / "train"), test_root=str(tmp_path / "test"), val_size=1
    )
    assert b.in_shape == (3, 32, 32)
    assert (len(b.x_train), len(b.x_val), len(b.x_test)) == (8, 1, 5)
    assert sorted(b.y_test.tolist()) == [0, 0, 0, 1, 1]


def test_imagefolder_errors(tmp_path):
    with pytest.raises(ValueError, match=r"dataset\.root: required for imagefolder"):
        load_dataset("imagefolder")
    with pytest.raises(FileNotFoundError, match=r"dataset\.root: .* is not a directory"):
        load_dataset("imagefolder", root=str(tmp_path / "nowhere"))
    _write_images(tmp_path / "train", COLOURS, per_class=2)
    _write_images(tmp_path / "test", {"cat": (1, 2, 3), "cow": (4, 5, 6)}, per_class=2)
    with pytest.raises(ValueError, match=r"dataset\.test_root: class folders"):
        load_dataset("imagefolder", root=str(tmp_path / "train"), test_root=str(tmp_path / "test"))
    with pytest.raises(
        ValueError, match=r"dataset\.test_size: not used when dataset\.test_root is set"
    ):
        load_dataset(
            "imagefolder",
            root=str(tmp_path / "train"),
            test_root=str(tmp_path / "test"),
            test_size=0.3,
        )
    with pytest.raises(ValueError, match=r"dataset\.image_size: must be an int >= 1"):
        load_dataset("imagefolder", root=str(tmp_path / "train"), image_size=0)
