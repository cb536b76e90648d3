"""Before a push, whether it may happen: the repos a name template gives, the token's write access, and what a repo
already holds (`RepoHoldsAnotherModel`). Asked before any work whose result is pushed, so a refusal costs nothing."""

from __future__ import annotations

import logging
import string
from collections.abc import Iterable, Mapping
from typing import Any

from huggingface_hub import HfApi, get_session, hf_hub_url
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalTokenNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, validate_repo_id
from transformers import PreTrainedConfig
from typing_extensions import Unpack

from ..module import ModuleProvenance, module_directory_name, parent_name
from .client import check_repo_id, explained_failures, network_cause
from .options import PushOptions

DEFAULT_NAME_TEMPLATE = "{parent_name}-{label}-module"

logger = logging.getLogger(__name__)
_WARNED_README_ONLY: set[str] = set()


NAME_FIELDS = ("parent_name", "label", "index", "architecture", "strategy")


def check_name_template(template: str) -> None:
    """Refuse a repo-name template with fields other than `NAME_FIELDS`, before anything is pushed."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as error:
        raise ValueError(f"The name template {template!r} is not a valid format string: {error}.") from error
    unknown = [field for field in fields if field not in NAME_FIELDS]
    if unknown:
        raise ValueError(f"The name template {template!r} uses {unknown}; it may use {{{'}, {'.join(NAME_FIELDS)}}}.")


def check_module_pushes(
    configs: Mapping[str, PreTrainedConfig] | Iterable[PreTrainedConfig],
    namespace: str,
    *,
    name_template: str = DEFAULT_NAME_TEMPLATE,
    **options: Unpack[PushOptions],
) -> list[str]:
    """The repo of each module (by its config) under `namespace`, once every push has been found possible: the
    template gives each module its own valid repo, and none would replace another module (unless `overwrite`).
    `push_modules` checks this before its first push; configs of modules still to be built
    (`planned_modules` of `hf_modular.decompose`, a `{label: config}` dict) check a decomposition's pushes before it
    runs."""
    configs = list(configs.values() if isinstance(configs, Mapping) else configs)
    check_name_template(name_template)
    repos = [f"{namespace}/{repo_name(name_template, config)}" for config in configs]
    shared = sorted({repo_id for repo_id in repos if repos.count(repo_id) > 1})
    if shared:
        raise ValueError(
            f"The name template {name_template!r} gives several modules one repo ({', '.join(shared)}), where "
            "each would replace the one before: put {label} or {index} in it. Nothing was pushed."
        )
    for repo_id in repos:
        check_repo_id(repo_id)
    if not options.get("overwrite"):
        refusals = []
        for config, repo_id in zip(configs, repos, strict=True):
            try:
                refuse_replacing_another_module(repo_id, config, **options)
            except RepoHoldsAnotherModel as refusal:
                refusals.append(refusal)
        if refusals:  # one error for all: a user who renames or replaces should not find them one run at a time
            refusals.sort(key=lambda refusal: refusal.holds != "model")  # a parent or composition first: kept
            first = refusals[0]
            others = [refusal.repo_id for refusal in refusals[1:]]
            raise RepoHoldsAnotherModel(first.repo_id, first.differences, first.holds, others)
    return repos


def repo_name(template: str, config: PreTrainedConfig) -> str:
    """A module's repo name from a `name_template` (its fields: `NAME_FIELDS`)."""
    info = config.provenance
    return template.format(
        parent_name=parent_name(info.parent).replace("_", "-"),
        label=module_directory_name(info.target_label).removesuffix("-module"),
        index=info.target_index,
        architecture=(config.preset or "modular_resnet").replace("_", "-"),
        strategy=info.method.strategy,
    )


