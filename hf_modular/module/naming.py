"""Names of modules on disk and on the Hub."""

from __future__ import annotations

import re

from .provenance import ParentRecord

REPORT_NAME = "decomposition.json"  # in a decomposition's output directory, next to its module directories
REST_LABEL = "rest"  # a module's second output: "any other class of the parent"
# File systems take names of at most 255 bytes; atomic writes add a staging prefix and suffix to the name.
MAX_DIRECTORY_NAME = 200


def module_directory_name(label: str) -> str:
    """`{label}-module`, with characters that are unsafe in paths and repo names replaced by '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.") + "-module"


def check_directory_names(labels: list[str]) -> None:
    """Refuse labels whose directories would collide (they differ only in characters a path cannot hold) or whose
    directory name is too long for a file system."""
    seen: dict[str, str] = {}
    for label in labels:
        name = module_directory_name(label)
        if len(name.encode()) > MAX_DIRECTORY_NAME:
            raise ValueError(
                f"Class {label[:40]!r}... would be saved as a {len(name.encode())}-byte directory name; file systems "
                f"take at most 255 and atomic writes need room, so {MAX_DIRECTORY_NAME} is the limit. Give the class "
                "a shorter name in the model's id2label (and the dataset's label names)."
            )
        if name in seen and seen[name] != label:
            raise ValueError(
                f"Classes {seen[name]!r} and {label!r} would both be saved as {name!r}. Rename one of them in the "
                "model's id2label (and the dataset's label names) before decomposing."
            )
        seen[name] = label


def parent_name(parent: ParentRecord) -> str:
    """A short name for a module's parent: its repo or directory name, else its architecture."""
    source = parent.repo_id or parent.path or parent.architecture or "its parent"
    return str(source).rstrip("/").split("/")[-1]
