"""User data files (``load_dataset("file", path=...)``): .npz and .safetensors, and every refusal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file as save_torch

from gls_core.data import Dataset, load_dataset


def images(n: int = 6, shape: tuple[int, int, int] = (3, 4, 5)) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, *shape), dtype=np.uint8)


def test_npz_uint8(tmp_path: Path) -> None:
    x, y = images(), np.array([0, 2, 1, 2, 0, 4], dtype=np.int32)
    path = tmp_path / "mine.npz"
    np.savez(path, x=x, y=y, extra=np.zeros(3))
    d = load_dataset("file", path=path)
    assert (d.name, len(d), d.num_classes, d.shape, d.source) == ("file", 6, 5, (3, 4, 5), str(path))
    assert d.x.dtype == torch.float32 and torch.equal(d.x, torch.from_numpy(x).float() / 255)
    assert d.y.dtype == torch.int64 and d.y.tolist() == y.tolist()
    assert d.augmentation.is_identity
    assert load_dataset("file", "test", path=path, subset=2).y.tolist() == [0, 2]  # one split: split is moot
    assert load_dataset("file", path=path, num_classes=10).num_classes == 10


def test_uint8_pixels_can_stay_uint8_for_a_caller_that_stores_them(tmp_path: Path) -> None:
    from gls_core.data.userfile import read_user_file

    x, y = images(), np.array([0, 2, 1, 2, 0, 4], dtype=np.int32)
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    raw, labels, classes = read_user_file(tmp_path / "mine.npz", as_float=False)
    assert raw.dtype == torch.uint8 and torch.equal(raw, torch.from_numpy(x)) and classes == 5
    floats = np.random.default_rng(2).random((3, 1, 2, 2)).astype(np.float32)
    np.savez(tmp_path / "floats.npz", x=floats, y=np.array([0, 1, 1]))
    kept, _, _ = read_user_file(tmp_path / "floats.npz", as_float=False)  # float pixels are float32 either way
    assert kept.dtype == torch.float32 and torch.equal(kept, torch.from_numpy(floats))


def test_npz_float64_and_safetensors(tmp_path: Path) -> None:
    x = np.random.default_rng(1).random((4, 1, 8, 8))
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 0.0, 1.0  # both ends of [0, 1] are allowed
    np.savez_compressed(tmp_path / "f.npz", x=x, y=np.array([1, 1, 0, 3], dtype=np.uint8))
    d = load_dataset("file", path=tmp_path / "f.npz")
    assert d.x.dtype == torch.float32 and torch.allclose(d.x, torch.from_numpy(x).float()) and d.num_classes == 4
    half = torch.from_numpy(x).to(torch.bfloat16)  # a dtype numpy lacks
    save_torch({"x": half, "y": torch.tensor([1, 1, 0, 3])}, tmp_path / "t.safetensors")
    t = load_dataset("file", path=tmp_path / "t.safetensors")
    assert t.x.dtype == torch.float32 and torch.allclose(t.x, d.x, atol=4e-3) and t.y.tolist() == [1, 1, 0, 3]
    save_numpy({"x": images(3), "y": np.array([0, 1, 2], dtype=np.int64)}, tmp_path / "u.safetensors")
    assert load_dataset("file", path=tmp_path / "u.safetensors", num_classes=3).x.shape == (3, 3, 4, 5)


@pytest.mark.parametrize(("arrays", "kwargs", "problem"), [
    ({"y": np.zeros(6, np.int64)}, {}, "missing array 'x' (the file holds y)"),
    ({"x": images()}, {}, "missing array 'y' (the file holds x)"),
    ({"x": images()[:, 0], "y": np.zeros(6, np.int64)}, {}, "'x' must be 4-D (N x C x H x W), got 3-D"),
    ({"x": images(shape=(28, 28, 3)), "y": np.zeros(6, np.int64)}, {}, "looks channels-last"),
    ({"x": images().astype(np.int32), "y": np.zeros(6, np.int64)}, {}, "must be uint8 (0..255) or floating point"),
    ({"x": images().astype(np.float32), "y": np.zeros(6, np.int64)}, {}, "float 'x' must lie in [0, 1]"),
    ({"x": -np.ones((2, 1, 2, 2)), "y": np.zeros(2, np.int64)}, {}, "float 'x' must lie in [0, 1]"),
    ({"x": np.full((2, 1, 2, 2), np.nan), "y": np.zeros(2, np.int64)}, {}, "'x' contains NaN"),
    ({"x": images(), "y": np.zeros(6)}, {}, "'y' must hold integer labels, got torch.float64"),
    ({"x": images(), "y": np.zeros((6, 1), np.int64)}, {}, "'y' must be 1-D (N labels), got shape (6, 1)"),
    ({"x": images(), "y": np.zeros(5, np.int64)}, {}, "'x' has 6 examples but 'y' has 5 labels"),
    ({"x": images(), "y": np.array([0, 1, -1, 0, 1, 0])}, {}, "'y' has negative labels (min -1)"),
    ({"x": images(), "y": np.array([0, 1, 9, 0, 1, 0])}, {"num_classes": 5}, "label 9, which needs more than"),
    ({"x": images(0), "y": np.zeros(0, np.int64)}, {}, "'x' holds no examples"),
])
@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_refused(tmp_path: Path, arrays: dict[str, Any], kwargs: dict[str, int], problem: str,
                 suffix: str) -> None:
    path = tmp_path / f"bad{suffix}"
    if suffix == ".npz":
        np.savez(path, **arrays)
    else:
        save_numpy({key: np.ascontiguousarray(value) for key, value in arrays.items()}, path)
    with pytest.raises(ValueError) as error:
        load_dataset("file", path=path, **kwargs)  # type: ignore[arg-type]
    assert str(error.value).startswith(f"{path}: ") and problem in str(error.value), str(error.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data.pt: unsupported file type '\.pt'; expected one of \.npz, \.sa"):
        load_dataset("file", path=tmp_path / "data.pt")
    with pytest.raises(FileNotFoundError, match="absent.npz: no such file"):
        load_dataset("file", path=tmp_path / "absent.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip archive")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    for name in ("junk.npz", "junk.safetensors"):
        with pytest.raises(ValueError, match=f"{name}: cannot read it as"):
            load_dataset("file", path=tmp_path / name)
    np.savez(tmp_path / "pickled.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="pickled.npz: cannot read it as .npz"):  # never unpickled
        load_dataset("file", path=tmp_path / "pickled.npz")


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_labels_out_of_range_are_named_with_their_index(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"labels{suffix}"
    arrays = {"x": images(), "y": np.array([0, 1, 12, 3, 11, 0], dtype=np.int64)}
    if suffix == ".npz":
        np.savez(path, **arrays)
    else:
        save_numpy(arrays, path)
    with pytest.raises(ValueError) as error:
        load_dataset("file", path=path, num_classes=10)
    assert str(error.value) == (f"{path}: 'y' has label 12, which needs more than num_classes=10 classes (the first "
                                "label outside 0..9 is 12 at index 2, 2 in all)")
    arrays["y"] = np.array([0, 1, 2, 3, -4, 0], dtype=np.int64)
    if suffix == ".npz":
        np.savez(path, **arrays)
    else:
        save_numpy(arrays, path)
    with pytest.raises(ValueError, match=r"negative labels \(min -4\); the first is -4 at index 4;"):
        load_dataset("file", path=path)


def test_a_file_named_npz_that_is_not_one_is_named_plainly(tmp_path: Path) -> None:
    text = tmp_path / "table.npz"
    text.write_text("x,y\n0,1\n")
    with pytest.raises(ValueError) as error:
        load_dataset("file", path=text)
    message = str(error.value)
    assert message.startswith(f"{text}: cannot read it as .npz: it is not a zip archive") and "pickle" not in message
    single = tmp_path / "array.npz"
    np.save(tmp_path / "array.npy", images())
    (tmp_path / "array.npy").rename(single)
    with pytest.raises(ValueError, match=r"array.npz: cannot read it as .npz: it is a single .npy array; an .npz is "
                                         r"the zip of named arrays that numpy.savez\(path, x=..., y=...\) writes"):
        load_dataset("file", path=single)


def test_a_dataset_names_its_first_bad_label() -> None:
    with pytest.raises(ValueError, match=r"^d: labels must lie in \[0, 10\): the first label outside 0..9 is 13 at "
                                         r"index 1$"):
        Dataset("d", torch.zeros(3, 1, 2, 2), torch.tensor([0, 13, 2]), 10)
