"""Tests of the test Hub server (tests/hub_server.py), driven by the real huggingface_hub client only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    ModelCard,
    ModelCardData,
    constants,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import _http, httpx

from tests.hub_server import DEFAULT_USER, HubServer, git_blob_sha1, hub_server_fixture  # noqa: F401

REPO = f"{DEFAULT_USER}/demo"
WEIGHTS = bytes(range(256)) * 64  # binary content, 16 KiB
CONFIG = {"hidden_size": 8, "num_labels": 3}
README = "---\nlicense: mit\ntags:\n- test\n---\n# Demo model\n"
OTHER_TOKEN = "hf_token_for_someone_else"


def write_model_folder(folder: Path, config: dict | None = None, weights: bytes = WEIGHTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text(json.dumps(config or CONFIG))
    (folder / "README.md").write_text(README)
    return folder


def commits(api: HfApi, revision: str = "main") -> list[str]:
    return [c.commit_id for c in api.list_repo_commits(REPO, revision=revision)]


def count(server: HubServer, method: str, fragment: str) -> int:
    return sum(1 for m, path in server.requests if m == method and fragment in path)


@pytest.fixture
def pushed(hub_server: HubServer, tmp_path: Path) -> HfApi:
    """A repo with one upload commit on top of the Hub's "initial commit"."""
    api = HfApi()
    api.create_repo(REPO)
    api.upload_folder(repo_id=REPO, folder_path=write_model_folder(tmp_path / "v1"), commit_message="v1")
    return api


def test_create_repo_and_whoami(hub_server: HubServer) -> None:
    api = HfApi()
    assert api.whoami()["name"] == DEFAULT_USER

    url = api.create_repo("demo")  # no namespace: the token's user
    assert url.repo_id == REPO and url.startswith(hub_server.url)
    info = api.repo_info(REPO)
    assert [s.rfilename for s in info.siblings] == [".gitattributes"]  # like the Hub: an "initial commit"
    assert len(info.sha) == 40 and info.private is False

    with pytest.raises(HfHubHTTPError) as exc:
        api.create_repo(REPO)
    assert exc.value.response.status_code == 409
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    assert api.repo_exists(REPO) and not api.repo_exists(f"{DEFAULT_USER}/nope")


def test_upload_folder_is_one_commit_with_lfs(pushed: HfApi, hub_server: HubServer) -> None:
    history = pushed.list_repo_commits(REPO)
    assert [c.title for c in history] == ["v1", "initial commit"]
    assert count(hub_server, "POST", "/commit/") == 1 and count(hub_server, "PUT", "/lfs-upload/") == 1

    tree = {f.path: f for f in pushed.list_repo_tree(REPO, recursive=True)}
    assert sorted(tree) == [".gitattributes", "README.md", "config.json", "model.safetensors"]
    weights = tree["model.safetensors"]
    assert weights.lfs is not None and weights.lfs.size == len(WEIGHTS) and weights.size == len(WEIGHTS)
    assert tree["config.json"].lfs is None
    assert tree["config.json"].blob_id == git_blob_sha1(json.dumps(CONFIG).encode())

    info = pushed.model_info(REPO, files_metadata=True)
    assert info.sha == history[0].commit_id
    assert info.card_data.license == "mit" and info.tags == ["test"]
    assert {s.rfilename: s.size for s in info.siblings}["model.safetensors"] == len(WEIGHTS)
    assert pushed.file_exists(REPO, "config.json") and not pushed.file_exists(REPO, "missing.json")


def test_unchanged_reupload_makes_no_commit_and_a_change_makes_one(
    pushed: HfApi, hub_server: HubServer, tmp_path: Path
) -> None:
    before = commits(pushed)
    hub_server.requests.clear()

    # The client learns the remote oids from /preupload and drops unchanged files: nothing left => no commit.
    info = pushed.upload_folder(repo_id=REPO, folder_path=write_model_folder(tmp_path / "same"))
    assert commits(pushed) == before and info.oid == before[0]
    assert count(hub_server, "POST", "/commit/") == 0 and count(hub_server, "PUT", "/lfs-upload/") == 0

    changed = write_model_folder(tmp_path / "v2", config={**CONFIG, "num_labels": 5})
    pushed.upload_folder(repo_id=REPO, folder_path=changed, commit_message="v2")
    after = commits(pushed)
    assert len(after) == len(before) + 1 and after[1:] == before
    assert count(hub_server, "POST", "/commit/") == 1
    assert count(hub_server, "PUT", "/lfs-upload/") == 0  # the weights did not change


