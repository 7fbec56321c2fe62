"""File I/O with clear errors and atomic writes.

Every file weakseg produces (checkpoints, label PNGs, metrics JSON, plots) goes through one of the
``atomic_*`` helpers: the content is written to a temporary file in the destination folder and
moved into place with :func:`os.replace`, so a crash never leaves a half-written file behind.
Temporary files carry the writer's process id (``.<name>.<pid>.<random>.weakseg-tmp<suffix>``), so
:func:`clean_stale_temp_files` can remove the ones a killed process left; finished files get the
permissions the user's umask gives (not the 0600 of :func:`tempfile.mkstemp`). A full disk is
reported as :class:`DiskFullError` naming the file.

Paths built from sample ids go through :func:`check_sample_id` (when a split is read) and
:func:`safe_join` (when an output is written), so an id can never reach outside its folder.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError


class UserError(ValueError):
    """A problem with what the user asked for or gave (files, values, folders, a diverged run).

    The message is one line that names the thing and what was expected; the command line prints it
    and exits with status 2. Subclasses say which kind of problem it is.
    """


class DataError(UserError):
    """Bad input data: the message names the file and what was expected."""


class DiskFullError(UserError):
    """A write failed because the disk (or the user's quota) is full; the message names the file."""


class WeaksegWarning(UserWarning):
    """Something the user should know that does not stop the command (the CLI prints it on one line)."""


_NO_SPACE = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
TEMP_MARKER = ".weakseg-tmp"
# .<target name>.<pid>.<mkstemp's random part>.weakseg-tmp<suffix>
_TEMP_RE = re.compile(r"^\..+\.(?P<pid>\d+)\.[A-Za-z0-9_]+" + re.escape(TEMP_MARKER) + r"(\.[^.]*)?$")
STALE_TEMP_SECONDS = 24 * 3600  # a temp file this old is stale whoever wrote it


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` is an OSError for a full disk or an exhausted quota."""
    return isinstance(err, OSError) and err.errno in _NO_SPACE


def disk_full_error(path: str | os.PathLike, err: OSError) -> DiskFullError:
    """The one-line error for a write to ``path`` that failed with ENOSPC / EDQUOT."""
    folder = Path(path).parent
    try:
        stat = os.statvfs(folder)
        free = f"; {_format_bytes(stat.f_bavail * stat.f_frsize)} free there"
    except (OSError, AttributeError):
        free = ""
    reason = "quota exceeded" if err.errno != errno.ENOSPC else "no space left on device"
    return DiskFullError(f"disk full: cannot write {path} ({reason} in {folder}{free}); free space and retry")


def _format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _current_umask() -> int:
    """The process umask, read without changing it where /proc allows (thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no other way to read it; restored at once
    os.umask(mask)
    return mask


def check_sample_id(sample_id: str, source: str | os.PathLike) -> str:
    """Return ``sample_id`` if it is a safe relative name, else raise :class:`DataError` naming ``source``.

    Ids are substituted into path patterns (``images/{id}.png``) and output names
    (``predictions/{id}.png``), so they may hold ``/`` for sub-folders but never reach outside:
    no absolute paths, no drive letters, no ``..`` or empty components, no backslashes or NUL.
    """
    problem = None
    if not sample_id:
        problem = "is empty"
    elif "\x00" in sample_id or "\\" in sample_id:
        problem = "contains a backslash or NUL character"
    elif sample_id.startswith("/") or re.match(r"^[A-Za-z]:", sample_id):
        problem = "is an absolute path"
    elif any(part in ("", ".", "..") for part in sample_id.split("/")):
        problem = "has a '..', '.' or empty path component"
    if problem:
        raise DataError(
            f"{source}: sample id {sample_id!r} {problem}; "
            "ids must be relative names inside the dataset folder (e.g. 2007_000032 or city/img_01)"
        )
    return sample_id


def safe_join(folder: str | os.PathLike, relative: str | os.PathLike) -> Path:
    """``folder / relative``, refusing (with :class:`DataError`) any result outside ``folder``.

    Every writer that builds a file name from a sample id or an input path goes through this.
    """
    base = Path(folder)
    target = base / relative
    root = base.resolve()
    resolved = target.resolve()
    if resolved != root and root not in resolved.parents:
        raise DataError(f"output name {str(relative)!r} would be written outside {base} (at {resolved})")
    return target


def path_as_written_in(target: str | os.PathLike, folder: str | os.PathLike) -> str:
    """How a file in ``folder`` (e.g. its ``dataset.json``) points at the absolute path ``target`` (which may
    hold an ``{id}`` pattern): relative to ``folder`` when the two share a folder below the filesystem
    root, else absolute; POSIX separators either way."""
    target, folder = Path(target), Path(folder)
    if os.path.commonpath([target, folder]) == target.anchor:
        return target.as_posix()
    return Path(os.path.relpath(target, folder)).as_posix()


def clean_stale_temp_files(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Remove the temporary files of atomic writes that were interrupted (the writing process is
    gone, or the file is over a day old) from ``folder`` (and its sub-folders with ``recursive``).

    Returns the removed paths. Temporary files of live writers are left alone.
    """
    base = Path(folder)
    if not base.is_dir():
        return []
    removed = []
    candidates = base.rglob(f".*{TEMP_MARKER}*") if recursive else base.glob(f".*{TEMP_MARKER}*")
    for path in candidates:
        match = _TEMP_RE.match(path.name)
        if match is None or not path.is_file():
            continue
        try:
            old = time.time() - path.stat().st_mtime > STALE_TEMP_SECONDS
            if old or not _pid_alive(int(match["pid"])):
                path.unlink()
                removed.append(path)
        except OSError:
            continue  # vanished meanwhile, or not ours to remove
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return False
    return True


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left as it was. The result has
    the permissions the umask gives new files; a full disk raises :class:`DiskFullError`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.{os.getpid()}.",
            suffix=TEMP_MARKER + (suffix or path.suffix),
            dir=path.parent,
        )
    except OSError as err:
        if is_disk_full(err):
            raise disk_full_error(path, err) from err
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        os.replace(tmp_path, path)
    except OSError as err:
        if is_disk_full(err):
            raise disk_full_error(path, err) from err
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def json_safe(value: Any) -> Any:
    """Strict-JSON form of ``value``, recursively: NaN / inf -> None, tuples -> lists, mapping keys ->
    str, numpy scalars -> Python numbers (JSON has no NaN)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def read_json(path: str | os.PathLike, missing: str) -> Any:
    """The JSON content of ``path``; :class:`DataError` saying ``missing`` when there is no such file, and
    naming the file when it cannot be read or parsed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(missing)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"cannot parse {path}: {err}") from err


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save(obj)`` to ``path`` atomically.

    The file is opened by Python (not by torch's C++ writer), so a full disk surfaces as an
    OSError with its errno and becomes a :class:`DiskFullError`.
    """
    import torch

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)

    return atomic_write(path, write)


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` to ``path`` (for logs), turning a full disk into :class:`DiskFullError`."""
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as err:
        if is_disk_full(err):
            raise disk_full_error(path, err) from err
        raise


def atomic_save_label_png(
    path: str | os.PathLike, label: np.ndarray, palette: np.ndarray | None = None
) -> Path:
    """Write a uint8 label map [H, W] as a (palette) PNG, atomically."""
    if label.ndim != 2:
        raise ValueError(f"{path}: a label map must be 2-D [H, W], got shape {label.shape}")
    if label.min(initial=0) < 0 or label.max(initial=0) > 255:
        raise ValueError(f"{path}: label values must lie in 0..255, got {label.min()}..{label.max()}")
    img = Image.fromarray(label.astype(np.uint8), mode="P" if palette is not None else "L")
    if palette is not None:
        img.putpalette(palette.astype(np.uint8).reshape(-1).tolist())
    return atomic_write(path, lambda p: img.save(p, format="PNG"))


def atomic_save_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a uint8 image [H, W, 3] or [H, W] in the format the suffix names, atomically."""
    img = Image.fromarray(np.ascontiguousarray(image.astype(np.uint8)))
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}.get(
        Path(path).suffix.lower(), "PNG"
    )
    return atomic_write(path, lambda p: img.save(p, format=fmt))


