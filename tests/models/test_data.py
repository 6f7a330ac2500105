import gzip
import struct

import numpy as np
import pytest
import torch

from models.data import FASHION_MNIST_CLASSES, DatasetError, load_dataset, read_idx, to_float


def write_idx(path, array: np.ndarray, type_code: int = 0x08, compress: bool = False) -> None:
    header = struct.pack(">HBB", 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(">u1" if type_code == 0x08 else ">i4").tobytes()
    (gzip.open if compress else open)(path, "wb").write(payload)


def test_fashion_mnist_splits_have_the_documented_shapes():
    train = load_dataset("fashion-mnist", "train", limit=100)
    test = load_dataset("fashion-mnist", "test")
    assert train.images.shape == (100, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert test.labels.shape == (10000,) and set(test.labels.tolist()) == set(range(10))
    assert test.classes == FASHION_MNIST_CLASSES
    # Real data, not zeros: images use the full gray range.
    assert int(test.images.max()) == 255 and int(test.images.min()) == 0
    x = to_float(test.images[:4])
    assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) == 1.0


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.gz" if compress else "a")
    write_idx(path, array, compress=compress)
    np.testing.assert_array_equal(read_idx(path), array)


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    array = np.zeros((5, 28, 28), np.uint8)
    path = tmp_path / "images"
    write_idx(path, array)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        read_idx(path)


def test_truncated_gzip_is_a_clear_error(tmp_path):
    path = tmp_path / "images.gz"
    write_idx(path, np.zeros((50, 28, 28), np.uint8), compress=True)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DatasetError, match="cannot read IDX"):
        read_idx(path)


@pytest.mark.parametrize("payload,message", [
    (b"\x00\x00", "too short"),
    (b"PK\x03\x04rest", "bad magic"),
    (b"\x00\x00\x08\x03\x00\x00", "ends early"),
])
def test_malformed_headers_are_clear_errors(tmp_path, payload, message):
    path = tmp_path / "bad"
    path.write_bytes(payload)
    with pytest.raises(DatasetError, match=message):
        read_idx(path)


def test_labels_that_do_not_match_images_are_refused(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros((2,), np.uint8))
    with pytest.raises(DatasetError, match="3 images but labels"):
        load_dataset("mnist", "train", data_dir=tmp_path)


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError, match="download mnist"):
        load_dataset("mnist", "train", data_dir=tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("cifar", "train")