def test_download_by_branch_and_pinned_commit(pushed: HfApi, tmp_path: Path) -> None:
    v1 = commits(pushed)[0]
    pushed.upload_folder(
        repo_id=REPO,
        folder_path=write_model_folder(tmp_path / "v2", {"v": 2}, weights=WEIGHTS[::-1]),
        commit_message="v2",
    )

    assert json.loads(Path(hf_hub_download(REPO, "config.json")).read_text()) == {"v": 2}
    assert json.loads(Path(hf_hub_download(REPO, "config.json", revision=v1)).read_text()) == CONFIG
    old = Path(snapshot_download(REPO, revision=v1))
    new = Path(snapshot_download(REPO))
    assert old.name == v1 and (old / "model.safetensors").read_bytes() == WEIGHTS
    assert (new / "model.safetensors").read_bytes() == WEIGHTS[::-1]
    assert json.loads((new / "config.json").read_text()) == {"v": 2}
    # The cache names blobs after the ETag: the sha256 for LFS files, as with the real Hub.
    lfs_blob = (old / "model.safetensors").resolve()
    assert lfs_blob.name == pushed.get_paths_info(REPO, ["model.safetensors"], revision=v1)[0].lfs.sha256

    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "missing.bin")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="no-such-branch")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"{DEFAULT_USER}/missing", "config.json")


def test_private_repo_is_invisible_without_the_owners_token(hub_server: HubServer, tmp_path: Path) -> None:
    hub_server.tokens[OTHER_TOKEN] = "other"
    api = HfApi()
    api.create_repo(REPO, private=True)
    api.upload_folder(repo_id=REPO, folder_path=write_model_folder(tmp_path / "m"))
    assert api.repo_info(REPO).private is True

    for token in (False, OTHER_TOKEN):  # anonymous (401) and authenticated stranger (404): both "not found"
        with pytest.raises(RepositoryNotFoundError):
            api.repo_info(REPO, token=token)
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download(REPO, "config.json", token=token, cache_dir=tmp_path / f"cache-{token}")
    assert hf_hub_download(REPO, "config.json")  # the owner (default token) can


def test_auth_errors_on_foreign_namespace(hub_server: HubServer) -> None:
    hub_server.tokens[OTHER_TOKEN] = "other"
    api = HfApi()
    api.create_repo(REPO)

    with pytest.raises(HfHubHTTPError) as exc:
        api.create_repo(REPO.replace(DEFAULT_USER, "someone"), token=OTHER_TOKEN)
    assert exc.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as exc:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO, token=OTHER_TOKEN)
    assert exc.value.response.status_code == 403 and "create_pr" in str(exc.value)
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_repo("anonymous-repo", token=False)
    assert exc.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as exc:  # unknown token: 401, and not disguised as "repo not found"
        api.repo_info(REPO, token="hf_wrong")
    assert exc.value.response.status_code == 401 and not isinstance(exc.value, RepositoryNotFoundError)

    # A stranger can still open a pull request; main is untouched until it is merged.
    main_before = commits(api)
    pr = api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO, token=OTHER_TOKEN, create_pr=True)
    assert pr.pr_num == 1 and commits(api) == main_before
    assert Path(hf_hub_download(REPO, "x.txt", revision=pr.pr_revision)).read_bytes() == b"x"
    assert [ref.ref for ref in api.list_repo_refs(REPO, include_pull_requests=True).pull_requests] == ["refs/pr/1"]


def test_dropped_commit_leaves_the_repo_unchanged(pushed: HfApi, hub_server: HubServer, tmp_path: Path) -> None:
    before = commits(pushed)
    folder = write_model_folder(tmp_path / "v2", {"v": 2}, weights=WEIGHTS[::-1])

    hub_server.fail_next_commit = True  # the client does not retry commits: the push fails
    with pytest.raises(httpx.TransportError):
        pushed.upload_folder(repo_id=REPO, folder_path=folder, commit_message="v2")
    assert commits(pushed) == before
    assert json.loads(Path(hf_hub_download(REPO, "config.json")).read_text()) == CONFIG

    pushed.upload_folder(repo_id=REPO, folder_path=folder, commit_message="v2")  # a retry just works
    assert commits(pushed)[1:] == before
    assert Path(hf_hub_download(REPO, "model.safetensors")).read_bytes() == WEIGHTS[::-1]


def test_dropped_lfs_upload_is_retried_by_the_client(pushed: HfApi, hub_server: HubServer, tmp_path: Path) -> None:
    before = commits(pushed)
    hub_server.fail_next_upload = True
    pushed.upload_folder(repo_id=REPO, folder_path=write_model_folder(tmp_path / "v2", weights=WEIGHTS[::-1]))
    assert count(hub_server, "PUT", "/lfs-upload/") == 3  # v1, then the cut upload and its retry
    assert len(commits(pushed)) == len(before) + 1
    assert Path(hf_hub_download(REPO, "model.safetensors")).read_bytes() == WEIGHTS[::-1]


