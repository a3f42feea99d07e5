"""Tests of hybridc.data: file formats, lookup/download behaviour, datasets and the device loader.

Everything runs on small synthetic files written in the real on-disk formats under ``tmp_path``; the
network is never used (downloads are faked or disabled).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from hybridc.data import (
    DATASETS,
    SOURCES,
    DeviceLoader,
    load_dataset,
    random_crop_flip,
    read_idx,
    read_idx_images,
    read_idx_labels,
    search_dirs,
)
from hybridc.data import sources as sources_mod
from hybridc.errors import DataError

# ------------------------------------------------------------------------------------------ helpers


def idx_bytes(arr: np.ndarray) -> bytes:
    """Serialise a uint8 array in IDX format (magic 0x000008DD, big-endian sizes)."""
    assert arr.dtype == np.uint8
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_idx_split(
    directory: Path, prefix: str, n: int, seed: int, gz: bool
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
    return images, labels


def write_cifar_batch(
    path: Path, data: np.ndarray, labels: list[int], label_key: bytes, protocol: int = 2
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {
        b"batch_label": b"synthetic",
        label_key: labels,
        b"data": data,
        b"filenames": [b"x.png"] * len(labels),
    }
    if label_key == b"fine_labels":
        obj[b"coarse_labels"] = [v // 5 for v in labels]
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Isolate from the user's cache and make every download fail as without network; records URLs tried."""
    tried: list[str] = []

    def no_network(request, timeout=None):  # noqa: ANN001 - mimics urllib.request.urlopen
        tried.append(request.full_url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("HYBRIDC_DATA", str(tmp_path / "cache"))
    monkeypatch.delenv("HYBRIDC_OFFLINE", raising=False)
    monkeypatch.setattr(sources_mod, "urlopen", no_network)
    return tried


class FakeResponse(io.BytesIO):
    """Minimal stand-in for an HTTP response (status, headers, read, context manager)."""

    def __init__(self, payload: bytes, announced: int | None = None, fail_after: int | None = None) -> None:
        super().__init__(payload)
        self.status = 200
        self.headers = {"Content-Length": str(announced if announced is not None else len(payload))}
        self._fail_after = fail_after

    def read(self, size: int = -1) -> bytes:
        if self._fail_after is not None and self.tell() >= self._fail_after:
            raise ConnectionResetError("connection reset by peer")
        if self._fail_after is not None and size > 0:
            size = min(size, max(1, self._fail_after - self.tell()))
        return super().read(size)


def no_partial_files(directory: Path) -> bool:
    return not any(p.name.endswith(".part") for p in directory.rglob("*")) if directory.exists() else True


# ------------------------------------------------------------------------------------------ IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_dataset_loads_gz_and_raw(tmp_path: Path, offline: list[str], gz: bool) -> None:
    images, labels = make_idx_split(tmp_path / "mnist", "train", 50, seed=1, gz=gz)
    ds = load_dataset("mnist", data_dir=tmp_path, split="train")
    assert ds.x.shape == (50, 1, 28, 28) and ds.x.dtype == torch.float32
    assert ds.y.dtype == torch.int64 and ds.y.tolist() == labels.tolist()
    assert torch.equal(ds.x[:, 0], torch.from_numpy(images).float() / 255)
    assert (ds.num_classes, ds.input_shape, ds.mean, ds.std) == (10, (1, 28, 28), (0.1307,), (0.3081,))
    assert len(ds) == 50 and ds[3][1].item() == labels[3]
    assert offline == []  # found locally: nothing downloaded


def test_idx_files_directly_in_data_dir_and_test_split(tmp_path: Path, offline: list[str]) -> None:
    images, labels = make_idx_split(tmp_path, "t10k", 20, seed=2, gz=False)
    ds = load_dataset("kmnist", data_dir=tmp_path, split="test")
    assert ds.x.shape == (20, 1, 28, 28) and ds.y.tolist() == labels.tolist()
    assert ds.classes is not None and ds.classes[0] == "o"


def test_idx_other_dtypes_and_byte_order(tmp_path: Path) -> None:
    arr = np.arange(12, dtype=">i4").reshape(3, 4)
    header = bytes([0, 0, 0x0C, 2]) + (3).to_bytes(4, "big") + (4).to_bytes(4, "big")
    path = tmp_path / "ints-idx2-int"
    path.write_bytes(header + arr.tobytes())
    out = read_idx(path)
    assert out.dtype == np.dtype("int32") and out.tolist() == arr.tolist()
    with pytest.raises(DataError, match="expected elements of type uint8"):
        read_idx(path, expect_dtype=np.uint8)


def test_idx_truncated_raw_file(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    full = idx_bytes(np.zeros((60000, 28, 28), np.uint8))
    path.write_bytes(full[:1000])
    with pytest.raises(DataError) as info:
        read_idx_images(path)
    msg = str(info.value)
    assert str(path) in msg and "expected 47040016 bytes, found 1000" in msg and "truncated" in msg


def test_idx_truncated_gzip_stream(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    blob = gzip.compress(
        idx_bytes(np.arange(4 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(4, 28, 28))
    )
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="gzip stream is truncated or corrupt") as info:
        read_idx_images(path)
    assert str(path) in str(info.value)


def test_idx_gzip_of_truncated_content(tmp_path: Path) -> None:
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(100, np.uint8))[:58]))
    with pytest.raises(DataError, match="expected 108 bytes after decompression, found 58"):
        read_idx_labels(path)


