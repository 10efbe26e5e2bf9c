"""Dataset loaders: real MNIST, Fashion-MNIST, the CIFAR-10 subset and digits, plus the published
layouts (CIFAR-10 binary batches, tiny-imagenet-200, IDX) built in tmp_path, downloads served from a
local HTTP server, and the errors for missing files.
"""

from __future__ import annotations

import functools
import gzip
import http.server
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from servers import shared_data_dir

from gls_core.data import (
    DATASET_NAMES,
    Augmentation,
    Dataset,
    default_augmentation,
    load_dataset,
    load_mnist,
)
from gls_core.data import download as download_module
from gls_core.data import mnist as mnist_module
from gls_core.nets.zoo import DATASETS

DATA = shared_data_dir()
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
UNREACHABLE = ("http://127.0.0.1:9/",)  # the discard port: connection refused at once


# ---------------------------------------------------------------- writers of the published formats

def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (uint8), gzip-compressed when the name ends in .gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def write_idx_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image_name, label_name = mnist_module.IDX_FILES[split]
    write_idx(folder / f"{image_name}.gz", images)
    write_idx(folder / f"{label_name}.gz", labels)


def cifar_records(labels: list[int], seed: int) -> tuple[bytes, np.ndarray]:
    """Binary CIFAR-10 records and the images they encode (N x 3 x 32 x 32 uint8)."""
    images = np.random.default_rng(seed).integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
    rows = [bytes([label]) + image.tobytes() for label, image in zip(labels, images)]
    return b"".join(rows), images


def write_tinyimagenet(root: Path, train_counts: dict[str, int], val: list[str]) -> dict[tuple[str, str], int]:
    """A tiny-imagenet-200 folder with solid-colour JPEGs; returns the grey level of each (split, file)."""
    folder = root / "tinyimagenet" / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(train_counts) + "\n")  # deliberately unsorted
    levels: dict[tuple[str, str], int] = {}
    level = 10
    for wnid, count in train_counts.items():
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(count):
            name = f"{wnid}_{i}.JPEG"
            mode = "L" if i == 1 else "RGB"  # the real set has a few greyscale JPEGs
            Image.new(mode, (64, 64), level if mode == "L" else (level,) * 3).save(images / name, "JPEG")
            levels[("train", name)] = level
            level += 20
    lines = []
    for i, wnid in enumerate(val):
        name = f"val_{i}.JPEG"
        Image.new("RGB", (64, 64), (level,) * 3).save(folder / "val" / "images" / name, "JPEG")
        levels[("val", name)] = level
        lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
        level += 20
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return levels


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on localhost, and its base URL: downloads tested without the internet."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- real data

@pytest.fixture(scope="module")
def mnist_train() -> Dataset:
    return load_dataset("mnist", "train", DATA, download=False)


def test_real_mnist_train(mnist_train: Dataset) -> None:
    d = mnist_train
    assert (d.name, len(d), d.num_classes, d.shape) == ("mnist", 60000, 10, (1, 28, 28))
    assert d.x.dtype == torch.float32 and d.x.shape == (60000, 1, 28, 28) and d.x.is_contiguous()
    assert d.y.dtype == torch.int64 and d.y.shape == (60000,)
    assert float(d.x.min()) == 0.0 and float(d.x.max()) == 1.0
    assert abs(float(d.x.mean()) - 0.1307) < 1e-4  # the published mean: not normalised
    assert torch.bincount(d.y, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert d.augmentation.is_identity
    assert d.source.endswith("train-images-idx3-ubyte.gz")


def test_real_mnist_test_and_load_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLS_DATA_DIR", str(DATA))
    d = load_dataset("mnist", "test", download=False)  # the data directory from $GLS_DATA_DIR
    assert d.x.shape == (10000, 1, 28, 28) and sorted(set(d.y.tolist())) == list(range(10))
    x, y = load_mnist("test")  # the older entry point: same tensors
    assert torch.equal(x, d.x) and torch.equal(y, d.y)
    with pytest.raises(ValueError, match="split"):
        load_mnist("validation")


def test_subset_keeps_the_first_examples(mnist_train: Dataset) -> None:
    d = load_dataset("mnist", "train", DATA, subset=100, download=False)
    assert len(d) == 100 and torch.equal(d.x, mnist_train.x[:100]) and torch.equal(d.y, mnist_train.y[:100])
    with pytest.raises(ValueError, match="subset=20000 asks for more than the 10000 examples"):
        load_dataset("mnist", "test", DATA, subset=20000, download=False)
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="subset must be a positive integer"):
            load_dataset("mnist", "test", DATA, subset=bad, download=False)  # type: ignore[arg-type]