def test_lfs_upload_failing_for_good_commits_nothing(
    pushed: HfApi, hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Skip the client's backoff sleeps (1+2+4+8+8 s): only the waiting is patched, not the retry logic.
    monkeypatch.setattr(_http, "time", types.SimpleNamespace(sleep=lambda _: None))
    before = commits(pushed)
    hub_server.fail_uploads = 100
    with pytest.raises(RuntimeError, match="Error while uploading 'model.safetensors'"):
        pushed.upload_folder(repo_id=REPO, folder_path=write_model_folder(tmp_path / "v2", {"v": 2}, WEIGHTS[::-1]))
    assert count(hub_server, "PUT", "/lfs-upload/") == 1 + 6  # v1, then 1 try + 5 retries
    assert count(hub_server, "POST", "/commit/") == 1  # only v1's: the config change was not committed either
    assert commits(pushed) == before


def test_commit_operations_parent_commit_and_history(pushed: HfApi) -> None:
    head = commits(pushed)[0]
    pushed.create_commit(
        REPO,
        operations=[
            CommitOperationAdd("sub/dir/a.txt", b"a"),
            CommitOperationAdd("sub/b.txt", b"b"),
            CommitOperationDelete("README.md"),
        ],
        commit_message="reorganize",
        parent_commit=head,
    )
    assert sorted(pushed.list_repo_files(REPO)) == [
        ".gitattributes",
        "config.json",
        "model.safetensors",
        "sub/b.txt",
        "sub/dir/a.txt",
    ]
    top = {f.path: type(f).__name__ for f in pushed.list_repo_tree(REPO, path_in_repo="sub")}
    assert top == {"sub/dir": "RepoFolder", "sub/b.txt": "RepoFile"}

    with pytest.raises(HfHubHTTPError) as exc:  # the branch moved since `head`
        pushed.create_commit(REPO, [CommitOperationAdd("c.txt", b"c")], commit_message="stale", parent_commit=head)
    assert exc.value.response.status_code == 412
    with pytest.raises(EntryNotFoundError):
        pushed.create_commit(REPO, [CommitOperationDelete("nope.txt")], commit_message="delete missing")
    assert [c.title for c in pushed.list_repo_commits(REPO)] == ["reorganize", "v1", "initial commit"]


def test_offline_reload_from_cache(pushed: HfApi, hub_server: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = snapshot_download(REPO)
    config = hf_hub_download(REPO, "config.json")
    hub_server.stop()  # nothing to talk to any more

    # In-process: HF_HUB_OFFLINE is read through `constants` at call time, so patching the constant is enough.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert snapshot_download(REPO) == snapshot
    assert hf_hub_download(REPO, "config.json") == config
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, "never-downloaded.txt")

    # A fresh process configured by environment only (the fixture exported HF_HOME, HF_ENDPOINT...).
    code = f"from huggingface_hub import snapshot_download; print(snapshot_download({REPO!r}))"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == snapshot


def test_model_card_round_trip(hub_server: HubServer) -> None:
    HfApi().create_repo(REPO)
    data = ModelCardData(license="apache-2.0", tags=["vision", "modular"], library_name="transformers")
    card = ModelCard.from_template(data, model_description="A card pushed to the test hub.")
    card.validate()
    card.push_to_hub(REPO, commit_message="Add card")

    loaded = ModelCard.load(REPO)
    assert loaded.data.license == "apache-2.0" and loaded.data.tags == ["vision", "modular"]
    assert "A card pushed to the test hub." in loaded.text
    assert HfApi().model_info(REPO).card_data.library_name == "transformers"
    # create_commit validates README metadata through /api/validate-yaml before uploading anything.
    bad_readme = CommitOperationAdd("README.md", b"---\nlicense: [unclosed\n---\ntext")
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        HfApi().create_commit(REPO, [bad_readme], commit_message="bad card")


def test_transformers_push_and_from_pretrained(hub_server: HubServer) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8
    )
    model = transformers.BertModel(config)
    model.push_to_hub("tiny-bert")  # no namespace: resolved to the token's user by create_repo
    reloaded = transformers.BertModel.from_pretrained(f"{DEFAULT_USER}/tiny-bert")
    for name, tensor in model.state_dict().items():
        assert (reloaded.state_dict()[name] == tensor).all(), name
    assert "model.safetensors" in HfApi().list_repo_files(f"{DEFAULT_USER}/tiny-bert")


def test_timm_push_and_create_model(hub_server: HubServer) -> None:
    timm = pytest.importorskip("timm")
    from timm.models import push_to_hf_hub

    model = timm.create_model("test_resnet", num_classes=3)
    push_to_hf_hub(model, f"{DEFAULT_USER}/tiny-timm")
    reloaded = timm.create_model(f"hf-hub:{DEFAULT_USER}/tiny-timm", pretrained=True)
    for name, tensor in model.state_dict().items():
        assert (reloaded.state_dict()[name] == tensor).all(), name
