"""Issue 4, "Every module a Hub repo": push modules and parents, load them back four ways, cards, faults and the CLI.

Everything runs against `tests/hub_server.py`, a Hub-compatible HTTP server driven by the real huggingface_hub client
(and transformers, timm and `pipeline` on top of it); nothing in the client or in hf_modular is patched.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import re
import shutil
import subprocess
import sys
import traceback
import types
import zipfile
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
import transformers
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import RepositoryNotFoundError
from huggingface_hub.utils import _http
from safetensors.torch import load_file

import hf_modular
from hf_modular import ModularResNetConfig, ModularResNetForImageClassification
from hf_modular.cli import main
from hf_modular.decompose.output import decompose_to_directory
from hf_modular.hub import (
    PushResult,
    check_write_access,
    module_card,
    push_directory,
    push_model,
    push_modules,
)
from hf_modular.models import image_processor_for
from tests.conftest import randomize_
from tests.hub_server import DEFAULT_TOKEN, DEFAULT_USER, HubServer, client_env, hub_server_fixture  # noqa: F401
from tests.test_decompose import LABELS, image_dataset, tiny_config

REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE_FILES = ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
PARENT_NAME = "tiny-parent"


# --------------------------------------------------------------------------------------------------------------------
# Fixtures: one tiny parent, decomposed once per test session (no Hub needed for that)
# --------------------------------------------------------------------------------------------------------------------


def training_data():
    return image_dataset([40, 90, 200, 30, 180, 120] * 4, [0, 1, 2] * 8, noise=40)


@pytest.fixture(scope="module")
def parent_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved random parent whose folder name makes the module repo names `tiny-parent-{label}-module`."""
    torch.manual_seed(1)
    parent = randomize_(ModularResNetForImageClassification(tiny_config()).eval(), seed=1)
    directory = tmp_path_factory.mktemp("parents") / PARENT_NAME
    parent.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def decomposed(parent_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A decomposition output directory, with `evaluation` filled in every module's config."""
    parent = ModularResNetForImageClassification.from_pretrained(parent_dir)
    output = tmp_path_factory.mktemp("decomposed") / "modules"
    data = training_data()
    decompose_to_directory(parent, data, output, eval_dataset=data, samples_per_class=8, progress=False)
    return output


@pytest.fixture(scope="module")
def modules(decomposed: Path) -> dict[str, ModularResNetForImageClassification]:
    loaded = {
        label: ModularResNetForImageClassification.from_pretrained(decomposed / f"{label}-module") for label in LABELS
    }
    for module in loaded.values():
        assert module.config.mask_shapes, "the test needs modules that actually mask something"
        assert module.config.provenance.evaluation["binary_accuracy"] is not None
    return loaded


@pytest.fixture(scope="module")
def images():
    data = training_data()
    return [data[i]["image"] for i in range(6)]


@pytest.fixture(scope="module")
def pixel_values(images, parent_dir: Path) -> torch.Tensor:
    config = ModularResNetConfig.from_pretrained(parent_dir)
    return image_processor_for(config)(images, return_tensors="pt")["pixel_values"]


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


def commits(repo_id: str, **kwargs) -> list[str]:
    """Commit shas of a repo's main branch, newest first."""
    return [c.commit_id for c in HfApi().list_repo_commits(repo_id, **kwargs)]


def logits(model, pixel_values: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        output = model.eval()(pixel_values)
    return output if isinstance(output, torch.Tensor) else output.logits


def commit_posts(server: HubServer, repo_id: str) -> int:
    return sum(1 for method, path in server.requests if method == "POST" and f"/{repo_id}/commit/" in path)


def assert_one_upload_commit(repo_id: str, result: PushResult) -> None:
    """The repo holds the server's initial commit plus exactly one commit with every file of a module."""
    api = HfApi()
    history = api.list_repo_commits(repo_id)
    assert len(history) == 2 and history[-1].title == "initial commit"
    assert result.repo_id == repo_id and result.changed
    assert result.commit_sha == history[0].commit_id == api.repo_info(repo_id).sha
    assert sorted(api.list_repo_files(repo_id, revision=history[1].commit_id)) == [".gitattributes"]
    assert sorted(api.list_repo_files(repo_id, revision=history[0].commit_id)) == [".gitattributes", *MODULE_FILES]


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Equal tensors under equal names, masks (bool buffers) included."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    assert any(key.endswith(".mask") for key in sa)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# --------------------------------------------------------------------------------------------------------------------
# Push
# --------------------------------------------------------------------------------------------------------------------


def test_push_to_hub_is_one_commit_and_a_repush_of_the_same_module_none(hub_server: HubServer, modules) -> None:
    repo_id = f"{DEFAULT_USER}/dark-module"
    result = modules["dark"].push_to_hub(repo_id)
    assert isinstance(result, PushResult)
    assert_one_upload_commit(repo_id, result)
    assert commit_posts(hub_server, repo_id) == 1
    assert result.commit_url and result.commit_sha in result.commit_url

    # Unchanged: nothing to commit, the head is reported as is.
    again = modules["dark"].push_to_hub(repo_id)
    assert again.changed is False and again.commit_sha == result.commit_sha
    assert len(commits(repo_id)) == 2 and commit_posts(hub_server, repo_id) == 1

    # The same module with another evaluation in its config: exactly one new commit, on top of the old head.
    changed = copy.deepcopy(modules["dark"])
    changed.config.module["evaluation"]["binary_accuracy"] = 0.123
    third = push_model(changed, repo_id)
    history = commits(repo_id)
    assert third.changed and third.commit_sha == history[0] and history[1:] == [result.commit_sha, history[-1]]
    config = json.loads(Path(HfApi().hf_hub_download(repo_id, "config.json")).read_text())
    assert config["module"]["evaluation"]["binary_accuracy"] == 0.123


def test_push_modules_from_a_directory_and_from_objects(hub_server: HubServer, decomposed: Path, modules) -> None:
    results = push_modules(decomposed, DEFAULT_USER)
    assert list(results) == sorted(LABELS)  # directory order
    for label, result in results.items():
        assert result.repo_id == f"{DEFAULT_USER}/{PARENT_NAME}-{label}-module"  # the default name template
        assert_one_upload_commit(result.repo_id, result)
        config = json.loads(Path(HfApi().hf_hub_download(result.repo_id, "config.json")).read_text())
        assert config["module"]["target_label"] == label

    # Pushing the same modules again (as objects this time) changes nothing.
    again = push_modules(modules, DEFAULT_USER)
    assert {label: (r.repo_id, r.commit_sha, r.changed) for label, r in again.items()} == {
        label: (r.repo_id, r.commit_sha, False) for label, r in results.items()
    }
    for result in results.values():
        assert len(commits(result.repo_id)) == 2

    # A custom template, from a list of modules.
    custom = push_modules(
        [modules["mid"], modules["bright"]],
        DEFAULT_USER,
        name_template="{architecture}-{index}-{label}-of-{parent_name}",
    )
    assert {label: r.repo_id for label, r in custom.items()} == {
        "mid": f"{DEFAULT_USER}/modular-resnet-2-mid-of-{PARENT_NAME}",
        "bright": f"{DEFAULT_USER}/modular-resnet-1-bright-of-{PARENT_NAME}",
    }
    for result in custom.values():
        assert_one_upload_commit(result.repo_id, result)

    # Another module for an existing repo is refused before anything is pushed; overwrite=True makes one new commit.
    repo_id = results["dark"].repo_id
    refused = rf"This push would replace what {repo_id} holds: class 'dark' there, 'bright' in this push\. Nothing"
    with pytest.raises(FileExistsError, match=refused) as caught:
        push_model(modules["bright"], repo_id)
    travelled = pickle.loads(pickle.dumps(caught.value))  # as it is sent to the other processes of a launched run
    assert (str(travelled), travelled.differences) == (str(caught.value), caught.value.differences)
    assert len(commits(repo_id)) == 2
    replaced = push_model(modules["bright"], repo_id, overwrite=True)
    assert replaced.changed and commits(repo_id)[0] == replaced.commit_sha and len(commits(repo_id)) == 3


def test_a_push_never_replaces_another_module_unless_told(
    hub_server: HubServer, decomposed: Path, parent_dir: Path, modules, tmp_path: Path, monkeypatch, caplog
) -> None:
    # A quick decomposition with other parameters, pushed under the names of published modules: every module is
    # checked before the first push, so nothing is pushed at all.
    assert main(["-q", "push", str(decomposed), "--namespace", DEFAULT_USER]) == 0
    quick_dir = tmp_path / "quick"
    parent = ModularResNetForImageClassification.from_pretrained(parent_dir)
    decompose_to_directory(parent, training_data(), quick_dir, samples_per_class=4, seed=1, progress=False)
    quick = {
        label: ModularResNetForImageClassification.from_pretrained(quick_dir / f"{label}-module") for label in LABELS
    }
    mid_repo = f"{DEFAULT_USER}/{PARENT_NAME}-mid-module"
    before = commits(mid_repo)
    refused = r"holds: samples per class 8 there, 4 in this push; sampling seed 0 there, 1 in this push\. So would"
    with pytest.raises(FileExistsError, match=refused) as caught:
        push_modules(quick_dir, DEFAULT_USER, commit_message="quick run")
    assert commits(mid_repo) == before
    assert sorted([caught.value.repo_id, *caught.value.other_repos]) == sorted(  # all of them, in one error
        f"{DEFAULT_USER}/{PARENT_NAME}-{label}-module" for label in LABELS
    )

    # The same module again, another branch, a pull request or a name with {strategy} are fine.
    assert push_modules([modules["dark"]], DEFAULT_USER)["dark"].changed is False
    assert push_model(quick["dark"], f"{DEFAULT_USER}/{PARENT_NAME}-dark-module", revision="quick").changed
    assert push_model(quick["dark"], f"{DEFAULT_USER}/{PARENT_NAME}-dark-module", create_pr=True).changed
    named = push_modules([quick["dark"]], DEFAULT_USER, name_template="{parent_name}-{label}-{strategy}-module")
    assert named["dark"].repo_id == f"{DEFAULT_USER}/{PARENT_NAME}-dark-activation-module"
    # A parent or a composition does not take over a module's repo either.
    with pytest.raises(FileExistsError, match="this push is not a class module"):
        push_directory(parent_dir, mid_repo)
    with pytest.raises(FileExistsError, match="this push is not a class module"):
        hf_modular.ComposedModel.from_modules([modules["dark"], modules["mid"]]).push_to_hub(mid_repo)
    assert commits(mid_repo) == before
    # Nor does a module take over a parent's repo, and a name template must give each module its own repo.
    parent_commits = commits(push_directory(parent_dir, f"{DEFAULT_USER}/the-parent").repo_id)
    with pytest.raises(FileExistsError, match="the repo holds a model that is not a class module"):
        push_model(modules["dark"], f"{DEFAULT_USER}/the-parent")
    with pytest.raises(ValueError, match=r"gives several modules one repo \(user/the-parent\).*put \{label\}"):
        push_modules(decomposed, DEFAULT_USER, name_template="the-parent")
    assert commits(f"{DEFAULT_USER}/the-parent") == parent_commits
    # A repo of another library's files is not mixed into unasked either; a new repo (nothing but .gitattributes)
    # takes the push, and so does one made on the Hub's site with its README written first (with a warning).
    api = HfApi()
    other_repo, new_repo, readme_repo = (f"{DEFAULT_USER}/{name}" for name in ("keras-net", "made-new", "my-notes"))
    for repo_id, name in ((other_repo, "model.keras"), (new_repo, ".gitattributes"), (readme_repo, "README.md")):
        api.create_repo(repo_id)
        api.upload_file(path_or_fileobj=b"---\nlicense: mit\n---\nmine\n", path_in_repo=name, repo_id=repo_id)
    refused = r"what user/keras-net holds: files that are not a model of ours \(model\.keras\)\. Nothing was pushed"
    with pytest.raises(FileExistsError, match=refused) as caught:
        push_model(modules["dark"], other_repo)
    assert caught.value.holds == "files" and caught.value.module and len(commits(other_repo)) == 2
    assert "push into it all the same with overwrite=True" in str(caught.value) and "its own files stay" in str(
        caught.value
    )
    assert push_model(modules["dark"], other_repo, overwrite=True).changed
    assert "model.keras" in {sibling.rfilename for sibling in api.repo_info(other_repo).siblings}  # as it said
    assert push_model(modules["dark"], new_repo).changed
    ours = logging.getLogger("hf_modular")
    ours.addHandler(caplog.handler)
    try:
        assert push_model(modules["dark"], readme_repo).changed
    finally:
        ours.removeHandler(caplog.handler)
    assert "user/my-notes holds only a README.md: the push replaces it with the model's card" in caplog.text
    assert "mine" not in Path(api.hf_hub_download(readme_repo, "README.md")).read_text()  # the module's card now

    # When the Hub cannot say what the repo holds, nothing is pushed (no "nothing there" guess, no cached copy).
    before_offline = commits(mid_repo)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match="offline mode is enabled"):
        push_model(modules["mid"], mid_repo)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert commits(mid_repo) == before_offline

    # From the command line: refused with the way out, then --overwrite.
    push_quick = ["-q", "push", str(quick_dir), "--namespace", DEFAULT_USER]
    assert main(push_quick) == 1
    assert main([*push_quick, "--overwrite"]) == 0
    config = Path(HfApi().hf_hub_download(mid_repo, "config.json")).read_text()
    assert json.loads(config)["module"]["sampling"]["samples_per_class"] == 4


def test_push_modules_rejects_plain_models_and_empty_directories(tmp_path: Path, parent_dir: Path) -> None:
    with pytest.raises(ValueError, match="push_model"):
        push_modules([ModularResNetForImageClassification.from_pretrained(parent_dir)], DEFAULT_USER)
    with pytest.raises(ValueError, match="no module directories"):
        push_modules(tmp_path, DEFAULT_USER)
    with pytest.raises(ValueError, match=r"is a saved model, not a decomposition's output.*hf-modular push-parent"):
        push_modules(parent_dir, DEFAULT_USER)
    with pytest.raises(FileNotFoundError, match="absent"):
        push_modules(tmp_path / "absent", DEFAULT_USER)


def test_push_to_a_branch_and_as_a_pull_request(hub_server: HubServer, modules) -> None:
    repo_id = f"{DEFAULT_USER}/branched-module"
    main_head = modules["dark"].push_to_hub(repo_id).commit_sha

    on_branch = modules["mid"].push_to_hub(repo_id, revision="dev")
    assert on_branch.changed and on_branch.commit_sha == commits(repo_id, revision="dev")[0]
    assert commits(repo_id)[0] == main_head  # main is untouched
    assert modules["mid"].push_to_hub(repo_id, revision="dev").changed is False
    assert hf_modular.load_module(repo_id, revision="dev").config.provenance.target_label == "mid"

    # Someone without write access proposes a change as a pull request.
    stranger = "hf_token_of_a_stranger"
    hub_server.tokens[stranger] = "stranger"
    proposal = modules["bright"].push_to_hub(repo_id, create_pr=True, token=stranger)
    refs = HfApi().list_repo_refs(repo_id, include_pull_requests=True).pull_requests
    assert proposal.changed and [(r.ref, r.target_commit) for r in refs] == [("refs/pr/1", proposal.commit_sha)]
    assert commits(repo_id)[0] == main_head
    # A pull request that would change nothing is not opened, and the result says so.
    nothing = modules["dark"].push_to_hub(repo_id, create_pr=True, token=stranger)
    assert nothing.changed is False and nothing.commit_sha == main_head
    assert len(HfApi().list_repo_refs(repo_id, include_pull_requests=True).pull_requests) == 1


# --------------------------------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------------------------------


def test_a_pushed_module_loads_four_ways_with_its_masks(hub_server: HubServer, modules, images, pixel_values) -> None:
    module = modules["bright"]
    repo_id = f"{DEFAULT_USER}/bright-module"
    head = module.push_to_hub(repo_id).commit_sha
    expected = logits(module, pixel_values)

    ours = ModularResNetForImageClassification.from_pretrained(repo_id)
    same_state(ours, module)
    torch.testing.assert_close(logits(ours, pixel_values), expected, rtol=0, atol=0)
    assert ours.source_revision == head
    assert ours.config.module == module.config.module

    auto = transformers.AutoModelForImageClassification.from_pretrained(repo_id)
    assert isinstance(auto, ModularResNetForImageClassification)
    same_state(auto, module)
    torch.testing.assert_close(logits(auto, pixel_values), expected, rtol=0, atol=0)

    loaded = hf_modular.load_module(repo_id)
    assert loaded.config.provenance.target_label == "bright"
    torch.testing.assert_close(logits(loaded, pixel_values), expected, rtol=0, atol=0)

    timm_model = timm.create_model("hf-hub:" + repo_id, pretrained=True)
    same_state(timm_model, module)
    torch.testing.assert_close(logits(timm_model, pixel_values), expected, rtol=1e-6, atol=1e-6)

    classify = transformers.pipeline("image-classification", model=repo_id)
    probabilities = expected.softmax(-1)
    for image, row in zip(images, probabilities, strict=True):
        predictions = classify(image)
        assert {p["label"] for p in predictions} == {"bright", "rest"}
        scores = {p["label"]: p["score"] for p in predictions}
        assert scores["bright"] == pytest.approx(float(row[0]), abs=1e-5)
        assert scores["rest"] == pytest.approx(float(row[1]), abs=1e-5)


def test_revision_pinning_loads_the_first_push(hub_server: HubServer, modules, pixel_values) -> None:
    repo_id = f"{DEFAULT_USER}/pinned-module"
    first = modules["dark"].push_to_hub(repo_id).commit_sha
    second = modules["mid"].push_to_hub(repo_id, overwrite=True).commit_sha  # another module: told to replace
    assert first != second and commits(repo_id)[:2] == [second, first]
    assert not torch.equal(logits(modules["dark"], pixel_values), logits(modules["mid"], pixel_values))

    old = ModularResNetForImageClassification.from_pretrained(repo_id, revision=first)
    torch.testing.assert_close(logits(old, pixel_values), logits(modules["dark"], pixel_values), rtol=0, atol=0)
    assert old.source_revision == first and old.config.provenance.target_label == "dark"
    new = hf_modular.load_module(repo_id)
    torch.testing.assert_close(logits(new, pixel_values), logits(modules["mid"], pixel_values), rtol=0, atol=0)
    assert new.source_revision == second and new.config.provenance.target_label == "mid"


def test_private_module_is_invisible_to_anonymous_clients(hub_server: HubServer, modules) -> None:
    results = push_modules({"dark": modules["dark"]}, DEFAULT_USER, private=True)
    repo_id = results["dark"].repo_id
    assert HfApi().repo_info(repo_id).private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).repo_info(repo_id)
    with pytest.raises(OSError):
        ModularResNetForImageClassification.from_pretrained(repo_id, token=False, force_download=True)
    public = modules["mid"].push_to_hub(f"{DEFAULT_USER}/public-module")
    assert HfApi(token=False).repo_info(public.repo_id).private is False
    # Asking for privacy on a repo that exists and is public does not make it private: the user hears so.
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("hf_modular").addHandler(handler)
    try:
        push_modules({"mid": modules["mid"]}, DEFAULT_USER, private=True, name_template="public-module")
    finally:
        logging.getLogger("hf_modular").removeHandler(handler)
    assert any("already exists and is public" in record.getMessage() for record in records)
    assert HfApi(token=False).repo_info(public.repo_id).private is False