def test_real_fashion_mnist() -> None:
    """Read through the fallback to the Debian package's copy when the shared data folder has none."""
    assert Path("/usr/share/datasets/fashion-mnist").is_dir(), "run scripts/bootstrap (installs dataset-fashion-mnist)"
    train = load_dataset("fashion-mnist", "train", DATA, download=False)
    test = load_dataset("fashion-mnist", "test", DATA, download=False)
    assert (len(train), len(test), train.shape, train.num_classes) == (60000, 10000, (1, 28, 28), 10)
    assert torch.bincount(train.y, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(test.y, minlength=10).tolist() == [1000] * 10
    assert float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0
    assert train.source.startswith((str(DATA / "fashion-mnist"), "/usr/share/datasets/fashion-mnist/"))
    assert not torch.equal(train.x[:10], load_dataset("mnist", "train", DATA, subset=10, download=False).x)


def test_fashion_mnist_data_dir_comes_before_the_system_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "system"
    write_idx_split(system, "test", np.full((3, 28, 28), 255, np.uint8), np.array([1, 2, 3]))
    monkeypatch.setitem(mnist_module.SYSTEM_DIRS, "fashion-mnist", (system,))
    root = tmp_path / "data"
    assert load_dataset("fashion-mnist", "test", root, download=False).y.tolist() == [1, 2, 3]  # the fallback
    write_idx_split(root / "fashion-mnist", "test", np.zeros((2, 28, 28), np.uint8), np.array([7, 8]))
    d = load_dataset("fashion-mnist", "test", root, download=False)
    assert d.y.tolist() == [7, 8] and float(d.x.max()) == 0.0


def test_real_cifar10_subset() -> None:
    train = load_dataset("cifar10", "train", DATA, download=False)
    test = load_dataset("cifar10", "test", DATA, download=False)
    assert (len(train), len(test)) == (4000, 1000)
    for d in (train, test):
        assert d.x.shape[1:] == (3, 32, 32) and d.x.dtype == torch.float32 and d.num_classes == 10
        assert float(d.x.min()) >= 0.0 and float(d.x.max()) <= 1.0
        assert sorted(set(d.y.tolist())) == list(range(10))
        assert d.augmentation == Augmentation(pad=2, flip=True)
        assert "cifar10_subset" in d.source
    # The layout: one label byte, then the R, G and B planes of 32x32 (checked on the raw bytes).
    raw_file = DATA / "cifar10_subset" / "test_batch_first1000.bin.gz"
    raw = np.frombuffer(gzip.decompress(raw_file.read_bytes()), np.uint8)
    assert int(test.y[1]) == raw[3073]
    assert torch.equal(test.x[1], torch.from_numpy(raw[3074:6146].reshape(3, 32, 32).astype(np.float32) / 255))
    mean = train.x.mean(dim=(0, 2, 3))  # colour statistics of real CIFAR-10 (R > G > B)
    assert torch.allclose(mean, torch.tensor([0.4914, 0.4822, 0.4465]), atol=0.02) and mean[0] > mean[2]


def test_real_digits() -> None:
    from sklearn.datasets import load_digits

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test), train.shape, train.num_classes) == (1500, 297, (1, 8, 8), 10)
    assert float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0
    raw = load_digits()
    assert torch.equal(test.x.reshape(297, 64), torch.from_numpy(raw.data[1500:].astype(np.float32) / 16))
    assert torch.equal(train.y, torch.from_numpy(raw.target[:1500]))
    assert len(load_dataset("digits", "test", subset=10)) == 10


def test_registry_matches_the_network_zoo() -> None:
    assert set(DATASET_NAMES) == set(DATASETS) | {"file"}
    from gls_core.data.registry import SHAPES

    assert {name: shape for name, (shape, _, _) in DATASETS.items()} == SHAPES
    assert default_augmentation("cifar10") == Augmentation(2, True)
    assert default_augmentation("tinyimagenet") == Augmentation(4, True)
    assert all(default_augmentation(name).is_identity for name in ("mnist", "fashion-mnist", "digits", "file"))


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        load_dataset("svhn")
    with pytest.raises(ValueError, match="split must be one of train, test"):
        load_dataset("mnist", "val", DATA)
    with pytest.raises(ValueError, match="needs path="):
        load_dataset("file")
    with pytest.raises(ValueError, match="path= is only for name='file'"):
        load_dataset("mnist", path="x.npz")
    with pytest.raises(ValueError, match="mnist has 10 classes, not num_classes=5"):
        load_dataset("mnist", "test", DATA, num_classes=5, download=False)


# ---------------------------------------------------------------- published layouts built here

