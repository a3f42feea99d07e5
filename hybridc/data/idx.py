"""Reader for IDX files, the format of MNIST, Fashion-MNIST and Kuzushiji-MNIST.

An IDX file is a big-endian header followed by a dense array:

    bytes 0-1  zero
    byte  2    element type (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64)
    byte  3    number of dimensions D
    then D big-endian uint32 sizes, then prod(sizes) elements, row-major.

Files are accepted gzipped or raw; gzip is recognised by its magic bytes, not by the file name, so a
renamed file still loads. Every way a file can be wrong (bad magic, wrong type or rank, truncated or
overlong body, broken gzip stream) raises :class:`~hybridc.errors.DataError` naming the file and the
problem, because a half-downloaded dataset otherwise shows up much later as a shape error or as a
silently worse model.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from hybridc.errors import DataError

__all__ = ["IDX_DTYPES", "read_idx", "read_idx_images", "read_idx_labels", "load_idx_pair"]

#: IDX element-type code -> numpy dtype (big-endian where it matters).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> tuple[bytes, bool]:
    """Return the (decompressed) content of ``path`` and whether it was gzipped."""
    try:
        with path.open("rb") as fh:
            gzipped = fh.read(2) == _GZIP_MAGIC
            fh.seek(0)
            if not gzipped:
                return fh.read(), False
            return gzip.GzipFile(fileobj=fh, mode="rb").read(), True
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(
            f"{path}: gzip stream is truncated or corrupt ({exc}); delete the file and download it again"
        ) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc})") from None


def read_idx(
    path: str | Path,
    *,
    expect_ndim: int | None = None,
    expect_dtype: np.dtype | type | None = None,
) -> np.ndarray:
    """Read one IDX file (gzipped or raw) and return its array in native byte order.

    ``expect_ndim`` / ``expect_dtype`` make the reader reject, e.g., a labels file passed where an
    images file is expected. The result may be a read-only view of the file's bytes.
    """
    path = Path(path)
    raw, gzipped = _read_bytes(path)
    what = "bytes after decompression" if gzipped else "bytes"
    if len(raw) < 4:
        raise DataError(f"{path}: file is {len(raw)} {what}, too short for an IDX header (4 bytes at least)")
    magic = int.from_bytes(raw[:4], "big")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES or raw[3] == 0:
        raise DataError(
            f"{path}: not an IDX file: bad magic number 0x{magic:08x} (expected 0x0000TTDD with type TT in "
            f"{{{', '.join(f'{k:02x}' for k in IDX_DTYPES)}}} and DD>0 dimensions, e.g. 0x00000803 for images)"
        )
    dtype = IDX_DTYPES[raw[2]]
    ndim = raw[3]
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataError(
            f"{path}: expected a {expect_ndim}-dimensional IDX file, found {ndim} dimensions "
            f"(magic 0x{magic:08x}); is this the right file?"
        )
    if expect_dtype is not None and dtype.newbyteorder("=") != np.dtype(expect_dtype).newbyteorder("="):
        raise DataError(
            f"{path}: expected elements of type {np.dtype(expect_dtype)}, found {dtype} (magic 0x{magic:08x})"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{path}: expected at least {header} {what} for a {ndim}-D IDX header, found {len(raw)}"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = math.prod(shape)
    expected = header + count * dtype.itemsize
    if len(raw) != expected:
        problem = "file is truncated" if len(raw) < expected else "file has trailing data"
        raise DataError(
            f"{path}: expected {expected} {what}, found {len(raw)}: {problem} (the header announces an "
            f"array of shape {shape} and type {dtype}); delete the file and download it again"
        )
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)
    if dtype.byteorder == ">":
        arr = arr.astype(dtype.newbyteorder("="))
    return arr


def read_idx_images(path: str | Path) -> np.ndarray:
    """Read an ``*-images-idx3-ubyte[.gz]`` file: uint8 array of shape (N, H, W)."""
    return read_idx(path, expect_ndim=3, expect_dtype=np.uint8)


def read_idx_labels(path: str | Path, num_classes: int | None = None) -> np.ndarray:
    """Read an ``*-labels-idx1-ubyte[.gz]`` file: int64 array of shape (N,), checked to lie in [0, num_classes)."""
    labels = read_idx(path, expect_ndim=1, expect_dtype=np.uint8).astype(np.int64)
    if num_classes is not None and labels.size and int(labels.max()) >= num_classes:
        raise DataError(f"{Path(path)}: label {int(labels.max())} out of range for {num_classes} classes")
    return labels


def load_idx_pair(
    images_path: str | Path,
    labels_path: str | Path,
    *,
    num_classes: int | None = None,
    image_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read matching image and label files; check counts agree and (optionally) the image size.

    Returns ``(images uint8 (N, 1, H, W), labels int64 (N,))``.
    """
    images = read_idx_images(images_path)
    labels = read_idx_labels(labels_path, num_classes)
    if image_size is not None and tuple(images.shape[1:]) != tuple(image_size):
        raise DataError(
            f"{Path(images_path)}: expected {image_size[0]}x{image_size[1]} images, found "
            f"{images.shape[1]}x{images.shape[2]}"
        )
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{Path(images_path)} has {images.shape[0]} images but {Path(labels_path)} has {labels.shape[0]} "
            "labels; the two files do not belong together"
        )
    return images[:, None, :, :], labels
