"""How a push is made (`PushOptions`, the keyword arguments of every push function and `push_to_hub`) and where it
went (`PushResult`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict


class PushOptions(TypedDict, total=False):
    """How a push is made, accepted by every push function and `push_to_hub` as keyword arguments.

    private: create the repo private (ignored when it exists). revision: the branch to push to (created if missing).
    token: a Hub token (default: the logged-in one). create_pr: open a pull request instead of committing.
    commit_message: the commit's title; commit_description: its body. license: the license id written into the
    model card; tags: more tags for the card's metadata. max_shard_size: shard the weights above this size ("5GB",
    as transformers' `save_pretrained`; pushing a model object only). remote_code: also publish transformers'
    `auto_map` and two small code files that only import hf_modular, so that `AutoModel...from_pretrained(repo,
    trust_remote_code=True)` works without `import hf_modular`, and tells a user without it to `pip install` it.
    overwrite: let a push replace what a repo's branch holds when it is another class module, or a module where a
    parent or composition is pushed, or the other way round, or files that are not a model (see
    `refuse_replacing_another_module`). A pull request never needs it.
    """

    private: bool | None
    revision: str | None
    token: str | bool | None
    create_pr: bool
    commit_message: str | None
    commit_description: str | None
    remote_code: bool
    license: str | None
    tags: list[str] | None
    max_shard_size: int | str | None
    overwrite: bool


# The options only a push reads (`save_pretrained(push_to_hub=True, ...)` passes them on; `token` serves both).
PUSH_ONLY_OPTIONS = (
    "private",
    "revision",
    "create_pr",
    "commit_message",
    "commit_description",
    "license",
    "tags",
    "remote_code",
    "overwrite",
)


@dataclass
class PushResult:
    """Where a push went: the repo, the commit now at the head of the pushed revision, and whether it is new."""

    repo_id: str
    commit_sha: str
    commit_url: str | None
    changed: bool