def test_cifar10_binary_batches(tmp_path: Path) -> None:
    """The full set (5 train batches, raw or .gz) is preferred to the subset, in file order."""
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    expected = []
    for i in range(1, 6):
        records, images = cifar_records([i, 9 - i], seed=i)
        name = folder / f"data_batch_{i}.bin"
        name.with_suffix(".bin.gz").write_bytes(gzip.compress(records)) if i % 2 else name.write_bytes(records)
        expected.append(images)
    (folder / "test_batch.bin").write_bytes(cifar_records([3, 4, 5], seed=0)[0])
    (tmp_path / "cifar10_subset").mkdir()  # present but ignored
    train = load_dataset("cifar10", "train", tmp_path, download=False)
    assert train.y.tolist() == [1, 8, 2, 7, 3, 6, 4, 5, 5, 4]
    assert torch.equal(train.x, torch.from_numpy(np.concatenate(expected).astype(np.float32) / 255))
    assert load_dataset("cifar10", "test", tmp_path, download=False).y.tolist() == [3, 4, 5]
    assert load_dataset("cifar10", "train", tmp_path, subset=3, download=False).y.tolist() == [1, 8, 2]


def test_cifar10_malformed_and_incomplete(tmp_path: Path) -> None:
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    (folder / "test_batch.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(ValueError, match="not a whole number of 3073-byte CIFAR-10 records"):
        load_dataset("cifar10", "test", tmp_path, download=False)
    (folder / "test_batch.bin").write_bytes(bytes([12]) + bytes(3072))
    with pytest.raises(ValueError, match="labels must be 0..9, found 12"):
        load_dataset("cifar10", "test", tmp_path, download=False)
    # An incomplete full set is an error even when the subset exists: never a silent 4,000 images.
    (folder / "data_batch_1.bin").write_bytes(cifar_records([0], seed=0)[0])
    subset = tmp_path / "cifar10_subset"
    subset.mkdir()
    (subset / "data_batch_1_first4000.bin").write_bytes(cifar_records([0], seed=0)[0])
    with pytest.raises(FileNotFoundError, match="data_batch_2.bin"):
        load_dataset("cifar10", "train", tmp_path, download=False)


def test_tinyimagenet_layout(tmp_path: Path) -> None:
    counts = {"n09999999": 2, "n01111111": 3, "n05555555": 3}  # sorted: n011 -> 0, n055 -> 1, n099 -> 2
    levels = write_tinyimagenet(tmp_path, counts, val=["n05555555", "n09999999", "n01111111", "n05555555"])
    train = load_dataset("tinyimagenet", "train", tmp_path, download=False)
    assert (len(train), train.shape, train.num_classes) == (8, (3, 64, 64), 3)
    assert train.y.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]  # round-robin over classes
    assert train.augmentation == Augmentation(pad=4, flip=True)
    first = levels[("train", "n01111111_0.JPEG")]
    assert torch.allclose(train.x[0], torch.full((3, 64, 64), first / 255), atol=3 / 255)
    grey = levels[("train", "n01111111_1.JPEG")]  # a greyscale JPEG comes out as three equal channels
    assert torch.allclose(train.x[3], torch.full((3, 64, 64), grey / 255), atol=3 / 255)
    test = load_dataset("tinyimagenet", "test", tmp_path, download=False)  # the val set
    assert test.y.tolist() == [1, 2, 0, 1]
    assert torch.allclose(test.x[2], torch.full((3, 64, 64), levels[("val", "val_2.JPEG")] / 255), atol=3 / 255)
    assert load_dataset("tinyimagenet", "train", tmp_path, subset=4, download=False).y.tolist() == [0, 1, 2, 0]
    with pytest.raises(ValueError, match="tinyimagenet has 3 classes, not num_classes=200"):
        load_dataset("tinyimagenet", "test", tmp_path, download=False, num_classes=200)


def test_tinyimagenet_wrong_image_size(tmp_path: Path) -> None:
    write_tinyimagenet(tmp_path, {"n01": 1}, val=["n01"])
    image = tmp_path / "tinyimagenet" / "tiny-imagenet-200" / "val" / "images" / "val_0.JPEG"
    Image.new("RGB", (32, 32)).save(image, "JPEG")
    with pytest.raises(ValueError, match="val_0.JPEG: expected a 64x64 image, got 32x32"):
        load_dataset("tinyimagenet", "test", tmp_path, download=False)


# ---------------------------------------------------------------- missing files and downloads