def test_idx_trailing_data(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.zeros(10, np.uint8)) + b"junk")
    with pytest.raises(DataError, match="expected 18 bytes, found 22.*trailing"):
        read_idx_labels(path)


def test_idx_corrupt_magic(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"<html>not found</html>" + bytes(100))
    with pytest.raises(DataError) as info:
        read_idx_images(path)
    assert str(path) in str(info.value) and "bad magic number 0x3c68746d" in str(info.value)


def test_idx_wrong_rank_and_label_range(tmp_path: Path) -> None:
    labels = write_idx(tmp_path / "labels", np.array([0, 1, 12], np.uint8), gz=False)
    with pytest.raises(DataError, match="expected a 3-dimensional IDX file, found 1"):
        read_idx_images(labels)
    with pytest.raises(DataError, match="label 12 out of range for 10 classes"):
        read_idx_labels(labels, num_classes=10)


def test_idx_image_label_count_mismatch(tmp_path: Path, offline: list[str]) -> None:
    home = tmp_path / "mnist"
    write_idx(home / "train-images-idx3-ubyte.gz", np.zeros((5, 28, 28), np.uint8), gz=True)
    write_idx(home / "train-labels-idx1-ubyte.gz", np.zeros(4, np.uint8), gz=True)
    with pytest.raises(DataError, match="has 5 images but .* has 4 labels"):
        load_dataset("mnist", data_dir=tmp_path)


# ------------------------------------------------------------------------------------------ CIFAR


def test_cifar10_loads_all_batches_in_order(tmp_path: Path, offline: list[str]) -> None:
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    rng = np.random.default_rng(0)
    all_data, all_labels = [], []
    for i in range(1, 6):
        data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, 4)]
        write_cifar_batch(folder / f"data_batch_{i}", data, labels, b"labels", protocol=2 if i % 2 else 4)
        all_data.append(data)
        all_labels += labels
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.x.shape == (20, 3, 32, 32) and ds.y.tolist() == all_labels
    first = all_data[0][0]
    # Row layout: 1024 red, 1024 green, 1024 blue, each 32x32 row-major.
    assert torch.equal(ds.x[0, 1], torch.from_numpy(first[1024:2048].reshape(32, 32)).float() / 255)
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.num_classes == 10

    write_cifar_batch(folder / "test_batch", all_data[1], [9, 8, 7, 6], b"labels", protocol=5)
    test = load_dataset("cifar-10", data_dir=tmp_path, split="test")
    assert test.y.tolist() == [9, 8, 7, 6]


def test_cifar100_fine_labels(tmp_path: Path, offline: list[str]) -> None:
    folder = tmp_path / "cifar100" / "cifar-100-python"
    data = np.full((3, 3072), 255, np.uint8)
    write_cifar_batch(folder / "test", data, [0, 57, 99], b"fine_labels")
    ds = load_dataset("cifar100", data_dir=tmp_path, split="test")
    assert ds.y.tolist() == [0, 57, 99] and ds.num_classes == 100 and float(ds.x.min()) == 1.0