def read_image(path: str | os.PathLike, mode: str = "RGB") -> np.ndarray:
    """Read an image file as uint8 [H, W, 3] (mode "RGB") or [H, W] (mode "L").

    Raises :class:`DataError` naming the file when it is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert(mode))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err


def read_image_rgb(path: str | os.PathLike, mode: str = "RGB") -> np.ndarray:
    """Read an image as writable uint8 [H, W, 3]; with mode "L" the gray channel is replicated ×3
    (the models' input is always three channels)."""
    img = read_image(path, mode=mode)
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    return np.array(img)  # a writable copy (PIL's buffer is read-only)


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG as uint8 [H, W] of class ids (palette indices, or gray values).

    A 3-channel PNG whose channels are identical (as some tools write) is accepted.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label file not found: {path}")
    try:
        with Image.open(path) as img:
            if img.mode in ("P", "L", "I", "I;16"):
                arr = np.asarray(img)
            else:
                arr = np.asarray(img.convert("RGB"))
                if not (
                    np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])
                ):
                    raise DataError(
                        f"label file {path} is a colour image; expected one channel of class ids "
                        "(mode L or P), or three identical channels"
                    )
                arr = arr[..., 0]
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"cannot read label map {path}: {err}") from err
    if arr.max(initial=0) > 255 or arr.min(initial=0) < 0:
        raise DataError(f"label file {path} has values outside 0..255")
    return arr.astype(np.uint8)