def test_offline_reload_from_cache_in_a_fresh_process(
    hub_server: HubServer, modules, pixel_values, tmp_path: Path
) -> None:
    repo_id = f"{DEFAULT_USER}/offline-module"
    head = modules["mid"].push_to_hub(repo_id).commit_sha
    online = logits(hf_modular.load_module(repo_id), pixel_values)  # downloads into the client's cache
    torch.save(pixel_values, tmp_path / "pixels.pt")
    env = {**os.environ, **client_env(hub_server.url, hub_server.hf_home), "HF_HUB_OFFLINE": "1"}
    hub_server.stop()  # nothing to talk to any more

    code = (
        "import json, sys, torch, hf_modular\n"
        f"module = hf_modular.load_module({repo_id!r})\n"
        f"pixels = torch.load({str(tmp_path / 'pixels.pt')!r})\n"
        "with torch.no_grad():\n"
        "    print(json.dumps({'logits': module(pixels).logits.tolist(), 'revision': module.source_revision}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout.strip().splitlines()[-1])
    torch.testing.assert_close(torch.tensor(printed["logits"]), online, rtol=0, atol=0)
    assert printed["revision"] == head


# --------------------------------------------------------------------------------------------------------------------
# Cards
# --------------------------------------------------------------------------------------------------------------------


def test_card_of_a_module_decomposed_from_a_hub_parent(hub_server: HubServer, parent_dir: Path, tmp_path: Path) -> None:
    parent_repo = f"{DEFAULT_USER}/{PARENT_NAME}"
    assert main(["-q", "push-parent", str(parent_dir), parent_repo, "--license", "mit"]) == 0
    parent_sha = HfApi().repo_info(parent_repo).sha
    parent_card = ModelCard.load(parent_repo)
    assert parent_card.data.library_name == "hf_modular" and parent_card.data.license == "mit"
    assert "modular-resnet" in parent_card.data.tags and parent_card.data.pipeline_tag == "image-classification"
    assert f'from_pretrained("{parent_repo}")' in parent_card.text

    parent = ModularResNetForImageClassification.from_pretrained(parent_repo)
    assert parent.source_revision == parent_sha
    data = training_data()
    decompose_to_directory(parent, data, tmp_path / "out", eval_dataset=data, samples_per_class=8, progress=False)
    results = push_modules(tmp_path / "out", DEFAULT_USER)  # the license comes from the parent's card
    repo_id = results["dark"].repo_id
    assert repo_id == f"{DEFAULT_USER}/{PARENT_NAME}-dark-module"

    hub_server.requests.clear()
    card = ModelCard.load(repo_id)
    assert card.content == Path(HfApi().hf_hub_download(repo_id, "README.md")).read_text()
    metadata = card.data
    assert metadata.library_name == "hf_modular"
    assert metadata.pipeline_tag == "image-classification"
    assert {"hf-modular", "cnn-module", "image-classification", "modular-resnet", "class-dark"} <= set(metadata.tags)
    assert metadata.base_model == parent_repo and metadata.base_model_relation == "finetune"
    assert metadata.license == "mit" and "License: `mit` (the parent's)." in card.text
    assert metadata.co2_eq_emissions["emissions"] > 0 and metadata.co2_eq_emissions["training_type"] == "decomposition"
    # Measured on an in-memory dataset: no model-index (it needs a real dataset id), the figures are in the text.
    evaluation = json.loads(Path(HfApi().hf_hub_download(repo_id, "config.json")).read_text())["module"]["evaluation"]
    assert metadata.eval_results is None and "model-index" not in card.content
    assert f"{100 * evaluation['binary_accuracy']:.2f}%" in card.text and metadata.model_name == repo_id
    assert "pip install hf-modular" in card.text

    assert f"| Parent revision | `{parent_sha}` |" in card.text
    assert f"[{parent_repo}](https://huggingface.co/{parent_repo})" in card.text
    assert f'from_pretrained("{repo_id}")' in card.text and f"hf-hub:{repo_id}" in card.text
    assert "path/to/" not in card.text
    assert "| Dataset | an in-memory `datasets.Dataset`, split `train`" in card.text  # not "`None`"

    card.validate()  # asks the server's /api/validate-yaml
    assert ("POST", "/api/validate-yaml") in hub_server.requests


def test_module_card_without_evaluation_has_no_model_index(modules) -> None:
    config = copy.deepcopy(modules["dark"].config)
    del config.module["evaluation"]
    card = module_card(config, "org/dark-module")
    assert card.data.eval_results is None and "model-index" not in card.content
    assert card.data.base_model is None  # a local parent
    assert "## Evaluation" not in card.text and 'from_pretrained("org/dark-module")' in card.text


def test_a_module_of_imported_weights_names_their_origin_and_takes_their_license(modules) -> None:
    config = copy.deepcopy(modules["dark"].config)
    assert "The license is unknown" in module_card(config).text  # a parent with no recorded license
    origin = {"source": "resnet.th", "format": "CIFAR ResNet checkpoint", "sha256": "ab" * 32, "license": "mit"}
    info = config.provenance
    info.parent.origin = origin  # as decompose records an imported parent's `config.origin`
    config.provenance = info
    card = module_card(config)
    assert card.data.license == "mit" and "`mit` (the parent's)" in card.text
    assert "| Parent imported from | `resnet.th` (sha256 of the file: `" + "ab" * 32 in card.text
    assert module_card(config, license="apache-2.0").data.license == "apache-2.0"  # one given wins


def test_card_templates_ship_in_the_wheel(tmp_path: Path) -> None:
    source = tmp_path / "src"  # build from a copy: the build leaves build/ and *.egg-info behind
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")
    for name in ("hf_modular", "model_cards"):
        shutil.copytree(REPO_ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    # No build isolation: the test must not need a package index to fetch setuptools.
    command = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*command, "-w", str(tmp_path / "wheels")], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "wheels").glob("hf_modular-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for template in ("module.md.j2", "parent.md.j2"):
        assert f"hf_modular/model_cards/{template}" in names
        shipped = zipfile.ZipFile(wheel).read(f"hf_modular/model_cards/{template}")
        assert shipped == (REPO_ROOT / "model_cards" / template).read_bytes()


# --------------------------------------------------------------------------------------------------------------------
# Bad input and faults
# --------------------------------------------------------------------------------------------------------------------


def test_pushing_where_the_user_cannot_write_is_a_permission_error(hub_server: HubServer, modules) -> None:
    with pytest.raises(PermissionError) as error:
        modules["dark"].push_to_hub("someone-else/dark-module")  # 403: not the user's namespace
    message = str(error.value)
    assert "someone-else/dark-module" in message and "403" in message
    assert "hf auth login" in message and "HF_TOKEN" in message
    assert DEFAULT_TOKEN not in message

    secret = "hf_not_a_valid_token_0123456789"
    with pytest.raises(PermissionError) as error:  # 401: the token is unknown
        push_modules(modules, DEFAULT_USER, token=secret)
    message = str(error.value)
    assert f"{DEFAULT_USER}/{PARENT_NAME}-" in message and "401" in message and "hf auth login" in message
    assert secret not in message and DEFAULT_TOKEN not in message
    assert secret not in "".join(traceback.format_exception(error.value))  # nor anywhere in the chained errors

    hub_server.read_only_tokens.add(DEFAULT_TOKEN)  # a read-only token: 403 on the user's own namespace
    with pytest.raises(PermissionError, match="user/read-only-module"):
        modules["dark"].push_to_hub(f"{DEFAULT_USER}/read-only-module")
    assert not HfApi().repo_exists(f"{DEFAULT_USER}/read-only-module")


def test_write_access_is_checked_before_the_work(
    hub_server: HubServer, parent_dir: Path, decomposed: Path, tmp_path: Path, capsys
) -> None:
    check_write_access(DEFAULT_USER)
    with pytest.raises(PermissionError, match=r"the token is user's, and 'someone-else' is not that user\. Push"):
        check_write_access("someone-else")
    hub_server.orgs["my-org"] = {DEFAULT_USER}
    check_write_access("my-org")
    with pytest.raises(ValueError, match="The Hub spells the namespace 'My-Org' as 'my-org': push to my-org"):
        check_write_access("My-Org")  # found in any case, but an upload takes the Hub's own spelling
    with pytest.raises(ValueError, match="'my-org/x' is not a Hub namespace"):
        check_write_access("my-org/x")
    with pytest.raises(PermissionError, match=r"neither that user nor one of its organisations \(my-org\)"):
        check_write_access("someone-else")
    secret = "hf_not_a_valid_token_0123456789"
    with pytest.raises(PermissionError, match="the Hub does not accept the token") as error:
        check_write_access(DEFAULT_USER, token=secret)
    assert secret not in str(error.value)

    # The commands that push what they make ask before making it.
    training_data().to_parquet(str(tmp_path / "train.parquet"))
    decompose = ["-q", "decompose", str(parent_dir), "--dataset", str(tmp_path / "train.parquet")]
    assert main([*decompose, "--output", str(tmp_path / "out"), "--push-to", "someone-else"]) == 1
    assert "Cannot push to someone-else: the token is user's" in capsys.readouterr().err
    modules = [str(decomposed / f"{label}-module") for label in LABELS]
    assert main(["-q", "compose", *modules, "--output", str(tmp_path / "pair"), "--push-to", "someone-else/x"]) == 1
    assert "Cannot push to someone-else: the token is user's" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "pair").exists()
    hub_server.read_only_tokens.add(DEFAULT_TOKEN)
    assert main([*decompose, "--output", str(tmp_path / "out"), "--push-to", DEFAULT_USER]) == 1
    assert "Cannot push to user: the token is read-only" in capsys.readouterr().err


