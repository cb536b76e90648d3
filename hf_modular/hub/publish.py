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
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
from transformers import AutoConfig, AutoModelForImageClassification, PreTrainedConfig, PreTrainedModel
from typing_extensions import Unpack

from ..console import library_bars_off
from ..module import ModuleProvenance, module_directory_name
from ..module.provenance import ParentRecord
from .cards import module_card, parent_card
from .checks import DEFAULT_NAME_TEMPLATE, check_module_pushes, check_name_template, refuse_replacing_another_module
from .client import TransportError, check_repo_id, explained_failures, network_cause, without_url_queries
from .options import PushOptions, PushResult

REQUIRED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
SHARD_INDEX = "model.safetensors.index.json"  # transformers' index of sharded weights (`max_shard_size`)
# A decomposition's output directory, `{label: module}`, or any iterable of modules.
ModulesOrDirectory = str | os.PathLike | Mapping[str, PreTrainedModel] | Iterable[PreTrainedModel]


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
    check_repo_id(repo_id)
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
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"No such directory: {directory}.")
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
    check_repo_id(repo_id)
    private, revision, token = options.get("private"), options.get("revision"), options.get("token")
    api = HfApi(token=token)
    with explained_failures(repo_id):
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
            if network_cause(error) is None or options.get("create_pr"):
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


class PartialPushError(RuntimeError):
    """A batch push stopped at one module: `pushed` are live on the Hub, `failed` and the rest are not."""

    def __init__(self, pushed: dict[str, PushResult], failed: str, error: Exception):
        self.pushed, self.failed = dict(pushed), failed
        live = ", ".join(f"{label} ({result.repo_id})" for label, result in pushed.items())
        super().__init__(
            f"Pushing the {failed!r} module failed: {without_url_queries(str(error))} Modules live on the Hub: {live}. "
            "Run the same push again to finish: modules already pushed are unchanged and make no new commit."
        )


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
        if not found and (root / "config.json").is_file():  # a saved model itself, not a decomposition's output
            raise ValueError(
                f"{root} is a saved model, not a decomposition's output: push a module or a parent with push_model "
                "or push_directory (`hf-modular push-parent DIR REPO_ID`), a composition with its push_to_hub."
            )
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
