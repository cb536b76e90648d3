"""Talking to the Hub: a repo id is checked before any request, and the client's failures become errors that say
what happened and what to do, never echoing a token or a signed URL."""

from __future__ import annotations

import re

from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

try:  # the HTTP client huggingface_hub 2.x uses; its transport errors are network failures
    from httpx2 import TransportError
except ImportError:  # pragma: no cover - other huggingface_hub versions
    from httpx import TransportError


def check_repo_id(repo_id: str) -> None:
    """Raise ValueError, saying the form expected, unless `repo_id` is a valid `namespace/name`."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"{repo_id!r} is not a valid Hub repo id ({error}). Use 'namespace/name'.") from error
    if repo_id.count("/") != 1:
        raise ValueError(f"{repo_id!r} is not a valid Hub repo id: use 'namespace/name' (e.g. 'my-org/cat-module').")


class explained_failures:
    """Turn the Hub client's failures into errors that say what happened and what to do; never echo a token.
    `asking`: the requests only ask what a repo holds, before a push."""

    def __init__(self, repo_id: str, *, asking: bool = False):
        self.repo_id, self.asking = repo_id, asking

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is None or not isinstance(error, Exception):
            return False
        namespace = self.repo_id.split("/")[0]
        status = getattr(getattr(error, "response", None), "status_code", None)
        if isinstance(error, HfHubHTTPError) and status in (401, 403):
            raise PermissionError(
                f"Cannot push to {self.repo_id}: the Hub answered {status} "
                f"({'not logged in' if status == 401 else 'no write access'} to namespace {namespace!r}). Log in "
                "with `hf auth login`, or set HF_TOKEN to a token with write access to it."
            ) from error
        if isinstance(error, HfHubHTTPError):
            return False  # the client's message already names the request and the server's reason
        cause = network_cause(error)
        if cause is not None and self.asking:
            raise ConnectionError(
                f"Asking the Hub what {self.repo_id} holds failed on the network ({type(cause).__name__}: {cause}), "
                "so nothing was pushed (or made, for a command that pushes what it makes). Try again when the Hub "
                "can be reached."
            ) from error
        if cause is not None:
            raise ConnectionError(
                f"Pushing to {self.repo_id} failed on the network ({type(cause).__name__}: {cause}). A commit is "
                "all-or-nothing and this one did not land (the branch's head did not move), or the Hub could not "
                "be asked; run the push again to complete it."
            ) from error
        return False


def network_cause(error: BaseException) -> BaseException | None:
    """The network failure behind `error`: itself, or what it wraps (the client raises a RuntimeError for an LFS
    upload that failed for good, from the transport error)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, HfHubHTTPError):  # an OSError too, but the server answered: not a network failure
            return None
        if isinstance(error, (OSError, TransportError)):
            return error
        seen.add(id(error))
        error = error.__cause__
    return None


def without_url_queries(text: str) -> str:
    """`text` with the query of every URL in it removed: an upload URL's query is its signature."""
    return re.sub(r"(https?://[^\s?'\"]+)\?[^\s'\"]*", r"\1?...", text)