@pytest.mark.parametrize("repo_id", ["no-namespace", "a/b/c", "user/bad name", "user/", "user/-x--"])
def test_invalid_repo_ids_are_value_errors(hub_server: HubServer, modules, repo_id: str) -> None:
    with pytest.raises(ValueError, match="valid Hub repo id"):
        modules["dark"].push_to_hub(repo_id)
    assert not [r for r in hub_server.requests if "/api/repos/create" in r[1]]


def test_network_failure_mid_push_publishes_nothing_and_a_retry_completes(
    hub_server: HubServer, modules, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo_id = f"{DEFAULT_USER}/flaky-module"
    first = modules["dark"].push_to_hub(repo_id)
    before = commits(repo_id)

    # Every LFS upload of the new weights is cut: the client gives up after its retries, before committing
    # anything. Only its backoff waiting is skipped (1+2+4+8+8 s), not the retries.
    monkeypatch.setattr(_http, "time", types.SimpleNamespace(sleep=lambda _: None))
    hub_server.fail_uploads = 100
    with pytest.raises(ConnectionError) as error:
        modules["bright"].push_to_hub(repo_id, overwrite=True)
    message = str(error.value)
    assert repo_id in message and "this one did not land" in message and "again" in message
    assert commits(repo_id) == before and commit_posts(hub_server, repo_id) == 1
    hub_server.fail_uploads = 0

    # The commit request itself is cut (the weights got through this time): the client does not retry commits.
    hub_server.fail_next_commit = True
    with pytest.raises(ConnectionError) as error:
        modules["bright"].push_to_hub(repo_id, overwrite=True)
    assert repo_id in str(error.value) and "this one did not land" in str(error.value)
    assert commits(repo_id) == before and commit_posts(hub_server, repo_id) == 2
    assert hf_modular.load_module(repo_id).config.provenance.target_label == "dark"

    retry = modules["bright"].push_to_hub(repo_id, overwrite=True)
    assert retry.changed and commits(repo_id) == [retry.commit_sha, *before]
    assert first.commit_sha == before[0]
    assert hf_modular.load_module(repo_id).config.provenance.target_label == "bright"


def test_incomplete_module_directory_is_a_file_not_found_error(
    hub_server: HubServer, decomposed: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "modules"
    shutil.copytree(decomposed, broken)
    (broken / "mid-module" / "preprocessor_config.json").unlink()
    (broken / "mid-module" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError) as error:
        push_directory(broken / "mid-module", f"{DEFAULT_USER}/mid-module")
    assert "model.safetensors" in str(error.value) and "preprocessor_config.json" in str(error.value)
    assert "config.json," not in str(error.value)
    with pytest.raises(FileNotFoundError, match="mid-module.*model.safetensors, preprocessor_config.json"):
        push_modules(broken, DEFAULT_USER)
    assert not HfApi().repo_exists(f"{DEFAULT_USER}/mid-module")
    with pytest.raises(FileNotFoundError, match="No such directory: .*nowhere"):  # a mistyped path, said as such
        push_directory(tmp_path / "nowhere", f"{DEFAULT_USER}/nowhere")


def test_card_template_error_names_the_template(hub_server: HubServer, decomposed: Path, tmp_path: Path) -> None:
    directory = tmp_path / "dark-module"
    shutil.copytree(decomposed / "dark-module", directory)
    config = json.loads((directory / "config.json").read_text())
    config["module"]["compute"] = {}  # a valid record, but the template reads compute.wall_seconds
    (directory / "config.json").write_text(json.dumps(config))

    with pytest.raises(ValueError, match=r"module card from .*module\.md\.j2.*wall_seconds"):
        module_card(ModularResNetConfig.from_pretrained(directory), "user/dark-module")
    with pytest.raises(ValueError, match=r"module\.md\.j2"):
        push_directory(directory, f"{DEFAULT_USER}/dark-module")
    assert not HfApi().repo_exists(f"{DEFAULT_USER}/dark-module")  # nothing was created


def test_corrupt_weights_on_the_hub_are_a_value_error(hub_server: HubServer, modules, pixel_values) -> None:
    repo_id = f"{DEFAULT_USER}/corrupt-module"
    good = modules["dark"].push_to_hub(repo_id).commit_sha
    HfApi().upload_file(
        path_or_fileobj=b"\x08\x00\x00\x00\x00\x00\x00\x00{not json",
        path_in_repo="model.safetensors",
        repo_id=repo_id,
        commit_message="corrupt the weights",
    )
    for load in (ModularResNetForImageClassification.from_pretrained, hf_modular.load_module):
        with pytest.raises(ValueError) as error:
            load(repo_id)
        assert repo_id in str(error.value) and "model.safetensors" in str(error.value)
    # The earlier, intact commit still loads.
    pinned = hf_modular.load_module(repo_id, revision=good)
    torch.testing.assert_close(logits(pinned, pixel_values), logits(modules["dark"], pixel_values), rtol=0, atol=0)


def test_load_module_refuses_a_repo_without_module_fields(hub_server: HubServer, parent_dir: Path) -> None:
    repo_id = f"{DEFAULT_USER}/plain-classifier"
    result = ModularResNetForImageClassification.from_pretrained(parent_dir).push_to_hub(repo_id, license="mit")
    assert result.changed and sorted(HfApi().list_repo_files(repo_id)) == [".gitattributes", *MODULE_FILES]
    card = ModelCard.load(repo_id)
    assert card.data.license == "mit" and "cnn-module" not in card.data.tags and card.data.base_model is None
    with pytest.raises(ValueError, match=f"{repo_id} is a plain classifier"):
        hf_modular.load_module(repo_id)
    assert ModularResNetForImageClassification.from_pretrained(repo_id).config.num_labels == len(LABELS)


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------


def test_cli_push_decompose_push_to_and_card(
    hub_server: HubServer, decomposed: Path, parent_dir: Path, tmp_path: Path, capsys
) -> None:
    assert main(["-q", "push", str(decomposed), "--namespace", DEFAULT_USER]) == 0
    out = capsys.readouterr().out
    for label in LABELS:
        repo_id = f"{DEFAULT_USER}/{PARENT_NAME}-{label}-module"
        assert f"{repo_id}@{commits(repo_id)[0]}" in out
        assert len(commits(repo_id)) == 2
    assert out.count("(new commit)") == len(LABELS)
    pinned = [line.split()[1] for line in out.splitlines() if "@" in line]  # as printed, they pin the versions pushed
    assert sorted(hf_modular.ComposedModel.from_modules(pinned).labels) == sorted(LABELS)
    assert main(["-q", "info", pinned[0], "--json"]) == 0  # the other commands take them too
    assert json.loads(capsys.readouterr().out)["module"]["target_label"] == sorted(LABELS)[0]
    assert main(["-q", "info", pinned[0], "--revision", "main"]) == 1
    assert "pins revision" in capsys.readouterr().err
    assert main(["-q", "push", str(decomposed), "--namespace", DEFAULT_USER]) == 0
    assert capsys.readouterr().out.count("(unchanged)") == len(LABELS)

    # Decompose a parent from the Hub and push its modules under a custom template.
    parent_repo = f"{DEFAULT_USER}/cli-parent"
    assert main(["-q", "push-parent", str(parent_dir), parent_repo]) == 0
    training_data().to_parquet(str(tmp_path / "train.parquet"))
    arguments = ["-q", "decompose", parent_repo, "--dataset", str(tmp_path / "train.parquet")]
    arguments += ["--samples-per-class", "8", "--output", str(tmp_path / "out"), "--push-to", DEFAULT_USER]
    assert main([*arguments, "--name-template", "{parent_name}-{label}"]) == 0
    out = capsys.readouterr().out
    for label in LABELS:
        repo_id = f"{DEFAULT_USER}/cli-parent-{label}"
        assert repo_id in out
        card = ModelCard.load(repo_id)
        assert card.data.base_model == parent_repo
        assert f"`{HfApi().repo_info(parent_repo).sha}`" in card.text
        assert hf_modular.load_module(repo_id).config.provenance.parent.repo_id == parent_repo
    # The same decomposition again finds its repos holding the modules it builds (the check before it runs agrees
    # with what it builds); one with other parameters is refused before anything is decomposed.
    again = ["-q", "decompose", parent_repo, "--dataset", str(tmp_path / "train.parquet"), "--samples-per-class", "8"]
    again += ["--push-to", DEFAULT_USER, "--name-template", "{parent_name}-{label}"]
    assert main([*again, "--output", str(tmp_path / "again")]) == 0  # a new commit each: new timings
    assert capsys.readouterr().out.count(f" {DEFAULT_USER}/cli-parent-") == len(LABELS)
    assert main([*again, "--output", str(tmp_path / "quick"), "--seed", "1"]) == 1
    err = capsys.readouterr().err
    assert "holds another module than this decomposition pushes there: sampling seed 0 there, 1 in this" in err
    named = re.findall(rf"{DEFAULT_USER}/cli-parent-[a-z]+", err.partition(". Nothing")[0])  # every repo, at once
    assert sorted(named) == sorted(f"{DEFAULT_USER}/cli-parent-{label}" for label in LABELS)
    advice = (
        f"push {tmp_path / 'quick'} --namespace {DEFAULT_USER} --overwrite --name-template '{{parent_name}}-{{label}}'"
    )
    assert "Nothing was decomposed" in err and advice in err  # the same repos, when the advice is followed
    assert not (tmp_path / "quick").exists()
    # A module never replaces the parent: that refusal offers other names only.
    assert main([*again, "--output", str(tmp_path / "over"), "--classes", "dark", "--name-template", "cli-parent"]) == 1
    err = capsys.readouterr().err
    assert f"{parent_repo} holds a model that is not a class module (a parent or a composition)" in err
    assert "--overwrite" not in err and "Push under other repo names" in err
    # A repo of another library's files is not mixed into unasked; the advice says how to.
    HfApi().create_repo(f"{DEFAULT_USER}/keras-dark")
    HfApi().upload_file(path_or_fileobj=b"mine\n", path_in_repo="model.keras", repo_id=f"{DEFAULT_USER}/keras-dark")
    assert main([*again, "--output", str(tmp_path / "notes"), "--name-template", "keras-{label}"]) == 1
    err = capsys.readouterr().err
    assert "keras-dark holds files that are not a model of ours (model.keras), where this decomposition would" in err
    assert (
        "To push the modules there all the same (its files stay beside them), decompose without --push-to" in err
        and "--overwrite" in err
    )

    # A push to a namespace the user cannot write, or spelled otherwise: one error line, exit status 1.
    assert main(["-q", "push", str(decomposed), "--namespace", "someone-else"]) == 1
    err = capsys.readouterr().err
    assert "hf-modular push: error: Cannot push to someone-else: the token is user's" in err and "hf auth login" in err
    assert DEFAULT_TOKEN not in err
    assert main(["-q", "push", str(decomposed), "--namespace", DEFAULT_USER.upper()]) == 1
    assert f"The Hub spells the namespace 'USER' as '{DEFAULT_USER}'" in capsys.readouterr().err
    assert main(["-q", "push-parent", str(parent_dir), "USER/the-parent"]) == 1
    assert f"The Hub spells the namespace 'USER' as '{DEFAULT_USER}'" in capsys.readouterr().err

    # `card` writes README.md for a directory, naming the repo when given.
    directory = tmp_path / "carded"
    shutil.copytree(decomposed / "dark-module", directory)
    (directory / "README.md").unlink()
    assert main(["card", str(directory)]) == 0
    assert (directory / "README.md").is_file() and str(directory / "README.md") in capsys.readouterr().out
    assert main(["card", str(directory), "--repo-id", "org/dark-module"]) == 0
    readme = (directory / "README.md").read_text()
    assert 'from_pretrained("org/dark-module")' in readme and ModelCard(readme).data.library_name == "hf_modular"
    shutil.copytree(parent_dir, tmp_path / "parent")  # the module-scoped parent directory is shared
    assert main(["card", str(tmp_path / "parent"), "--repo-id", "org/parent"]) == 0
    readme = (tmp_path / "parent" / "README.md").read_text()
    assert 'from_pretrained("org/parent")' in readme and "| Classes | 3: dark, bright, mid |" in readme


def test_masks_travel_in_the_pushed_safetensors(hub_server: HubServer, modules) -> None:
    repo_id = f"{DEFAULT_USER}/masks-module"
    modules["dark"].push_to_hub(repo_id)
    tensors = load_file(HfApi().hf_hub_download(repo_id, "model.safetensors"))
    masks = {key: value for key, value in tensors.items() if key.endswith(".mask")}
    expected = {f"{site}.mask" for site in modules["dark"].config.mask_shapes}
    assert set(masks) == expected and all(value.dtype == torch.bool for value in masks.values())
    for key, value in masks.items():
        assert torch.equal(value, modules["dark"].state_dict()[key])


def test_push_takes_transformers_options_and_save_pretrained_pushes(
    hub_server: HubServer, modules, pixel_values, tmp_path: Path
) -> None:
    repo_id = f"{DEFAULT_USER}/dark-sharded"
    modules["dark"].push_to_hub(
        repo_id, commit_message="First module", commit_description="Why: a test", tags=["cifar10"], max_shard_size="2KB"
    )
    api = HfApi()
    files = api.list_repo_files(repo_id)
    assert "model.safetensors.index.json" in files and "model.safetensors" not in files
    assert sum(name.startswith("model-") for name in files) > 1
    loaded = ModularResNetForImageClassification.from_pretrained(repo_id).eval()
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values).logits, modules["dark"].eval()(pixel_values).logits)
    assert "cifar10" in ModelCard.load(repo_id).data.tags
    commit = api.list_repo_commits(repo_id)[0]
    assert commit.title == "First module" and "Why: a test" in commit.message

    target = f"{DEFAULT_USER}/dark-saved"
    modules["dark"].save_pretrained(tmp_path / "dark-saved", push_to_hub=True, repo_id=target, private=True)
    assert (tmp_path / "dark-saved" / "model.safetensors").is_file()
    assert api.file_exists(target, "model.safetensors") and api.repo_info(target).private


