"""Atomic writes: a directory is either the old one or the complete new one, never half-written."""

from __future__ import annotations

import ctypes
import glob
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

LOCK_NAME = ".hf-modular.lock"
REPLACEABLE = ("config.json", "decomposition.json", "summary.json")  # a model or composition, modules, the demo
OUR_MODEL_TYPES = ("modular_resnet", "modular_composed")  # ModularResNetConfig's and ComposedConfig's model_type


STAGING_SUFFIXES = (".partial", ".old")  # atomic_directory's temporary names, left behind only by a killed process

logger = logging.getLogger(__name__)


@contextmanager
def atomic_directory(path: str | os.PathLike, *, keep: Collection[str] | None = None) -> Iterator[Path]:
    """Yield an empty temporary directory beside `path`; when the block succeeds, it becomes `path`.

    If the block raises, the temporary directory is removed and `path` is untouched. Files of an existing `path`
    that the block did not write (a model card, say) are carried over by hard link (only those named in `keep`,
    when it is given: `keep=()` replaces the directory as a whole), then the two directories are exchanged in one
    step, so readers see either the old set of files or the new one, and a process killed at any moment leaves one
    of them at `path`. (Where the OS cannot exchange directories, the old one is renamed aside first; the next write
    to `path` puts it back if a kill came between the two renames.)
    """
    path = Path(path)
    _restore_interrupted_swap(path)  # first: what a killed swap set aside may be a link
    if path.is_symlink():  # written where the link leads: the link stays, and so do other links to that directory
        path = path.resolve()
        _restore_interrupted_swap(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory; choose another output path.")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; a saved model is as readable as any directory
    try:
        yield staging
        follow_umask(staging)
        if path.exists():
            for entry in path.iterdir():
                if not (staging / entry.name).exists() and (keep is None or entry.name in keep):
                    _link_or_copy(entry, staging / entry.name)
            if not _exchange(staging, path):  # the old files are now at `staging`, removed below
                retired = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
                os.replace(path, retired)
                os.replace(staging, path)
                shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(first: Path, second: Path) -> bool:
    """Swap two directories in one atomic step (Linux's renameat2 with RENAME_EXCHANGE); False where the OS, libc
    or filesystem cannot, and the caller falls back to two renames."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)  # glibc 2.28+, musl 1.2.2+
    if renameat2 is None:
        return False
    at_cwd = -100  # AT_FDCWD: relative paths resolve as os.replace's do
    return renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), _RENAME_EXCHANGE) == 0


def _restore_interrupted_swap(path: Path) -> None:
    """Put back the directory a killed two-rename swap left aside (`.NAME.xxxxxxxx.old`, with nothing at `path`)."""
    if path.exists():
        return
    retired = sorted(path.parent.glob(f".{glob.escape(path.name)}.*.old"), key=lambda entry: entry.stat().st_mtime)
    if retired and retired[-1].is_dir():
        os.replace(retired[-1], path)
        logger.warning("Restored %s from %s, left aside by an interrupted save.", path, retired[-1].name)


def follow_umask(directory: Path) -> None:
    """Give the files under `directory` the user's usual permissions: some writers (safetensors', through a
    temporary file) make them private."""
    for written in directory.rglob("*"):
        if written.is_file() and not written.is_symlink():
            os.chmod(written, 0o666 & ~_umask())


def check_overwrite(path: str | os.PathLike, overwrite: bool, option: str = "--output") -> None:
    """Refuse to write over anything the user already has at `path` (a file, or a directory with files in it)
    unless `overwrite` is set, and then only over what hf-modular writes (`holds_our_output`);
    never over a directory another hf-modular run holds, nor the working directory or one
    above it. An empty directory (or one holding only a finished run's lock file) is fine."""
    path = Path(path)
    if path.is_dir() and Path.cwd().resolve().is_relative_to(path.resolve()):
        raise ValueError(f"{option} {path} is the working directory or holds it; choose a directory below it.")
    if (path / LOCK_NAME).is_file():
        _hold(path, option).release()
    if not path.exists() or (path.is_dir() and not _user_entries(path)):
        return
    ours = path.is_dir() and holds_our_output(path)
    what_we_write = " or ".join(REPLACEABLE)
    if overwrite and ours:
        return
    if overwrite or not ours:
        raise FileExistsError(
            f"{path} {'holds files but' if path.is_dir() else 'is a file:'} no saved model or demo ({what_we_write}); "
            f"--overwrite replaces hf-modular's own outputs only, so nothing was written. Choose another {option}."
        )
    what = "a model directory" if (path / "config.json").is_file() else "an hf-modular output"
    raise FileExistsError(
        f"{path} already exists ({what}); nothing was written. Pass --overwrite (overwrite=True) to replace it as a "
        f"whole, or choose another {option}."
    )


def holds_our_output(directory: Path) -> bool:
    """Whether `directory` is something hf-modular wrote: one of our models or compositions (a config.json of our
    model types: another program's config.json is the user's), a decomposition's output or the demo's."""
    config = directory / "config.json"
    if config.is_file():
        try:
            return json.loads(config.read_text()).get("model_type") in OUR_MODEL_TYPES
        except (ValueError, AttributeError, OSError):
            return False
    return any((directory / name).is_file() for name in REPLACEABLE[1:])


def _hold(directory: Path, option: str) -> FileLock:
    """`directory`'s lock, acquired; an error that says so when another run holds it."""
    lock = FileLock(directory / LOCK_NAME, blocking=False)
    try:
        lock.acquire()
    except Timeout as error:
        raise RuntimeError(
            f"Another hf-modular run is writing into {directory} (it holds {directory / LOCK_NAME}). Wait for it to "
            f"finish, or choose another {option}."
        ) from error
    return lock


def _user_entries(directory: Path) -> list[Path]:
    return [entry for entry in directory.iterdir() if entry.name != LOCK_NAME]


@contextmanager
def locked_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Hold `path` (created if needed) for one writer: a second run that wants it meanwhile fails at once, and a
    killed run's lock dies with its process. Once the lock is held, what killed runs left is tidied: a directory
    left aside by an interrupted swap is put back, other staging debris removed. A run that fails (or is refused)
    takes away the lock file and the directory it created for nothing, so "nothing was written" stays true."""
    path = Path(path)
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    new_lock = not (path / LOCK_NAME).exists()
    lock = _hold(path, "output directory")
    try:
        for entry in list(path.iterdir()):
            if retired := re.fullmatch(r"\.(.+)\.[0-9a-f]{8}\.old", entry.name):
                _restore_interrupted_swap(path / retired.group(1))
        for entry in path.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(STAGING_SUFFIXES):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)  # a report's temporary file
        yield path
    except BaseException:
        if new_lock:
            (path / LOCK_NAME).unlink(missing_ok=True)  # unlinked while held: the failed run writes nothing more
        if created and not any(path.iterdir()):
            path.rmdir()
        raise
    finally:
        lock.release()


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link (instant, no extra space) where the filesystem allows it, else copy."""
    if source.is_dir():
        shutil.copytree(source, target, copy_function=_link_file)
    else:
        _link_file(source, target)


def _link_file(source: str | os.PathLike, target: str | os.PathLike) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