@pytest.mark.parametrize(("name", "folder", "files"), [
    ("mnist", "mnist", ["train-images-idx3-ubyte[.gz]", "train-labels-idx1-ubyte[.gz]"]),
    ("cifar10", "cifar10/cifar-10-batches-bin", [f"data_batch_{i}.bin[.gz]" for i in range(1, 6)]),
    ("tinyimagenet", "tinyimagenet/tiny-imagenet-200", ["wnids.txt", "train/<wnid>/images/*.JPEG"]),
])
def test_missing_files_error(tmp_path: Path, name: str, folder: str, files: list[str]) -> None:
    with pytest.raises(FileNotFoundError) as error:
        load_dataset(name, "train", tmp_path, download=False)
    message = str(error.value)
    assert f"files not found in {tmp_path / folder}" in message
    assert all(file in message for file in files), message
    assert "$GLS_DATA_DIR" in message and "download=False" in message
    assert list(tmp_path.iterdir()) == []  # nothing created


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "tinyimagenet"])
def test_offline_download_fails_into_the_missing_files_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setitem(download_module.MIRRORS, name, UNREACHABLE)
    monkeypatch.setitem(mnist_module.SYSTEM_DIRS, "fashion-mnist", ())  # hide the Debian package's copy
    with pytest.raises(FileNotFoundError) as error:
        load_dataset(name, "test", tmp_path)
    message = str(error.value)
    assert "failed" in message and "http://127.0.0.1:9/" in message and "$GLS_DATA_DIR" in message
    assert str(tmp_path) in message
    assert list(tmp_path.iterdir()) == []  # no folders or partial files left behind


def test_download_idx_files(served: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, url = served
    images = np.arange(4 * 28 * 28, dtype=np.uint64).astype(np.uint8).reshape(4, 28, 28)
    write_idx_split(folder, "test", images, np.array([3, 1, 4, 1]))
    monkeypatch.setitem(download_module.MIRRORS, "mnist", ("http://127.0.0.1:9/", url))  # the first is down
    root = tmp_path / "data"
    d = load_dataset("mnist", "test", root)
    assert d.y.tolist() == [3, 1, 4, 1] and torch.equal(d.x[:, 0], torch.from_numpy(images).float() / 255)
    downloaded = sorted(p.name for p in (root / "mnist").iterdir())
    assert downloaded == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_download_cifar10_archive(served: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, url = served
    with tarfile.open(folder / "cifar-10-binary.tar.gz", "w:gz") as archive:
        for name, labels in [*((f"data_batch_{i}.bin", [i]) for i in range(1, 6)), ("test_batch.bin", [7, 8])]:
            records = cifar_records(labels, seed=len(name))[0]
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(records)
            archive.addfile(info, io.BytesIO(records))
    monkeypatch.setitem(download_module.MIRRORS, "cifar10", (url,))
    assert load_dataset("cifar10", "test", tmp_path).y.tolist() == [7, 8]
    assert load_dataset("cifar10", "train", tmp_path, download=False).y.tolist() == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in (tmp_path / "cifar10").iterdir()) == ["cifar-10-batches-bin"]  # archive removed


def test_download_tinyimagenet_archive(served: tuple[Path, str], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    folder, url = served
    source = tmp_path / "source"
    write_tinyimagenet(source, {"n01": 1, "n02": 1}, val=["n02"])
    with zipfile.ZipFile(folder / "tiny-imagenet-200.zip", "w") as archive:
        for path in (source / "tinyimagenet").rglob("*"):
            archive.write(path, path.relative_to(source / "tinyimagenet"))
    monkeypatch.setitem(download_module.MIRRORS, "tinyimagenet", (url,))
    root = tmp_path / "data"
    assert load_dataset("tinyimagenet", "test", root).y.tolist() == [1]
    assert load_dataset("tinyimagenet", "train", root, download=False).y.tolist() == [0, 1]


def test_train_sizes_are_the_real_training_splits(mnist_train: Dataset) -> None:
    """The sizes a config checks its batch size against: the real splits (CIFAR-10 here is the 4,000 subset)."""
    from gls_core.data import TRAIN_SIZES

    assert set(TRAIN_SIZES) == set(DATASETS)
    assert len(mnist_train) == TRAIN_SIZES["mnist"]
    assert len(load_dataset("fashion-mnist", "train", DATA, download=False)) == TRAIN_SIZES["fashion-mnist"]
    assert len(load_dataset("digits", "train")) == TRAIN_SIZES["digits"]
    assert len(load_dataset("cifar10", "train", DATA, download=False)) <= TRAIN_SIZES["cifar10"]


def test_published_formats_name_the_first_bad_label(tmp_path: Path) -> None:
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    (folder / "test_batch.bin").write_bytes(cifar_records([3, 1, 12, 11], seed=0)[0])
    with pytest.raises(ValueError, match="labels must be 0..9, found 12 \\(the first above 9 is record 2;"):
        load_dataset("cifar10", "test", tmp_path, download=False)
    images = np.zeros((3, 28, 28), np.uint8)
    write_idx_split(tmp_path / "mnist", "test", images, np.array([0, 10, 2], np.uint8))
    with pytest.raises(ValueError, match="labels must be 0..9, found 10 \\(the first above 9 is at index 1\\)"):
        load_dataset("mnist", "test", tmp_path, download=False)
