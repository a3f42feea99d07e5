"""The dataset catalog: for every file-backed dataset, its files per split, official URLs and checksums,
archives and system locations (data only; `hybridc.data.sources` finds and fetches the files)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Archive:
    """An official archive that provides some of a dataset's files.

    ``members`` are file basenames inside the archive (any folder); they are extracted to
    ``<home>/<subdir>/<basename>``.
    """

    filename: str
    urls: tuple[str, ...]
    md5: str | None
    subdir: str
    members: tuple[str, ...]


@dataclass(frozen=True)
class Source:
    """Files, locations and download URLs of one dataset."""

    name: str
    title: str
    splits: Mapping[str, tuple[str, ...]]
    homepage: str
    subdirs: tuple[str, ...] = ()
    mirrors: tuple[str, ...] = ()  # base URLs (ending in "/") for per-file downloads
    md5: Mapping[str, str] = field(default_factory=dict)  # remote file name -> MD5
    archives: tuple[Archive, ...] = ()
    system_dirs: tuple[str, ...] = ()
    debian_package: str | None = None
    note: str = ""  # extra advice for the "missing files" message

    def urls_for(self, filename: str) -> list[str]:
        """Official URLs of a per-file download."""
        return [m + filename for m in self.mirrors]

    def archive_for(self, filename: str) -> Archive | None:
        """The archive providing ``filename``, if the dataset ships as archives."""
        return next((a for a in self.archives if filename in a.members), None)


def _idx_splits() -> dict[str, tuple[str, ...]]:
    return {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }


_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_IMAGENET32_TRAIN = tuple(f"train_data_batch_{i}.npz" for i in range(1, 11))

#: Download/lookup description of every file-backed dataset (``digits`` ships with scikit-learn).
SOURCES: dict[str, Source] = {
    "mnist": Source(
        name="mnist",
        title="MNIST",
        splits=_idx_splits(),
        homepage="https://yann.lecun.com/exdb/mnist/",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": Source(
        name="fashion-mnist",
        title="Fashion-MNIST",
        splits=_idx_splits(),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        debian_package="dataset-fashion-mnist",
        note="On Debian/Ubuntu, `apt-get install dataset-fashion-mnist` also works (found automatically).",
    ),
    "kmnist": Source(
        name="kmnist",
        title="Kuzushiji-MNIST",
        splits=_idx_splits(),
        homepage="https://github.com/rois-codh/kmnist",
        mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        md5={
            "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
            "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
            "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
            "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
        },
    ),
    "cifar10": Source(
        name="cifar10",
        title="CIFAR-10",
        splits={"train": _CIFAR10_TRAIN, "test": ("test_batch",)},
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        subdirs=("cifar-10-batches-py",),
        archives=(
            Archive(
                filename="cifar-10-python.tar.gz",
                urls=("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                md5="c58f30108f718f92721af3b95e74349a",
                subdir="cifar-10-batches-py",
                members=(*_CIFAR10_TRAIN, "test_batch", "batches.meta"),
            ),
        ),
    ),
    "cifar100": Source(
        name="cifar100",
        title="CIFAR-100",
        splits={"train": ("train",), "test": ("test",)},
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        subdirs=("cifar-100-python",),
        archives=(
            Archive(
                filename="cifar-100-python.tar.gz",
                urls=("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
                md5="eb9058c3a382ffc7106e4002c42a8d85",
                subdir="cifar-100-python",
                members=("train", "test", "meta"),
            ),
        ),
    ),
    "imagenet32": Source(
        name="imagenet32",
        title="ImageNet32x32 (downsampled ImageNet)",
        splits={"train": _IMAGENET32_TRAIN, "test": ("val_data.npz",)},
        homepage="https://image-net.org/download-images.php",
        subdirs=("Imagenet32_train_npz", "Imagenet32_val_npz"),
        archives=(
            Archive(
                filename="Imagenet32_train_npz.zip",
                urls=("https://image-net.org/data/downsample/Imagenet32_train_npz.zip",),
                md5=None,
                subdir="Imagenet32_train_npz",
                members=_IMAGENET32_TRAIN,
            ),
            Archive(
                filename="Imagenet32_val_npz.zip",
                urls=("https://image-net.org/data/downsample/Imagenet32_val_npz.zip",),
                md5=None,
                subdir="Imagenet32_val_npz",
                members=("val_data.npz",),
            ),
        ),
        note=(
            "image-net.org may require you to log in and accept the ImageNet terms before downloading "
            "the 'Downsampled ImageNet 32x32' npz archives; download them in a browser in that case."
        ),
    ),
}
