"""Publishing on the Hugging Face Hub: one repo per module (or parent), each push a single commit.

Everything goes through `huggingface_hub.HfApi`, so the token and endpoint come from its usual places (`HF_TOKEN`,
`hf auth login`, `HF_ENDPOINT`). A push uploads `config.json`, `model.safetensors` (weights and masks),
`preprocessor_config.json` and a freshly rendered `README.md` card in one commit; files that did not change are not
sent, and a push that changes nothing makes no commit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import string
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from huggingface_hub import HfApi, get_session, hf_hub_url
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalTokenNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, validate_repo_id
from transformers import AutoConfig, AutoModelForImageClassification, PreTrainedConfig, PreTrainedModel
from typing_extensions import Unpack

from ..console import library_bars_off
from ..module import ModuleProvenance, module_directory_name, parent_name
from ..module.provenance import ParentRecord
from .cards import module_card, parent_card

try:  # the HTTP client huggingface_hub 2.x uses; its transport errors are network failures
    from httpx2 import TransportError
except ImportError:  # pragma: no cover - other huggingface_hub versions
    from httpx import TransportError

REQUIRED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
SHARD_INDEX = "model.safetensors.index.json"  # transformers' index of sharded weights (`max_shard_size`)
DEFAULT_NAME_TEMPLATE = "{parent_name}-{label}-module"
# A decomposition's output directory, `{label: module}`, or any iterable of modules.
ModulesOrDirectory = str | os.PathLike | Mapping[str, PreTrainedModel] | Iterable[PreTrainedModel]


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
# `remote_code=True`: what transformers' dynamic loading reads. The files only import hf_modular (its checks turn a
# missing package into "pip install hf_modular"); the classes stay the installed, reviewed ones.
REMOTE_CODE_FILES = {
    "configuration_modular_resnet.py": (
        "from hf_modular import ModularResNetConfig  # noqa: F401  (pip install hf-modular)\n"
    ),
    "modeling_modular_resnet.py": (
        "from hf_modular import (  # noqa: F401  (pip install hf-modular)\n"
        "    ModularResNetBackbone,\n    ModularResNetForImageClassification,\n    ModularResNetModel,\n)\n"
    ),
}
AUTO_MAP = {
    "AutoConfig": "configuration_modular_resnet.ModularResNetConfig",
    "AutoModel": "modeling_modular_resnet.ModularResNetModel",
    "AutoModelForImageClassification": "modeling_modular_resnet.ModularResNetForImageClassification",
    "AutoBackbone": "modeling_modular_resnet.ModularResNetBackbone",
}

logger = logging.getLogger(__name__)


@dataclass
class PushResult:
    """Where a push went: the repo, the commit now at the head of the pushed revision, and whether it is new."""

    repo_id: str
    commit_sha: str
    commit_url: str | None
    changed: bool


def push_model(model: PreTrainedModel, repo_id: str, **options: Unpack[PushOptions]) -> PushResult:
    """Push a module or a parent model to `repo_id` (created if missing) in one commit, with its card."""
    shard = {"max_shard_size": options.pop("max_shard_size")} if options.get("max_shard_size") else {}
    with tempfile.TemporaryDirectory(prefix="hf-modular-push-") as staging, library_bars_off():
        model.save_pretrained(staging, **shard)
        return push_directory(staging, repo_id, model=None if _is_module(model.config) else model, **options)


def push_directory(
    directory: str | os.PathLike,
    repo_id: str,
    *,
    model: PreTrainedModel | None = None,
    **options: Unpack[PushOptions],
) -> PushResult:
    """Push a saved model directory as it is, with a card rendered for `repo_id` (a module's from its config).

    The directory is read through transformers' Auto classes, which know the ModularResNet classes once
    `hf_modular` is imported."""
    directory = Path(directory)
    options.pop("max_shard_size", None)  # a saved directory is pushed as it was saved
    check_complete(directory)
    _validate(repo_id)
    license = options.pop("license", None)
    config = AutoConfig.from_pretrained(directory)
    if not options.pop("overwrite", False):
        refuse_replacing_another_module(repo_id, config, **options)
    if _is_module(config):
        license = license or parent_license(ModuleProvenance.from_dict(config.module).parent, options.get("token"))
        card = module_card(config, repo_id, license=license)
    else:
        model = model or AutoModelForImageClassification.from_pretrained(directory)
        card = parent_card(model, repo_id, license=license)
    tags = options.pop("tags", None) or []
    card.data.tags = [*(card.data.tags or []), *(tag for tag in tags if tag not in (card.data.tags or []))]
    with tempfile.TemporaryDirectory(prefix="hf-modular-push-") as staging:
        for name in _model_files(directory):
            shutil.copy2(directory / name, Path(staging) / name)
        card.save(Path(staging) / "README.md")
        if options.pop("remote_code", False):
            _add_remote_code(Path(staging))
        what = f"{ModuleProvenance.from_dict(config.module).target_label} module" if _is_module(config) else "model"
        return upload_folder(staging, repo_id, what=what, **options)


def _add_remote_code(staging: Path) -> None:
    """Write `REMOTE_CODE_FILES` and the config's `auto_map` into a staged copy of a ModularResNet directory."""
    if json.loads((staging / "config.json").read_text()).get("model_type") != "modular_resnet":
        raise ValueError("remote_code=True publishes code for ModularResNet models and modules only.")
    for name, text in REMOTE_CODE_FILES.items():
        (staging / name).write_text(text)
    config = json.loads((staging / "config.json").read_text())
    config["auto_map"] = AUTO_MAP
    (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def check_complete(directory: Path) -> None:
    """Raise FileNotFoundError unless `directory` holds a whole saved model (config, processor and weights)."""
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if (directory / SHARD_INDEX).is_file():  # sharded weights stand in for a single model.safetensors
        missing = [name for name in missing if name != "model.safetensors"]
    if missing:
        raise FileNotFoundError(
            f"{directory} is missing {', '.join(missing)}: it is not a complete saved model. Save it again with "
            "save_pretrained (or rerun the decomposition) before pushing."
        )


def upload_folder(
    folder: str | os.PathLike, repo_id: str, *, what: str = "model", **options: Unpack[PushOptions]
) -> PushResult:
    """Upload a prepared folder (its card already in it; `license` is ignored) to `repo_id` (created if missing) as
    one commit; unchanged files are skipped and a push that changes nothing makes no commit."""
    _validate(repo_id)
    private, revision, token = options.get("private"), options.get("revision"), options.get("token")
    api = HfApi(token=token)
    with _explained(repo_id):
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        repo = api.repo_info(repo_id, revision=revision)
        head = repo.sha  # a pull request is opened against it
        if private and repo.private is False:  # create_repo leaves an existing repo's visibility as it is
            logger.warning(
                "%s already exists and is public; private=True (--private) does not change that. Make it private "
                "in its settings on the Hub, or with HfApi().update_repo_settings(%r, private=True).",
                repo_id,
                repo_id,
            )
        message = options.get("commit_message") or f"Upload {what} with hf_modular"
        try:
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=str(folder),
                revision=revision,
                create_pr=options.get("create_pr", False),
                commit_message=message,
                commit_description=options.get("commit_description"),
                # Code files a push with remote_code left: gone when this push has none (its config has no auto_map).
                delete_patterns=[name for name in REMOTE_CODE_FILES if not (Path(folder) / name).exists()],
            )
        except Exception as error:
            if _network_cause(error) is None or options.get("create_pr"):
                raise
            # The connection failed: the commit may have landed all the same, its answer lost on the way back.
            landed = _landed_commit(api, repo_id, revision, head, message)
            if landed is None:
                raise
            logger.warning("%s: the Hub's answer was lost, but the commit landed (%s).", repo_id, landed[:12])
            return PushResult(repo_id, landed, None, changed=True)
    return PushResult(repo_id, info.oid, info.commit_url, changed=info.oid != head)


def _landed_commit(api: HfApi, repo_id: str, revision: str | None, parent: str, message: str) -> str | None:
    """The id of the commit this push made, if it landed: the newest on the revision, with this push's title, right
    on top of `parent`. None otherwise, or when the Hub cannot tell (someone else's commit is not ours)."""
    try:
        commits = api.list_repo_commits(repo_id, revision=revision)
    except Exception:  # unreachable again: nothing can be said
        return None
    if len(commits) >= 2 and commits[0].title == message and commits[1].commit_id == parent:
        return commits[0].commit_id
    return None


def push_modules(
    modules_or_dir: ModulesOrDirectory,
    namespace: str,
    *,
    name_template: str = DEFAULT_NAME_TEMPLATE,
    **options: Unpack[PushOptions],
) -> dict[str, PushResult]:
    """Push every module to its own repo `{namespace}/{name_template}`; returns `{label: PushResult}`.

    `modules_or_dir` is a decomposition's output directory (each `*-module` folder in it), or module objects (a
    `{label: module}` dict or any iterable). `name_template` may use the fields of `NAME_FIELDS`: `{parent_name}`,
    `{label}`, `{index}`, `{architecture}` and `{strategy}`. `options` (see `PushOptions`) apply to every push.
    Every module is checked (complete, and not replacing a different module) before the first is pushed.
    """
    check_name_template(name_template)
    with _module_directories(modules_or_dir) as modules:
        for directory, _ in modules:
            check_complete(directory)
        repos = check_module_pushes(
            [config for _, config in modules], namespace, name_template=name_template, **options
        )
        results: dict[str, PushResult] = {}
        for (directory, config), repo_id in zip(modules, repos, strict=True):
            label = config.provenance.target_label
            try:  # checked above: the repos hold these modules or nothing
                results[label] = push_directory(directory, repo_id, **{**options, "overwrite": True})
            except Exception as error:
                if not results:
                    raise  # nothing is live: the error as it is
                raise PartialPushError(results, label, error) from error
    return results


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
        _validate(repo_id)
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
        cause = _network_cause(error)
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
    a model over files that are not one (a README written by hand: the push would replace it with its card).
    Nothing to check for a repo or branch that does not exist yet (or holds only `.gitattributes`, as a new repo
    does), or a pull request."""
    _validate(repo_id)
    if options.get("create_pr"):
        return
    api, token, revision = HfApi(token=options.get("token")), options.get("token"), options.get("revision")
    # Read from the Hub itself, never from a cached copy of what the repo held; with the client's requests, so that
    # the CLI's time limit holds (hf_hub_download's metadata request sets its own, and retries it for minutes). No
    # answer is an error (offline mode included), never "nothing there".
    with _explained(repo_id, asking=True):
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
        if files:  # the user's own files: the push would replace its README.md, and leave the rest beside it
            shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
            raise RepoHoldsAnotherModel(repo_id, [f"files that are not a model ({shown})"], "files")
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
        super().__init__(
            f"This push would replace what {repo_id} holds: {'; '.join(differences)}.{self.others()} Nothing was "
            f"pushed. Publish this under another repo name{name_hint} or branch (revision / --revision), or replace "
            "what the repo holds with overwrite=True (--overwrite on `hf-modular push` and `push-parent`; the Hub "
            "keeps the old files in the repo's history)."
        )

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
    has no revision or configuration (an older release recorded those given with it)."""
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


def without_url_queries(text: str) -> str:
    """`text` with the query of every URL in it removed: an upload URL's query is its signature."""
    return re.sub(r"(https?://[^\s?'\"]+)\?[^\s'\"]*", r"\1?...", text)


class PartialPushError(RuntimeError):
    """A batch push stopped at one module: `pushed` are live on the Hub, `failed` and the rest are not."""

    def __init__(self, pushed: dict[str, PushResult], failed: str, error: Exception):
        self.pushed, self.failed = dict(pushed), failed
        live = ", ".join(f"{label} ({result.repo_id})" for label, result in pushed.items())
        super().__init__(
            f"Pushing the {failed!r} module failed: {without_url_queries(str(error))} Modules live on the Hub: {live}. "
            "Run the same push again to finish: modules already pushed are unchanged and make no new commit."
        )


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


def parent_license(parent: ParentRecord, token: str | bool | None = None) -> str | None:
    """The license on the card of a module's parent, when the parent is a Hub repo whose card states one."""
    if not parent.repo_id:
        return None
    try:
        card_data = HfApi(token=token).model_info(parent.repo_id, revision=parent.revision).card_data
    except (HfHubHTTPError, TransportError, OSError):  # unreachable or private: the card says it is unknown
        return None
    return getattr(card_data, "license", None) if card_data else None


def _model_files(directory: Path) -> list[str]:
    """The files of a saved model: config, image processor, and its weights (one file, or an index and shards)."""
    names = [name for name in REQUIRED_FILES if (directory / name).is_file()]
    if (directory / SHARD_INDEX).is_file():
        shards = sorted(set(json.loads((directory / SHARD_INDEX).read_text())["weight_map"].values()))
        names += [SHARD_INDEX, *shards]
    return names


def _is_module(config: PreTrainedConfig) -> bool:
    return getattr(config, "module", None) is not None


@contextlib.contextmanager
def _module_directories(modules_or_dir: ModulesOrDirectory) -> Iterator[list[tuple[Path, PreTrainedConfig]]]:
    """The modules' saved directories and configs: a decomposition's output as it is, module objects saved to a
    temporary directory that lasts as long as the context."""
    if isinstance(modules_or_dir, (str, os.PathLike)):
        root = Path(modules_or_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"No such directory: {root}.")
        # Hidden entries are never modules: they are the staging directories of writes a killed run left behind.
        children = [p for p in root.iterdir() if not p.name.startswith(".") and (p / "config.json").is_file()]
        found = [(child, AutoConfig.from_pretrained(child)) for child in sorted(children)]
        found = [(child, config) for child, config in found if _is_module(config)]
        if not found:
            raise ValueError(f"{root} holds no module directories (folders with a module's config.json).")
        yield found
        return
    modules = modules_or_dir.values() if isinstance(modules_or_dir, Mapping) else modules_or_dir
    with tempfile.TemporaryDirectory(prefix="hf-modular-modules-") as staging:
        saved = []
        for module in modules:
            if not _is_module(module.config):
                raise ValueError("push_modules pushes class modules; push a plain model with push_model.")
            directory = Path(staging) / module_directory_name(module.config.provenance.target_label)
            with library_bars_off():
                module.save_pretrained(directory)
            saved.append((directory, module.config))
        yield saved


def _validate(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"{repo_id!r} is not a valid Hub repo id ({error}). Use 'namespace/name'.") from error
    if repo_id.count("/") != 1:
        raise ValueError(f"{repo_id!r} is not a valid Hub repo id: use 'namespace/name' (e.g. 'my-org/cat-module').")


class _explained:
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
        cause = _network_cause(error)
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


def _network_cause(error: BaseException) -> BaseException | None:
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
