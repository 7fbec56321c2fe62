"""A run folder is never silently reused.

Training into a folder that already holds a run (finished or not) stops with
:class:`RunFolderError` unless the caller resumes it or asks to overwrite it; ``overwrite`` deletes
the old run's outputs (only the files training writes) before anything new is written. A training
holds an exclusive lock on its folder (``.weakseg.lock``, released when the process ends, however
it ends), so a second training, resumed or overwriting, cannot run into a folder in use.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import IO

from weakseg.io import UserError, clean_stale_temp_files

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the output check still applies
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".weakseg.lock"
# What a training writes into its folder (files and folders; ``*`` patterns are globs).
RUN_OUTPUTS = (
    "config.yaml",
    "metrics.jsonl",
    "metrics.json",
    "last.ckpt",
    "best.ckpt",
    "step_*.ckpt",
    "per_class_IoU.png",
    "volume_Dice.png",
    "training_curves.png",
    "dataset_statistics.json",
    "overlays",
    "tensorboard",
    "eval_*",  # `weakseg evaluate` of the run's checkpoints (stale once they are replaced)
)
# Any of these means the folder holds a run.
RUN_MARKERS = ("config.yaml", "metrics.jsonl", "metrics.json", "last.ckpt", "best.ckpt", "step_*.ckpt")


class RunFolderError(UserError):
    """The run folder cannot be used as asked (holds another run, is in use, or is a file)."""


def _matches(run_dir: Path, patterns: tuple[str, ...]) -> list[Path]:
    found: list[Path] = []
    for pattern in patterns:
        found.extend(sorted(run_dir.glob(pattern)) if "*" in pattern else [run_dir / pattern])
    return [p for p in found if p.exists()]


def existing_run_files(run_dir: Path) -> list[Path]:
    """The files that show ``run_dir`` holds a run (empty for a new or empty folder)."""
    return _matches(run_dir, RUN_MARKERS) if run_dir.is_dir() else []


def lock_holder(run_dir: Path) -> str | None:
    """The process id written by the training that holds ``run_dir``'s lock, or None when free."""
    path = run_dir / LOCK_NAME
    if fcntl is None or not path.is_file():
        return None
    with open(path, "a+", encoding="ascii") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            return fh.read().strip() or "?"
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse (without writing anything) a folder that is a file, in use, or holds a run that is
    neither resumed nor to be overwritten."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(
            f"run folder {run_dir} is an existing file; expected a folder (choose another --out)"
        )
    holder = lock_holder(run_dir)
    if holder is not None:
        raise RunFolderError(
            f"run folder {run_dir} is in use by a training that is still running (process {holder}); "
            "wait for it to finish or train into another folder with --out DIR"
        )
    if resume or overwrite:
        return
    found = existing_run_files(run_dir)
    if found:
        state = "a finished run" if (run_dir / "metrics.json").is_file() else "an unfinished run"
        names = ", ".join(p.name for p in found[:4])
        raise RunFolderError(
            f"run folder {run_dir} already holds {state} ({names}); continue it with --resume, "
            "start it again with --overwrite (deletes its checkpoints, logs, plots and overlays first), "
            "or train into another folder with --out DIR"
        )


def clear_run_outputs(run_dir: Path) -> list[Path]:
    """Delete what a training wrote into ``run_dir`` (nothing else); returns the removed paths."""
    removed = _matches(run_dir, RUN_OUTPUTS) if run_dir.is_dir() else []
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


class RunLock:
    """An exclusive advisory lock on a run folder, held while a training runs in it."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self._fh: IO[str] | None = None

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return self
        fh = open(self.run_dir / LOCK_NAME, "a+", encoding="ascii")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            raise RunFolderError(
                f"run folder {self.run_dir} is in use by a training that is still running "
                f"(process {holder}); wait for it to finish or train into another folder with --out DIR"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def claim_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> RunLock:
    """Lock ``run_dir``, check it again under the lock, clear it for ``overwrite`` and remove the
    temporary files of writes a killed run left behind. The caller releases the lock."""
    check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    lock = RunLock(run_dir).acquire()
    try:
        check_run_dir_locked(run_dir, resume=resume, overwrite=overwrite)
        if overwrite and not resume:
            clear_run_outputs(run_dir)
        clean_stale_temp_files(run_dir, recursive=True)
    except BaseException:
        lock.release()
        raise
    return lock


def check_run_dir_locked(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """The output check of :func:`check_run_dir` again, once the lock is held (a run may have
    finished in the folder since the first check)."""
    found = [] if (resume or overwrite) else existing_run_files(run_dir)
    if found:
        raise RunFolderError(
            f"run folder {run_dir} now holds another run ({', '.join(p.name for p in found[:4])}); "
            "continue it with --resume, start again with --overwrite, or use another --out DIR"
        )