def test_module_card_model_index_names_a_hub_dataset_and_its_revision(modules) -> None:
    config = copy.deepcopy(modules["dark"].config)
    info = config.provenance
    info.dataset.name_or_path, info.dataset.revision = "someone/greys", "0123abcd"
    info.evaluation = {**info.evaluation, "dataset": "someone/greys"}
    config.provenance = info
    card = module_card(config, "user/dark-module", license="apache-2.0")
    results = {r.metric_name: r for r in card.data.eval_results}
    accuracy = results["Own-vs-rest accuracy (dark vs rest)"]
    assert accuracy.dataset_type == "someone/greys" and accuracy.dataset_revision == "0123abcd"
    assert not any("top-1" in name or "Parent" in name for name in results)  # the module's own results only
    assert card.data.datasets == ["someone/greys"] and "model-index" in card.content


@pytest.mark.parametrize("verbosity", [[], ["-v"]])
def test_the_cli_never_prints_a_token_or_a_signed_url(
    hub_server: HubServer, decomposed: Path, capfd, verbosity
) -> None:
    """At INFO the HTTP client logs every request; the CLI keeps it at WARNING, in -v too."""
    threshold, hub_server.lfs_threshold = hub_server.lfs_threshold, 1  # the weights go through signed LFS URLs
    try:
        for _ in range(2):  # the second push changes nothing: no library notice about an empty commit either
            assert main([*verbosity, "push", str(decomposed), "--namespace", DEFAULT_USER, "--name-template",
                         f"secrets{len(verbosity)}-{{label}}"]) == 0  # fmt: skip
    finally:
        hub_server.lfs_threshold = threshold
    out, err = capfd.readouterr()
    printed = out + err
    assert "lfs-upload" in "".join(path for _, path in hub_server.requests)  # signed URLs were used...
    assert "sig=" not in printed and "lfs-upload" not in printed and DEFAULT_TOKEN not in printed  # ...never shown
    assert "(unchanged)" in out
    if not verbosity:
        assert "No files have been modified" not in printed


