"""`push` and `push-parent`, and the time limit every Hub request of a command gets."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import huggingface_hub

from ..distributed import DistributedState, on_main_process
from ..hub import (
    DEFAULT_NAME_TEMPLATE,
    PushOptions,
    check_write_access,
    push_directory,
    push_modules,
    refuse_replacing_another_module,
)
from ..hub.client import check_repo_id
from .loading import model_source
from .options import add_remote_code_option


def print_pushes(results: dict) -> None:
    """One line per repo, `repo_id@commit` in full: what `compose` (and `from_modules`) take to pin that version."""
    for label, result in results.items():
        state = "new commit" if result.changed else "unchanged"
        print(f"{label:<20} {result.repo_id}@{result.commit_sha}  ({state})")


def run_push(args: argparse.Namespace) -> None:
    if not args.create_pr:  # a pull request may go to another's repo
        check_write_access(args.namespace)  # a namespace misspelled, or not the token's, said as such
    results = push_modules(args.directory, args.namespace, name_template=args.name_template, **_push_options(args))
    print_pushes(results)


def run_push_parent(args: argparse.Namespace) -> None:
    if not args.create_pr:
        check_repo_id(args.repo_id)
        check_write_access(args.repo_id.split("/")[0])
    print_pushes({"model": push_directory(model_source(args.directory), args.repo_id, **_push_options(args))})


def _push_options(args: argparse.Namespace) -> PushOptions:
    """The `PushOptions` of `_add_push_options`' flags."""
    names = ("private", "revision", "create_pr", "license", "remote_code", "overwrite")
    return PushOptions(**{name: getattr(args, name) for name in names})


def add_push_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("directory", metavar="DIR", help="a decomposition's output (its *-module directories)")
    command.add_argument("--namespace", required=True, help="Hub user or organisation")
    command.add_argument("--name-template", default=DEFAULT_NAME_TEMPLATE, help="repo name of each module")
    _add_push_options(command, repos="repos", license_help="license id for the cards (the parent's license)")
    command.set_defaults(run=run_push)


def add_push_parent_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("directory", metavar="DIR", help="the parent model's directory")
    command.add_argument("repo_id", metavar="REPO_ID", help="namespace/name")
    _add_push_options(command, repos="repo", license_help="license id for the card")
    command.set_defaults(run=run_push_parent)


def _add_push_options(command: argparse.ArgumentParser, repos: str, license_help: str) -> None:
    """How `push` and `push-parent` push: the `PushOptions` the command line offers."""
    command.add_argument("--private", action="store_true", help=f"create the {repos} private")
    command.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    command.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    command.add_argument("--license", default=None, help=license_help)
    add_remote_code_option(command)
    add_hub_overwrite_option(command)


def add_hub_overwrite_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what a repo holds when it is another class module, or a module where a model is pushed (the "
        "Hub keeps the old files in the repo's history)",
    )


HUB_TIMEOUT_VARIABLE = "HF_MODULAR_HUB_TIMEOUT"


DEFAULT_HUB_TIMEOUT = 120.0  # seconds without a byte from the Hub; a large commit is answered well within it


def hub_timeout() -> float:
    value = os.environ.get(HUB_TIMEOUT_VARIABLE, "")
    try:
        return float(value) if value else DEFAULT_HUB_TIMEOUT
    except ValueError:
        raise ValueError(f"{HUB_TIMEOUT_VARIABLE}={value!r} is not a number of seconds.") from None


def is_http_timeout(error: BaseException | None) -> bool:
    """Whether `error`, or what caused it, is a timeout of the HTTP client the Hub client uses (httpx's classes)."""
    while error is not None:
        kind = type(error)
        if kind.__module__.split(".")[0].startswith(("httpx", "httpcore")) and "Timeout" in kind.__name__:
            return True
        error = error.__cause__ or error.__context__
    return False


def limit_hub_requests(seconds: float) -> None:
    """Give every request of huggingface_hub's client (transformers, timm and datasets download through it) a time
    limit. Its requests carry no timeout (`timeout=None` per request, which overrides a client's default), so a
    server that accepts the connection and never answers would hang a command forever. The client factory keeps
    huggingface_hub's own hooks (offline mode, request ids) and adds one that fills the limit in where a request
    has none; a factory, because the client is rebuilt after a failed request."""

    def limit(request) -> None:
        given = request.extensions.get("timeout") or {}
        phases = ("connect", "read", "write", "pool")
        request.extensions["timeout"] = {key: seconds if given.get(key) is None else given[key] for key in phases}

    template = huggingface_hub.get_session()
    hooks = {kind: [f for f in functions if f.__name__ != "limit"] for kind, functions in template.event_hooks.items()}
    client_class = type(template)  # (a limit set by an earlier call in this process is replaced, not stacked)

    def client():
        request_hooks = [*hooks.get("request", []), limit]
        return client_class(event_hooks={**hooks, "request": request_hooks}, follow_redirects=True, timeout=seconds)

    huggingface_hub.set_client_factory(client)


def refuse_a_model_push_now(repo_id: str, state: DistributedState) -> None:
    """Before any work: a parent's or composition's push to `repo_id` would be refused (a malformed repo id, a repo
    that holds a class module or files that are not a model, a namespace the token cannot write to), so say so
    before training or composing, on every process."""

    def check() -> None:
        refuse_replacing_another_module(repo_id, None)  # first: it also says when `repo_id` is no repo id
        check_write_access(repo_id.split("/")[0])

    check_before_work(check, state)


def check_before_work(check: Callable[[], object], state: DistributedState) -> None:
    """Run `check` (one that asks the Hub) on the main process; what it raises is raised on every process, so that
    none starts the work the others refused."""

    def refusal() -> Exception | None:
        try:
            check()
        except Exception as error:  # sent to the other processes, raised on each
            return error
        return None

    error = on_main_process(refusal, state)
    if error is not None:
        raise error
