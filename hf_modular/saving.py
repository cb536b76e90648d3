"""Atomic writes: a directory is either the old one or the complete new one, never half-written."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside `path`; when the block succeeds, it becomes `path`.

    If the block raises, the temporary directory is removed and `path` is untouched. Files of an existing `path`
    that the block did not write (a model card, say) are carried over by hard link, then the old directory is
    renamed aside and the new one renamed into place, so readers see either the old set of files or the new one.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory; choose another output path.")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; a saved model is as readable as any directory
    try:
        yield staging
        if path.exists():
            for entry in path.iterdir():
                if not (staging / entry.name).exists():
                    _link_or_copy(entry, staging / entry.name)
            retired = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(path, retired)
            os.replace(staging, path)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
