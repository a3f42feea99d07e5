"""Where dataset files are looked for, and how missing ones are fetched (what each dataset consists of is
`hybridc.data.catalog`).

Search order for dataset ``<name>`` (the first directory holding *all* files of the split wins):

1. with an explicit ``data_dir`` (``--data-dir``): ``<data_dir>/<name>``, then ``<data_dir>`` itself;
   otherwise ``$HYBRIDC_DATA/<name>`` if that variable is set, else ``~/.cache/hybridc/data/<name>``;
2. system copies, e.g. Debian's ``dataset-fashion-mnist`` package, which installs the four gzipped IDX
   files in ``/usr/share/datasets/fashion-mnist`` (also found through ``dpkg -L`` should that move).

Inside each directory, files may also sit in the sub-folder their official archive extracts to
(``cifar-10-batches-py``, ``Imagenet32_train_npz`` ...), and IDX files may be gzipped or not.

When nothing matches, the missing files are downloaded from the dataset's official URLs into the
*home* directory ``<root>/<name>`` (``root`` = ``data_dir``, ``$HYBRIDC_DATA`` or the cache). Every file
is streamed to a hidden temporary file in the destination directory, checked (length, MD5 where the
publisher gives one) and only then renamed into place with :func:`os.replace`, so an interrupted or
corrupt download never leaves a half-written file under a real name. Archives (CIFAR's ``.tar.gz``,
ImageNet32's ``.zip``) are handled the same way, member by member. Without network, or with downloads
disabled (``download=False`` or ``HYBRIDC_OFFLINE=1``), a :class:`~hybridc.errors.DataError` names the
exact files, the directory to put them in and the URL to get them from.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO
from urllib.request import Request, urlopen

from hybridc.data.catalog import SOURCES, Archive, Source
from hybridc.errors import DataError

__all__ = [
    "Archive",
    "Source",
    "SOURCES",
    "DATA_ENV",
    "OFFLINE_ENV",
    "DOWNLOAD_TIMEOUT_S",
    "default_root",
    "dataset_home",
    "search_dirs",
    "debian_package_dirs",
    "locate_files",
    "download_file",
]

DATA_ENV = "HYBRIDC_DATA"
OFFLINE_ENV = "HYBRIDC_OFFLINE"
#: Socket timeout (seconds) for each connect/read of a download; short so a machine without network
#: fails fast instead of hanging.
DOWNLOAD_TIMEOUT_S = 15.0
_CHUNK = 1 << 20
_USER_AGENT = "hybridc-data/0.1 (+python urllib)"


# --------------------------------------------------------------------------------------------------
# Locations


def default_root() -> Path:
    """Root of the dataset cache: ``$HYBRIDC_DATA`` if set, else ``~/.cache/hybridc/data``."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hybridc" / "data"


def dataset_home(name: str, data_dir: str | Path | None = None) -> Path:
    """Directory where dataset ``name`` is downloaded to (and where users are told to put its files)."""
    root = Path(data_dir).expanduser() if data_dir is not None else default_root()
    return root / name