def test_cifar_wrong_key_shape_and_truncation(tmp_path: Path, offline: list[str]) -> None:
    folder = tmp_path / "cifar100" / "cifar-100-python"
    write_cifar_batch(folder / "test", np.zeros((2, 3072), np.uint8), [1, 2], b"labels")  # CIFAR-10 keys
    with pytest.raises(DataError, match="missing key b'fine_labels'"):
        load_dataset("cifar100", data_dir=tmp_path, split="test")
    write_cifar_batch(folder / "test", np.zeros((2, 1000), np.uint8), [1, 2], b"fine_labels")
    with pytest.raises(DataError, match=r"shape \(N, 3072\)"):
        load_dataset("cifar100", data_dir=tmp_path, split="test")
    write_cifar_batch(folder / "test", np.zeros((2, 3072), np.uint8), [1, 2], b"fine_labels")
    blob = (folder / "test").read_bytes()
    (folder / "test").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset("cifar100", data_dir=tmp_path, split="test")


class _Evil:
    def __reduce__(self):  # noqa: ANN204
        return (os.system, ("echo pwned",))


def test_cifar_pickle_with_foreign_global_is_rejected(tmp_path: Path, offline: list[str]) -> None:
    path = tmp_path / "cifar10" / "test_batch"
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(DataError, match="refusing to load global"):
        load_dataset("cifar10", data_dir=tmp_path, split="test")


def test_cifar_archive_placed_by_user_is_extracted(tmp_path: Path, offline: list[str]) -> None:
    staging = tmp_path / "staging" / "cifar-10-batches-py"
    write_cifar_batch(staging / "test_batch", np.zeros((2, 3072), np.uint8), [3, 4], b"labels")
    home = tmp_path / "cache" / "cifar10"
    home.mkdir(parents=True)
    with tarfile.open(home / "cifar-10-python.tar.gz", "w:gz") as tf:
        tf.add(staging, arcname="cifar-10-batches-py")
    ds = load_dataset("cifar10", split="test")  # uses $HYBRIDC_DATA from the fixture
    assert ds.y.tolist() == [3, 4]
    assert (home / "cifar-10-batches-py" / "test_batch").is_file() and offline == []
    assert no_partial_files(home)


# ------------------------------------------------------------------------------------------ ImageNet32


def write_imagenet32(path: Path, n: int, labels: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(1, 1001, size=n) if labels is None else labels
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, data=data, labels=list(int(v) for v in labels), mean=np.zeros(3072))
    return labels


def test_imagenet32_train_and_val(tmp_path: Path, offline: list[str]) -> None:
    home = tmp_path / "imagenet32"
    expected = []
    for i in range(1, 11):
        expected += list(
            write_imagenet32(home / "Imagenet32_train_npz" / f"train_data_batch_{i}.npz", 3, seed=i)
        )
    ds = load_dataset("imagenet32", data_dir=tmp_path)
    assert ds.x.shape == (30, 3, 32, 32) and ds.num_classes == 1000
    assert ds.y.tolist() == [v - 1 for v in expected]
    write_imagenet32(home / "val_data.npz", 4, labels=np.array([1, 1000, 500, 2]))
    val = load_dataset("imagenet32", data_dir=tmp_path, split="test", dtype=torch.uint8)
    assert val.y.tolist() == [0, 999, 499, 1] and val.x.dtype == torch.uint8