def test_remote_code_lets_plain_transformers_load_a_module_or_say_what_to_install(
    hub_server: HubServer, decomposed: Path, tmp_path: Path
) -> None:
    """Opt-in `remote_code=True`: `auto_map` and one-line files that import hf_modular. Without hf_modular, transformers
    itself says to install it; with it, no `import hf_modular` is needed."""
    push_directory(decomposed / "dark-module", f"{DEFAULT_USER}/remote-dark", remote_code=True)
    pixel_values = torch.rand(2, 3, 8, 8)
    torch.save(pixel_values, tmp_path / "pixels.pt")
    script = (
        "import sys, torch\n"
        "if sys.argv[1] == 'hidden':  # as if hf_modular were not installed: drop its editable-install finder\n"
        "    sys.meta_path = [f for f in sys.meta_path if 'hf_modular' not in getattr(f, '__module__', '')]\n"
        "from transformers import AutoModelForImageClassification\n"
        f"model = AutoModelForImageClassification.from_pretrained('{DEFAULT_USER}/remote-dark',\n"
        "                                                         trust_remote_code=True)\n"
        f"torch.save(model.eval()(torch.load({str(tmp_path / 'pixels.pt')!r})).logits, {str(tmp_path / 'out.pt')!r})\n"
    )
    env = {**os.environ, **client_env(hub_server.url, hub_server.hf_home)}
    env.pop("PYTHONPATH", None)
    run = [sys.executable, "-c", script]
    missing = subprocess.run([*run, "hidden"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "pip install hf_modular" in missing.stderr, missing.stderr[-2000:]
    loaded = subprocess.run([*run, "installed"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    expected = hf_modular.load_module(decomposed / "dark-module").eval()(pixel_values).logits
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)
    # Pushed again without the option, the repo drops the code files along with the config's auto_map.
    push_directory(decomposed / "dark-module", f"{DEFAULT_USER}/remote-dark")
    files = HfApi().list_repo_files(f"{DEFAULT_USER}/remote-dark")
    assert not any(name.endswith(".py") for name in files), files
