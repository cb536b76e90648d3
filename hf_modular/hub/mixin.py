"""`push_to_hub` for hf_modular's models, as transformers' `PushToHubMixin` is for its own: the model classes
inherit it, so publishing stays here and out of the modeling file."""

from __future__ import annotations

from typing_extensions import Unpack

from .options import PushOptions, PushResult
from .publish import push_model


class HubMixin:
    """Adds `push_to_hub`: save into a staging folder, render the model card, upload in one commit."""

    def push_to_hub(self, repo_id: str, **options: Unpack[PushOptions]) -> PushResult:
        """Push this model (a module or a parent) to `repo_id` in one commit, with its model card. `options`:
        `private`, `revision`, `token`, `create_pr`, `commit_message`, `commit_description`, `license`, `tags`,
        `max_shard_size`, `remote_code`, `overwrite` (see `PushOptions`).

        Returns a `hf_modular.hub.PushResult` (repo id, commit sha, whether the push changed anything).
        """
        return push_model(self, repo_id, **options)