@functools.cache
def debian_package_dirs(package: str, filenames: tuple[str, ...] = ()) -> tuple[Path, ...]:
    """Directories of an installed Debian package that contain any of ``filenames``, via ``dpkg -L``.

    Empty when dpkg is absent, the package is not installed, or dpkg fails; cached per process.
    """
    dpkg = shutil.which("dpkg")
    if dpkg is None:
        return ()
    try:
        out = subprocess.run([dpkg, "-L", package], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ()
    if out.returncode != 0:
        return ()
    wanted = {n for f in filenames for n in _alternatives(f)}
    dirs: dict[Path, None] = {}
    for line in out.stdout.splitlines():
        p = Path(line.strip())
        if p.name in wanted:
            dirs[p.parent] = None
    return tuple(dirs)


def search_dirs(source: Source, data_dir: str | Path | None = None) -> list[Path]:
    """Directories searched for ``source``'s files, in priority order (see the module docstring)."""
    dirs: list[Path] = []
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        dirs += [d / source.name, d]
    else:
        dirs.append(dataset_home(source.name))
    dirs += [Path(s) for s in source.system_dirs]
    if source.debian_package:
        all_files = tuple(f for files in source.splits.values() for f in files)
        dirs += debian_package_dirs(source.debian_package, all_files)
    unique: dict[Path, None] = {}
    for d in dirs:
        unique.setdefault(d, None)
    return list(unique)


def _alternatives(filename: str) -> tuple[str, ...]:
    """Accepted on-disk names of ``filename``: IDX files may also be stored decompressed."""
    return (filename, filename[: -len(".gz")]) if filename.endswith(".gz") else (filename,)


def _find_in(directory: Path, source: Source, filename: str) -> Path | None:
    for sub in ("", *source.subdirs):
        for alt in _alternatives(filename):
            p = directory / sub / alt if sub else directory / alt
            if p.is_file():
                return p
    return None


def _find_all(directories: Iterable[Path], source: Source, files: Sequence[str]) -> dict[str, Path] | None:
    for d in directories:
        found = {f: _find_in(d, source, f) for f in files}
        if all(p is not None for p in found.values()):
            return {f: p for f, p in found.items() if p is not None}
    return None


# --------------------------------------------------------------------------------------------------
# Downloads


class _DownloadFailed(Exception):
    """Internal: one download attempt failed; the message says why."""


def _downloads_enabled(download: bool) -> str | None:
    """None if downloads may be attempted, else the reason they are not."""
    if not download:
        return "downloads disabled (download=False)"
    if os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return f"downloads disabled (${OFFLINE_ENV} is set)"
    return None


@contextmanager
def _atomic_target(dest: Path) -> Iterator[IO[bytes]]:
    """Yield a temporary file next to ``dest``; rename it onto ``dest`` only if the block succeeds.

    Any exception (including KeyboardInterrupt) removes the temporary file, so ``dest`` either keeps
    its old state or holds the complete new content.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def download_file(url: str, dest: Path, md5: str | None = None, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Download ``url`` to ``dest`` atomically, checking the announced length and ``md5`` if given.

    Raises :class:`DataError` (with the URL and the reason) on any network or integrity failure; ``dest``
    is then untouched.
    """
    reason = _attempt(url, dest, md5, timeout)
    if reason is not None:
        raise DataError(f"download of {url} failed: {reason}")


def _attempt(url: str, dest: Path, md5: str | None, timeout: float = DOWNLOAD_TIMEOUT_S) -> str | None:
    """One download attempt; None on success, else why it failed."""
    print(f"hybridc: downloading {url} -> {dest}", file=sys.stderr, flush=True)
    try:
        _download(url, dest, md5, timeout)
    except _DownloadFailed as exc:
        return str(exc)
    return None


def _download(url: str, dest: Path, md5: str | None, timeout: float) -> None:
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urlopen(Request(url, headers={"User-Agent": _USER_AGENT}), timeout=timeout) as resp:
            status = getattr(resp, "status", 200)
            if status is not None and status >= 400:
                raise _DownloadFailed(f"HTTP status {status}")
            length_header = resp.headers.get("Content-Length") if getattr(resp, "headers", None) else None
            expected = int(length_header) if length_header and length_header.isdigit() else None
            received = 0
            with _atomic_target(dest) as out:
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                if expected is not None and received != expected:
                    raise _DownloadFailed(f"received {received} bytes, server announced {expected}")
                if md5 is not None and digest.hexdigest() != md5:
                    raise _DownloadFailed(f"MD5 mismatch: got {digest.hexdigest()}, expected {md5}")
    except _DownloadFailed:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # URLError, HTTPError, timeouts and connection resets are all OSError subclasses.
        raise _DownloadFailed(str(getattr(exc, "reason", None) or exc)) from None


def _extract_members(archive_path: Path, archive: Archive, wanted: Sequence[str], home: Path) -> None:
    """Copy the ``wanted`` basenames out of a .tar.gz/.zip archive into ``home/archive.subdir``, atomically.

    Members are matched by basename and written to paths chosen here, so archive paths (absolute,
    ``..``) are never trusted.
    """
    target = home / archive.subdir
    try:
        if zipfile.is_zipfile(archive_path):
            with zipfile.ZipFile(archive_path) as zf:
                by_name = {Path(i.filename).name: i for i in zf.infolist() if not i.is_dir()}
                for name in wanted:
                    if name not in by_name:
                        raise DataError(f"{archive_path}: archive has no member named {name}")
                    with zf.open(by_name[name]) as src, _atomic_target(target / name) as out:
                        shutil.copyfileobj(src, out, _CHUNK)
        else:
            with tarfile.open(archive_path, "r:*") as tf:
                by_name = {Path(m.name).name: m for m in tf.getmembers() if m.isfile()}
                for name in wanted:
                    if name not in by_name:
                        raise DataError(f"{archive_path}: archive has no member named {name}")
                    src = tf.extractfile(by_name[name])
                    if src is None:
                        raise DataError(f"{archive_path}: cannot read member {name}")
                    with src, _atomic_target(target / name) as out:
                        shutil.copyfileobj(src, out, _CHUNK)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(
            f"{archive_path}: archive is truncated or corrupt ({exc}); delete it and download it again"
        ) from None
    except OSError as exc:
        raise DataError(f"{archive_path}: cannot extract into {target} ({exc})") from None


def _fetch(source: Source, missing: Sequence[str], home: Path, dirs: Sequence[Path]) -> list[tuple[str, str]]:
    """Try to obtain ``missing`` files into ``home``; return ``(reason, url or file)`` of each failure."""
    problems: list[tuple[str, str]] = []
    per_archive: dict[Archive, list[str]] = {}
    for name in missing:
        archive = source.archive_for(name)
        if archive is not None:
            per_archive.setdefault(archive, []).append(name)
            continue
        for url in source.urls_for(name):
            reason = _attempt(url, home / name, source.md5.get(name))
            if reason is None:
                break
            problems.append((reason, url))
        else:
            if not source.mirrors:
                problems.append(("no download URL known", name))
    for archive, names in per_archive.items():
        # An archive the user already placed (e.g. cifar-10-python.tar.gz in the home directory) is
        # extracted instead of downloaded again.
        local = next((d / archive.filename for d in dirs if (d / archive.filename).is_file()), None)
        if local is not None:
            print(f"hybridc: extracting {local} -> {home / archive.subdir}", file=sys.stderr, flush=True)
            try:
                _extract_members(local, archive, names, home)
            except DataError as exc:
                problems.append((str(exc), str(local)))
            continue
        local = home / archive.filename
        for url in archive.urls:
            reason = _attempt(url, local, archive.md5)
            if reason is not None:
                problems.append((reason, url))
                continue
            try:
                _extract_members(local, archive, names, home)
                break
            except DataError as exc:
                # e.g. a login page instead of the archive: do not keep it, or it would be reused.
                problems.append((f"not a valid archive: {exc}", url))
            finally:
                local.unlink(missing_ok=True)  # the extracted files are what is used; save the space
    return problems


def _missing_message(
    source: Source,
    split: str,
    files: Sequence[str],
    dirs: Sequence[Path],
    home: Path,
    reasons: Sequence[tuple[str, str]],
) -> str:
    looked = ", ".join(str(d) for d in dirs)
    lines = [
        f"{source.title} ({source.name}, split '{split}'): missing file(s) {', '.join(files)}.",
        f"Looked in: {looked}.",
    ]
    if reasons:
        grouped: dict[str, list[str]] = {}
        for reason, subject in reasons:
            grouped.setdefault(reason, []).append(subject)
        lines.append(
            "Automatic download failed: "
            + "; ".join(f"{r} ({', '.join(s)})" if any(s) else r for r, s in grouped.items())
            + "."
        )
    archives = list(dict.fromkeys(a for f in files if (a := source.archive_for(f)) is not None))
    if archives:
        for a in archives:
            lines.append(
                f"Fix: download {a.urls[0]} and extract it so that {', '.join(f for f in files if f in a.members)} "
                f"are in {home / a.subdir} (or place {a.filename} itself in {home} and it is extracted for you)."
            )
    else:
        urls = " or ".join(source.mirrors) if source.mirrors else source.homepage
        lines.append(f"Fix: put {', '.join(files)} (gzipped or not) in {home} ; get them from {urls}")
    lines.append(
        f"Alternatively pass --data-dir DIR (files in DIR/{source.name} or DIR) or set ${DATA_ENV}=ROOT "
        f"(files in ROOT/{source.name}). Dataset homepage: {source.homepage}"
    )
    if source.note:
        lines.append(source.note)
    return "\n".join(lines)


def locate_files(
    source: Source,
    split: str,
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
) -> dict[str, Path]:
    """Return ``{file name: path}`` for every file of ``source``'s ``split``, downloading if needed.

    Raises :class:`DataError` naming the missing files, the directory to put them in and their URL.
    """
    if split not in source.splits:
        raise DataError(f"{source.name}: unknown split {split!r}; valid splits: {', '.join(source.splits)}")
    files = source.splits[split]
    dirs = search_dirs(source, data_dir)
    found = _find_all(dirs, source, files)
    if found is not None:
        return found
    home = dataset_home(source.name, data_dir)
    missing = [f for f in files if _find_in(home, source, f) is None]
    reason = _downloads_enabled(download)
    reasons: list[tuple[str, str]] = [(reason, "")] if reason else []
    if reason is None:
        try:
            reasons = _fetch(source, missing, home, dirs)
        except DataError as exc:
            reasons = [(str(exc), "")]
        found = _find_all([home], source, files)
        if found is not None:
            return found
        missing = [f for f in files if _find_in(home, source, f) is None]
    raise DataError(_missing_message(source, split, missing, dirs, home, reasons))