def test_imagenet32_rejects_zero_based_labels_and_bad_files(tmp_path: Path, offline: list[str]) -> None:
    home = tmp_path / "imagenet32"
    write_imagenet32(home / "val_data.npz", 2, labels=np.array([0, 5]))
    with pytest.raises(DataError, match=r"1-based in \[1, 1000\], found \[0, 5\]"):
        load_dataset("imagenet32", data_dir=tmp_path, split="test")
    (home / "val_data.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataError, match="val_data.npz: not a readable .npz archive"):
        load_dataset("imagenet32", data_dir=tmp_path, split="test")


# ------------------------------------------------------------------------------------------ missing files / downloads


def test_missing_idx_files_without_network(tmp_path: Path, offline: list[str]) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("mnist", split="test")
    msg = str(info.value)
    home = tmp_path / "cache" / "mnist"
    assert "t10k-images-idx3-ubyte.gz" in msg and "t10k-labels-idx1-ubyte.gz" in msg
    assert f"put t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (gzipped or not) in {home}" in msg
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/" in msg and "Name or service not known" in msg
    assert offline and all(url.endswith(".gz") for url in offline)
    assert no_partial_files(tmp_path)


def test_missing_with_explicit_data_dir_names_that_dir(tmp_path: Path, offline: list[str]) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("kmnist", data_dir=tmp_path / "mine", download=False)
    msg = str(info.value)
    assert f"in {tmp_path / 'mine' / 'kmnist'}" in msg and "downloads disabled" in msg and offline == []


def test_missing_archive_dataset_message(
    tmp_path: Path, offline: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("cifar10")
    msg = str(info.value)
    assert "data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    assert str(tmp_path / "cache" / "cifar10" / "cifar-10-batches-py") in msg
    monkeypatch.setenv("HYBRIDC_OFFLINE", "1")
    n_tried = len(offline)
    with pytest.raises(DataError, match="Imagenet32_val_npz.zip") as info:
        load_dataset("imagenet32", split="test")
    assert "log in" in str(info.value) and len(offline) == n_tried


def test_download_success_is_verified_and_atomic(
    tmp_path: Path, offline: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(5)
    payloads = {
        "t10k-images-idx3-ubyte.gz": gzip.compress(
            idx_bytes(rng.integers(0, 256, (7, 28, 28), dtype=np.uint8))
        ),
        "t10k-labels-idx1-ubyte.gz": gzip.compress(idx_bytes(np.arange(7, dtype=np.uint8))),
    }
    src = SOURCES["mnist"]
    md5 = {**src.md5, **{k: hashlib.md5(v).hexdigest() for k, v in payloads.items()}}
    monkeypatch.setitem(SOURCES, "mnist", dataclasses.replace(src, md5=md5))
    served: list[str] = []

    def fake_urlopen(request, timeout=None):  # noqa: ANN001
        served.append(request.full_url)
        return FakeResponse(payloads[request.full_url.rsplit("/", 1)[1]])

    monkeypatch.setattr(sources_mod, "urlopen", fake_urlopen)
    ds = load_dataset("mnist", split="test")
    home = tmp_path / "cache" / "mnist"
    assert ds.y.tolist() == list(range(7)) and len(served) == 2
    assert sorted(p.name for p in home.iterdir()) == sorted(payloads)
    assert served[0].startswith(src.mirrors[0])


def test_archive_download_is_extracted_then_removed(
    tmp_path: Path, offline: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = tmp_path / "staging" / "cifar-100-python"
    write_cifar_batch(staging / "test", np.zeros((2, 3072), np.uint8), [5, 6], b"fine_labels")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(staging, arcname="cifar-100-python")
    blob = buf.getvalue()
    src = SOURCES["cifar100"]
    archive = dataclasses.replace(src.archives[0], md5=hashlib.md5(blob).hexdigest())
    monkeypatch.setitem(SOURCES, "cifar100", dataclasses.replace(src, archives=(archive,)))
    monkeypatch.setattr(sources_mod, "urlopen", lambda request, timeout=None: FakeResponse(blob))
    ds = load_dataset("cifar100", split="test")
    home = tmp_path / "cache" / "cifar100"
    assert ds.y.tolist() == [5, 6]
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == [
        "cifar-100-python",
        "cifar-100-python/test",
    ]


def test_archive_download_that_is_not_an_archive_is_discarded(
    tmp_path: Path, offline: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    login_page = b"<html><body>Please log in</body></html>"
    monkeypatch.setattr(sources_mod, "urlopen", lambda request, timeout=None: FakeResponse(login_page))
    with pytest.raises(DataError, match="not a valid archive"):
        load_dataset("imagenet32", split="test")
    home = tmp_path / "cache" / "imagenet32"
    assert not any(p.is_file() for p in home.rglob("*"))


@pytest.mark.parametrize("failure", ["md5", "short", "reset"])
def test_failed_download_leaves_no_file(
    tmp_path: Path, offline: list[str], monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    payload = gzip.compress(idx_bytes(np.zeros(3, np.uint8)))

    def fake_urlopen(request, timeout=None):  # noqa: ANN001
        if failure == "md5":
            return FakeResponse(payload)  # real MNIST md5 does not match
        if failure == "short":
            return FakeResponse(payload[:10], announced=len(payload))
        return FakeResponse(payload, fail_after=10)

    monkeypatch.setattr(sources_mod, "urlopen", fake_urlopen)
    with pytest.raises(DataError) as info:
        load_dataset("mnist", split="test")
    expected = {"md5": "MD5 mismatch", "short": "server announced", "reset": "connection reset"}[failure]
    assert expected in str(info.value)
    home = tmp_path / "cache" / "mnist"
    assert not home.exists() or list(home.iterdir()) == []


def test_unknown_names_and_splits() -> None:
    with pytest.raises(DataError) as info:
        load_dataset("svhn")
    for name in DATASETS:
        assert name in str(info.value)
    with pytest.raises(DataError, match="valid splits: train, test"):
        load_dataset("digits", split="validation")
    assert set(DATASETS) == {
        "digits",
        "fashion-mnist",
        "mnist",
        "kmnist",
        "cifar10",
        "cifar100",
        "imagenet32",
    }


# ------------------------------------------------------------------------------------------ digits, pad_to


def test_digits_split_is_deterministic_and_stratified() -> None:
    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    assert (len(train), len(test)) == (1438, 359)
    assert train.x.shape == (1438, 1, 8, 8) and float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0
    again = load_dataset("digits")
    assert torch.equal(train.x, again.x) and torch.equal(train.y, again.y)
    counts = torch.bincount(test.y, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37
    from sklearn.datasets import load_digits

    all_rows = {tuple(r) for r in (load_digits().images / 16.0).reshape(1797, -1).round(6).tolist()}
    ours = {
        tuple(r) for r in torch.cat([train.x, test.x]).reshape(1797, -1).double().numpy().round(6).tolist()
    }
    assert ours == all_rows


def test_pad_to(tmp_path: Path, offline: list[str]) -> None:
    images, _ = make_idx_split(tmp_path / "fashion-mnist", "train", 6, seed=3, gz=True)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path, pad_to=32)
    assert ds.x.shape == (6, 1, 32, 32) and ds.input_shape == (1, 32, 32)
    assert torch.equal(ds.x[:, 0, 2:30, 2:30], torch.from_numpy(images).float() / 255)
    border = ds.x.clone()
    border[:, :, 2:30, 2:30] = 0
    assert float(border.abs().sum()) == 0.0
    with pytest.raises(DataError, match="smaller than the 28x28"):
        load_dataset("fashion-mnist", data_dir=tmp_path, pad_to=20)


def test_debian_fashion_mnist_is_found_automatically(offline: list[str]) -> None:
    dirs = [d for d in search_dirs(SOURCES["fashion-mnist"]) if (d / "train-images-idx3-ubyte.gz").is_file()]
    if not dirs:
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    train, test = load_dataset("fashion-mnist"), load_dataset("fashion-mnist", split="test")
    assert (len(train), len(test)) == (60000, 10000)
    assert torch.bincount(train.y).tolist() == [6000] * 10
    assert abs(float(train.x.mean()) - train.mean[0]) < 1e-3 and offline == []


# ------------------------------------------------------------------------------------------ loader


def index_data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples whose pixel value and label are their own index, to track them through batching."""
    return torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1), torch.arange(n)


def epoch_batches(loader: DeviceLoader) -> list[torch.Tensor]:
    return [yb.clone() for _, yb in loader]


@pytest.mark.parametrize("drop_last", [False, True])
def test_loader_covers_dataset_once_per_epoch(drop_last: bool) -> None:
    x, y = index_data(103)
    loader = DeviceLoader(x, y, 10, shuffle=True, drop_last=drop_last, seed=7)
    assert len(loader) == (10 if drop_last else 11)
    for epoch in range(3):
        batches = epoch_batches(loader)
        assert len(batches) == len(loader) and loader.epoch == epoch + 1
        seen = torch.cat(batches)
        if drop_last:
            assert len(seen) == 100 and len(set(seen.tolist())) == 100
        else:
            assert sorted(seen.tolist()) == list(range(103))
    xb, yb = next(iter(DeviceLoader(x, y, 10, shuffle=False)))
    assert yb.tolist() == list(range(10)) and torch.equal(xb[:, 0, 0, 0], yb.float())


def test_loader_order_depends_only_on_seed_and_epoch() -> None:
    x, y = index_data(64)
    a = DeviceLoader(x, y, 16, seed=3)
    first, second = torch.cat(epoch_batches(a)), torch.cat(epoch_batches(a))
    assert not torch.equal(first, second)
    b = DeviceLoader(x, y, 16, seed=3)
    b.set_epoch(1)  # jump straight to epoch 1
    assert torch.equal(torch.cat(epoch_batches(b)), second)
    assert not torch.equal(torch.cat(epoch_batches(DeviceLoader(x, y, 16, seed=4))), first)
    g = torch.Generator().manual_seed(11)
    c, d = (
        DeviceLoader(x, y, 16, generator=g),
        DeviceLoader(x, y, 16, generator=torch.Generator().manual_seed(11)),
    )
    assert c.seed == d.seed and torch.equal(torch.cat(epoch_batches(c)), torch.cat(epoch_batches(d)))


def test_loader_resume_mid_epoch_gives_same_batches() -> None:
    x = torch.rand(50, 3, 32, 32)
    y = torch.arange(50)
    ref = DeviceLoader(x, y, 8, seed=5, augment="crop-flip", normalize=((0.5, 0.5, 0.5), (0.2, 0.2, 0.2)))
    epoch_batches(ref)  # finish epoch 0
    it = iter(ref)
    for _ in range(3):
        next(it)
    state = ref.state_dict()
    assert (state["epoch"], state["batch"]) == (1, 3)
    expected = [(xb.clone(), yb.clone()) for xb, yb in it] + list(iter(ref))[:2]

    resumed = DeviceLoader(
        x, y, 8, seed=999, augment="crop-flip", normalize=((0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    )
    resumed.load_state_dict(state)
    got = list(iter(resumed)) + list(iter(resumed))[:2]
    assert len(got) == len(expected) == 6
    for (xa, ya), (xb, yb) in zip(expected, got):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    with pytest.raises(ValueError, match="batch_size=8"):
        DeviceLoader(x, y, 4).load_state_dict(state)


def test_crop_flip_is_random_in_bounds_and_shape_preserving() -> None:
    b, c, h, w, pad = 24, 2, 6, 5, 2
    x = torch.arange(1, b * c * h * w + 1, dtype=torch.float32).reshape(b, c, h, w)
    out = random_crop_flip(x, torch.Generator().manual_seed(0), padding=pad)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    transforms_used = set()
    for i in range(b):
        matches = [
            (dy, dx, flip)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for flip in (False, True)
            if torch.equal(
                out[i],
                (lambda crop, f: crop.flip(-1) if f else crop)(padded[i, :, dy : dy + h, dx : dx + w], flip),
            )
        ]
        assert matches, f"sample {i} is not a padded crop (+flip) of its input"
        transforms_used.add(matches[0])
    assert len(transforms_used) > 5  # per-sample randomness, not one transform for the batch
    assert any(f for _, _, f in transforms_used) and not all(f for _, _, f in transforms_used)
    again = random_crop_flip(x, torch.Generator().manual_seed(0), padding=pad)
    assert torch.equal(out, again)


def test_loader_augmentation_varies_by_epoch_and_normalizes() -> None:
    x = torch.rand(16, 3, 32, 32)
    y = torch.zeros(16, dtype=torch.int64)
    plain = DeviceLoader(x, y, 16, shuffle=False, normalize=((0.5,), (0.25,)))
    xb, _ = next(iter(plain))
    assert torch.allclose(xb, (x - 0.5) / 0.25)
    aug = DeviceLoader(x, y, 16, shuffle=False, augment="crop-flip", seed=1)
    e0, e1 = next(iter(aug))[0], (aug.set_epoch(1), next(iter(aug))[0])[1]
    assert e0.shape == x.shape and not torch.equal(e0, e1) and not torch.equal(e0, x)


def test_loader_accepts_uint8_images() -> None:
    x = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8)
    xb, _ = next(iter(DeviceLoader(x, torch.arange(10), 10, shuffle=False)))
    assert xb.dtype == torch.float32 and torch.allclose(xb, x.float() / 255)


def test_dataset_loader_helper(tmp_path: Path, offline: list[str]) -> None:
    ds = load_dataset("digits", split="test")
    loader = ds.loader(100, seed=0)
    assert len(loader) == 4 and sum(len(yb) for _, yb in loader) == 359


@pytest.mark.cuda
def test_loader_on_cuda_matches_cpu_order() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = torch.rand(40, 3, 32, 32)
    y = torch.arange(40)
    cpu = DeviceLoader(x, y, 8, seed=2, device="cpu")
    gpu = DeviceLoader(
        x, y, 8, seed=2, device="cuda", augment="crop-flip", normalize=((0.5,) * 3, (0.2,) * 3)
    )
    for (_, ya), (xb, yb) in zip(cpu, gpu):
        assert xb.is_cuda and xb.shape == (8, 3, 32, 32) and torch.equal(ya, yb.cpu())
    state = gpu.state_dict()
    assert state["epoch"] == 1