def check_write_access(namespace: str, token: str | bool | None = None) -> None:
    """Before work whose result is pushed to `namespace` (a user or organisation): raise PermissionError when the Hub
    token cannot write there (no token, a read-only one, or another user's namespace), so that the work is not
    spent first; a ValueError when the Hub spells the namespace otherwise (`user` for `User`). A token of an
    organisation, or a fine-grained one, is left to the push itself to judge, and so is a Hub that answers the
    question with another error (the endpoint is rate-limited): a warning says so."""
    try:
        validate_repo_id(namespace)
        if "/" in namespace:
            raise HFValidationError("it has a '/'")
    except HFValidationError as error:
        raise ValueError(f"{namespace!r} is not a Hub namespace, a user or organisation name ({error}).") from None
    advice = "Log in with `hf auth login`, or set HF_TOKEN to a token with write access to it."
    try:
        me = HfApi(token=token).whoami()
    except LocalTokenNotFoundError as error:
        raise PermissionError(f"Cannot push to {namespace}: not logged in to the Hub. {advice}") from error
    except HfHubHTTPError as error:
        if getattr(error.response, "status_code", None) == 401:
            raise PermissionError(f"Cannot push to {namespace}: the Hub does not accept the token. {advice}") from error
        logger.warning(
            "The Hub could not say whether the token may write to %s (%s); the push will tell.", namespace, error
        )
        return
    except Exception as error:
        cause = network_cause(error)
        if cause is None:
            raise
        raise ConnectionError(
            f"Asking the Hub whether the token may write to {namespace} failed on the network ({type(cause).__name__}: "
            f"{cause}), so nothing was made or pushed. Try again when the Hub can be reached."
        ) from error
    if me.get("type") != "user":
        return
    role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
    organisations = [org.get("name") for org in me.get("orgs") or []]
    if role == "read":
        raise PermissionError(f"Cannot push to {namespace}: the token is read-only. {advice}")
    names = [name for name in [me.get("name"), *organisations] if name]
    spelled = next((name for name in names if name != namespace and name.casefold() == namespace.casefold()), None)
    # The Hub answers questions about a repo spelled in any case, but an upload spelled otherwise can fail
    # (huggingface_hub issue 1371): the Hub's own spelling, before the work.
    if spelled and namespace not in names:
        raise ValueError(f"The Hub spells the namespace {namespace!r} as {spelled!r}: push to {spelled} instead.")
    if namespace not in names:
        what = "not that user"
        if organisations:
            what = f"neither that user nor one of its organisations ({', '.join(organisations)})"
        raise PermissionError(
            f"Cannot push to {namespace}: the token is {me.get('name')}'s, and {namespace!r} is {what}. Push to a "
            f"namespace of yours, or: {advice}"
        )


def refuse_replacing_another_module(
    repo_id: str, config: PreTrainedConfig | None, **options: Unpack[PushOptions]
) -> None:
    """A class module's repo holds that module: a push that would put something else at the head of its branch is
    refused unless `overwrite=True`. Something else is another module (another class, parent, strategy, method
    parameters, sampling or training data: a quick test run over a published module, say), a module over a parent
    or a composition, or a parent or composition (`config` None, or without a module section) over a module; and
    a model over files that are not one of ours (another library's weights, a dataset's files: the push would be
    mixed in with them). Nothing to check for a repo or branch that does not exist yet (or holds only
    `.gitattributes`, as a new repo does), or a pull request; a repo with only a README.md takes the push, whose
    card replaces it, with a warning."""
    check_repo_id(repo_id)
    if options.get("create_pr"):
        return
    api, token, revision = HfApi(token=options.get("token")), options.get("token"), options.get("revision")
    # Read from the Hub itself, never from a cached copy of what the repo held; with the client's requests, so that
    # the CLI's time limit holds (hf_hub_download's metadata request sets its own, and retries it for minutes). No
    # answer is an error (offline mode included), never "nothing there".
    with explained_failures(repo_id, asking=True):
        try:
            info = api.repo_info(repo_id, revision=revision)
        except (RepositoryNotFoundError, RevisionNotFoundError):
            return
        files = [sibling.rfilename for sibling in info.siblings or [] if sibling.rfilename != ".gitattributes"]
        if "config.json" in files:
            url = hf_hub_url(repo_id, "config.json", revision=info.sha, endpoint=api.endpoint)
            response = get_session().get(url, headers=build_hf_headers(token=token), follow_redirects=True)
            hf_raise_for_status(response)
    if "config.json" not in files:
        if files == ["README.md"]:  # a repo made on the Hub's site, its card written first: the push's card replaces it
            if repo_id not in _WARNED_README_ONLY:  # once, though a command checks before its work and at its push
                _WARNED_README_ONLY.add(repo_id)
                logger.warning(
                    "%s holds only a README.md: the push replaces it with the model's card (the Hub keeps the old "
                    "one in the repo's history).",
                    repo_id,
                )
        elif files:  # another library's model, a dataset's files...: the push would be mixed in with them
            foreign = [name for name in files if name != "README.md"]
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise RepoHoldsAnotherModel(repo_id, [f"files that are not a model of ours ({shown})"], "files")
        return
    published, ours = response.json().get("module"), getattr(config, "module", None)
    if published is None and ours is None:
        return  # a parent or composition updated: what repos of models usually see
    if published is None:
        raise RepoHoldsAnotherModel(
            repo_id, ["the repo holds a model that is not a class module (a parent or a composition)"], "model"
        )
    if ours is None:
        raise RepoHoldsAnotherModel(repo_id, ["this push is not a class module"])
    differences = _module_differences(published, ours)
    if differences:
        raise RepoHoldsAnotherModel(repo_id, differences)


class RepoHoldsAnotherModel(FileExistsError):
    """A push would replace what `repo_id` holds: `holds` is "module" (a class module), "model" (a parent or a
    composition, which no module push replaces) or "files" (files that are not a model); `differences` says how
    that differs from this push, in words. `other_repos`: the further repos in the way of a push of several
    modules (`push_modules`)."""

    def __init__(self, repo_id: str, differences: list[str], holds: str = "module", other_repos: list[str] = ()):
        self.repo_id, self.differences, self.holds = repo_id, differences, holds
        self.other_repos = list(other_repos)
        name_hint = " (name_template / --name-template; {strategy} is a field)" if "strategy" in differences[0] else ""
        anyway = (
            "push into it all the same with overwrite=True (--overwrite on `hf-modular push` and `push-parent`; its "
            "own files stay beside the model's, a README.md among them replaced by the card)"
            if holds == "files"
            else "replace what the repo holds with overwrite=True (--overwrite on `hf-modular push` and "
            "`push-parent`; the Hub keeps the old files in the repo's history)"
        )
        super().__init__(
            f"This push would replace what {repo_id} holds: {'; '.join(differences)}.{self.others()} Nothing was "
            f"pushed. Publish this under another repo name{name_hint} or branch (revision / --revision), or {anyway}."
        )

    @property
    def module(self) -> bool:
        """Whether the repo holds something a module push may replace with overwrite (an earlier release's field)."""
        return self.holds != "model"

    def others(self) -> str:
        """A sentence on `other_repos`, or nothing."""
        if not self.other_repos:
            return ""
        repos = ", ".join(self.other_repos)
        return f" So would the push{'es' if len(self.other_repos) > 1 else ''} to {repos}."

    def __reduce__(self):  # rebuilt from its fields: it travels between processes (`check_before_work`)
        return type(self), (self.repo_id, self.differences, self.holds, self.other_repos)


def _module_differences(published: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """What tells a published module (its config's `module` section) from ours, in words. Another strategy is
    said alone: their method parameters have nothing in common."""
    try:
        theirs = _identity(ModuleProvenance.from_dict(published))
    except (ValueError, TypeError, KeyError):
        return ["the repo's module record cannot be read"]
    mine = _identity(ModuleProvenance.from_dict(ours))
    differing = [key for key in dict.fromkeys([*theirs, *mine]) if theirs.get(key) != mine.get(key)]
    if "strategy" in differing:
        differing = ["strategy"]
    return [f"{key} {theirs.get(key)!r} there, {mine.get(key)!r} in this push" for key in differing]


def _identity(info: ModuleProvenance) -> dict[str, Any]:
    """What makes a module this module, rather than its run's date, timings or measurements. Local data ("./name")
    has no revision or configuration (an older release recorded those given with it). A resumed decomposition
    checks more (`_is_complete` in `decompose/output.py`)."""
    hub_data = not (info.dataset.name_or_path or "./").startswith("./")
    return {
        "class": info.target_label,
        "parent weights": info.parent.weights_sha256[:12],
        "strategy": info.method.strategy,
        **{f"method parameter {name}": value for name, value in info.method.parameters.items()},
        "samples per class": info.sampling.samples_per_class,
        "negatives ratio": info.sampling.negatives_ratio,
        "sampling seed": info.sampling.seed,
        "dataset": info.dataset.name_or_path,
        "dataset configuration": info.dataset.config_name if hub_data else None,
        "dataset revision": info.dataset.revision if hub_data else None,  # a Hub dataset's commit
        "dataset split": info.dataset.split,
        "continuous learning": info.continuous_learning is not None,
    }
