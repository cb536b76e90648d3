"""A small Hugging Face Hub-compatible HTTP server for tests.

The real `huggingface_hub` client (and transformers / timm on top of it) talks to this server over HTTP, exactly as it
talks to huggingface.co: nothing in the client is mocked. The server implements the subset of the Hub protocol that
pushing and downloading models needs (see `HubServer._routes` for the list), stores everything on disk under a root
directory, and has a few knobs to inject faults (auth failures, dropped connections).

Usage in a test module (or in `tests/conftest.py`)::

    from tests.hub_server import hub_server_fixture  # noqa: F401  (registers the `hub_server` fixture)

    def test_push(hub_server):
        api = HfApi()  # endpoint, token and cache already point at the server
        api.create_repo("user/demo")

Pointing an already-imported client at the server
-------------------------------------------------
`huggingface_hub` reads HF_ENDPOINT, HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE and HF_HUB_DISABLE_XET once, when
`huggingface_hub.constants` is imported. Setting the env vars inside a test is therefore too late, and setting them
before the first import is fragile (the port is only known once the server is bound, and conftest files or other
tests may import transformers first). But the library reads the *attributes* of `huggingface_hub.constants` at call
time (`hf_hub_download`, `snapshot_download`, `HfApi()`, `is_offline_mode()`, `is_xet_available()`, `get_token()`
via `HF_TOKEN_PATH`...), so `use_hub_server()` patches those attributes with pytest's `monkeypatch` (undone after
the test). Two objects copy the endpoint when they are built and are patched too:

* `huggingface_hub.hf_api.api`, the module-level `HfApi` behind the functions `huggingface_hub.upload_file`,
  `model_info`, `create_repo`... (used by `ModelCard.push_to_hub` and timm);
* transformers' shared `HfApi` (`transformers.utils.hub._hf_api`), reset to None so it is rebuilt on next use
  (fsspec's cached `HfFileSystem` instances are dropped for the same reason).

The env vars are exported as well, so a subprocess started by a test (e.g. one run with HF_HUB_OFFLINE=1) is
configured from the start. HF_HUB_DISABLE_XET must be on: with `hf_xet` installed the client would otherwise upload
through the Xet protocol, which this server does not implement; it uses the classic LFS batch API instead.

Storage layout under `root`::

    blobs/<git-sha1>                     content of regular (non-LFS) files
    lfs/<sha256>                         LFS objects
    tmp/                                 LFS uploads in progress
    repos/<type>s/<namespace>/<name>.json  repo metadata: branches, PR refs, commits (each with its full file table)

A commit is all-or-nothing: file contents are written first (content-addressed, so orphans are invisible), then the
new commit and the branch move are applied in memory under a lock and the repo file is replaced atomically.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import socket
import sys
import tempfile
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

try:  # PyYAML is a dependency of huggingface_hub; without it README metadata is simply not parsed.
    import yaml
except ImportError:  # pragma: no cover
    yaml = None

logger = logging.getLogger(__name__)

DEFAULT_USER = "user"
DEFAULT_TOKEN = "hf_test_token_for_user"

# Files above this size must go through LFS (same limit as the Hub).
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024

# What the Hub puts in the `.gitattributes` of a new repo ("initial commit"): decides which files are LFS.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy *.npz"
        " *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors saved_model/**/* *.tar.* *.tar"
        " *.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents*"
    ).split()
)

# URL segment <-> repo type. Models have no prefix in web URLs ("/user/name/resolve/..."), the others do.
API_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}

_REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


# --------------------------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------------------------


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob: what the Hub calls the `oid`/`blobId` of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The small text file that git stores in place of an LFS object."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def now_iso() -> str:
    """A timestamp in the format the Hub uses (and `huggingface_hub.utils.parse_datetime` expects)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_front_matter(readme: str) -> tuple[dict[str, Any] | None, str | None]:
    """Return (metadata, error) for the YAML block at the top of a README; (None, None) when there is none."""
    match = re.match(r"^\s*---\r?\n(.*?)\r?\n---\s*(\r?\n|$)", readme, flags=re.DOTALL)
    if match is None or yaml is None:
        return None, None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        return None, f"Invalid YAML in README.md metadata: {exc}"
    if data is None:
        return {}, None
    if not isinstance(data, dict):
        return None, "README.md metadata must be a YAML mapping"
    return data, None


def lfs_patterns(gitattributes: str) -> list[str]:
    """Patterns marked `filter=lfs` in a .gitattributes file."""
    patterns = []
    for line in gitattributes.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def matches_any(path: str, patterns: list[str]) -> bool:
    """Approximate gitattributes/gitignore matching: patterns without '/' apply to the file name."""
    name = path.rsplit("/", 1)[-1]
    for pattern in patterns:
        pattern = pattern.lstrip("/")
        target = path if "/" in pattern else name
        if fnmatch.fnmatchcase(target, pattern.replace("**/", "*")):
            return True
    return False


def is_binary(sample: bytes) -> bool:
    """Same spirit as the Hub's check: a NUL byte in the first bytes means binary content (which must be LFS)."""
    return b"\0" in sample[:512]


# --------------------------------------------------------------------------------------------------------------------
# Errors and responses
# --------------------------------------------------------------------------------------------------------------------


class HubError(Exception):
    """An error answered the way the Hub does: JSON `{"error": ...}` plus `X-Error-Code`/`X-Error-Message` headers.

    `huggingface_hub.utils.hf_raise_for_status` maps X-Error-Code to RepositoryNotFoundError, RevisionNotFoundError,
    RemoteEntryNotFoundError...; the message ends up in the client exception's text.
    """

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.body = body or {}  # extra JSON fields next to "error"

    def to_response(self) -> Response:
        headers = {"X-Error-Message": self.message, **self.headers}
        if self.code:
            headers["X-Error-Code"] = self.code
        return Response.json({"error": self.message, **self.body}, status=self.status, headers=headers)


def repo_not_found(anonymous: bool) -> HubError:
    # Like the Hub: unknown and inaccessible private repos look the same; anonymous callers get 401, others 404.
    return HubError(401 if anonymous else 404, "Repository not found", code="RepoNotFound")


def revision_not_found(revision: str) -> HubError:
    return HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")


def entry_not_found(commit_id: str | None = None, message: str = "Entry not found") -> HubError:
    # X-Repo-Commit lets the client cache the non-existence of the file for this commit (`.no_exist` folder).
    headers = {"X-Repo-Commit": commit_id} if commit_id else {}
    return HubError(404, message, code="EntryNotFound", headers=headers)


class DropConnection(Exception):
    """Raised by a route to make the server hang up without answering (fault injection)."""


@dataclass
class Response:
    status: int = 200
    body: bytes | Path = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Inclusive byte range of `body` to send (HTTP Range requests); None = everything.
    byte_range: tuple[int, int] | None = None

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return cls(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})


# --------------------------------------------------------------------------------------------------------------------
# Repo model
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit. `oid` is the git blob id (of the LFS pointer for LFS files), as the Hub reports it."""

    size: int
    oid: str
    sha256: str | None = None  # set for LFS files

    @property
    def etag(self) -> str:
        return self.sha256 or self.oid

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "oid": self.oid, "sha256": self.sha256}


@dataclass(frozen=True)
class Commit:
    id: str
    parents: list[str]
    title: str
    message: str
    author: str
    date: str
    files: dict[str, FileEntry]

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "files"}
        return {**data, "files": {path: entry.to_json() for path, entry in self.files.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Commit:
        files = {path: FileEntry(**entry) for path, entry in data["files"].items()}
        return cls(**{**data, "files": files})


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)  # branch name -> commit id
    pull_requests: dict[int, str] = field(default_factory=dict)  # PR number -> head commit id (refs/pr/<n>)
    commits: dict[str, Commit] = field(default_factory=dict)  # never mutated: commits are immutable

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]

    def ref_head(self, ref: str) -> str | None:
        """Commit id a writable ref (branch or PR) points to; None if `ref` is not one."""
        if ref.startswith("refs/heads/"):
            ref = ref[len("refs/heads/") :]
        if match := re.fullmatch(r"refs/pr/(\d+)", ref):
            return self.pull_requests.get(int(match.group(1)))
        return self.branches.get(ref)

    def resolve(self, revision: str) -> Commit:
        """A branch, `refs/heads/<branch>`, `refs/pr/<n>` or full commit id -> commit (RevisionNotFound otherwise)."""
        commit_id = self.ref_head(revision)
        if commit_id is None and revision in self.commits:
            commit_id = revision
        if commit_id is None:
            raise revision_not_found(revision)
        return self.commits[commit_id]

    def history(self, commit: Commit) -> Iterator[Commit]:
        """The commit and its first-parent ancestors, newest first."""
        current: Commit | None = commit
        while current is not None:
            yield current
            current = self.commits[current.parents[0]] if current.parents else None

    def to_json(self) -> dict[str, Any]:
        return {
            "repo_type": self.repo_type,
            "repo_id": self.repo_id,
            "private": self.private,
            "created_at": self.created_at,
            "branches": self.branches,
            "pull_requests": {str(k): v for k, v in self.pull_requests.items()},
            "commits": {cid: commit.to_json() for cid, commit in self.commits.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Repo:
        return cls(
            repo_type=data["repo_type"],
            repo_id=data["repo_id"],
            private=data["private"],
            created_at=data["created_at"],
            branches=data["branches"],
            pull_requests={int(k): v for k, v in data["pull_requests"].items()},
            commits={cid: Commit.from_json(c) for cid, c in data["commits"].items()},
        )


class Storage:
    """Files on disk (content-addressed) and repo metadata (one JSON file per repo, replaced atomically)."""

    def __init__(self, root: Path):
        self.root = root
        for sub in ("blobs", "lfs", "tmp", "repos"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.repos: dict[tuple[str, str], Repo] = {}
        for path in (root / "repos").glob("*/*/*.json"):  # resume from a previous server on the same root
            repo = Repo.from_json(json.loads(path.read_text()))
            self.repos[(repo.repo_type, repo.repo_id)] = repo

    def _repo_file(self, repo: Repo) -> Path:
        return self.root / "repos" / f"{repo.repo_type}s" / f"{repo.repo_id}.json"

    def save(self, repo: Repo) -> None:
        path = self._repo_file(repo)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(repo.to_json()))
        os.replace(tmp, path)  # readers of the file never see a half-written state

    def delete(self, repo: Repo) -> None:
        self._repo_file(repo).unlink(missing_ok=True)

    def put_blob(self, data: bytes) -> str:
        oid = git_blob_sha1(data)
        path = self.blob_path(oid)
        if not path.exists():
            self._write_atomic(path, data)
        return oid

    def blob_path(self, oid: str) -> Path:
        return self.root / "blobs" / oid

    def lfs_path(self, sha256: str) -> Path:
        return self.root / "lfs" / sha256

    def has_lfs(self, sha256: str, size: int | None = None) -> bool:
        path = self.lfs_path(sha256)
        return path.is_file() and (size is None or path.stat().st_size == size)

    def ingest_lfs(self, chunks: Iterator[bytes], sha256: str, size: int) -> None:
        """Store an uploaded LFS object, refusing it unless its content matches the announced sha256 and size."""
        hasher, received = hashlib.sha256(), 0
        fd, tmp_name = tempfile.mkstemp(dir=self.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as tmp:
                for chunk in chunks:
                    hasher.update(chunk)
                    received += len(chunk)
                    tmp.write(chunk)
            if received != size or hasher.hexdigest() != sha256:
                raise HubError(400, f"Uploaded content does not match oid {sha256} / size {size}")
            os.replace(tmp_name, self.lfs_path(sha256))
        finally:
            with suppress(FileNotFoundError):
                os.unlink(tmp_name)

    def read(self, entry: FileEntry) -> bytes:
        return self.path_of(entry).read_bytes()

    def path_of(self, entry: FileEntry) -> Path:
        return self.lfs_path(entry.sha256) if entry.sha256 else self.blob_path(entry.oid)

    def _write_atomic(self, path: Path, data: bytes) -> None:
        fd, tmp_name = tempfile.mkstemp(dir=self.root / "tmp")
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
        os.replace(tmp_name, path)


# --------------------------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------------------------


class BodyReader:
    """Reads a request body framed by Content-Length or chunked transfer encoding, lazily."""

    def __init__(self, rfile: Any, headers: Message):
        self._rfile = rfile
        self.chunked = "chunked" in (headers.get("Transfer-Encoding") or "").lower()
        self.length = None if self.chunked else int(headers.get("Content-Length") or 0)
        self._remaining = self.length or 0  # bytes left in the body (or in the current chunk if chunked)
        self._in_chunk = False  # chunked: whether a chunk was started (its closing CRLF is still to be read)
        self.done = not self.chunked and self._remaining == 0

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (everything if -1); b"" at the end of the body."""
        out = bytearray()
        while not self.done and (size < 0 or len(out) < size):
            if self._remaining == 0 and self.chunked and not self._next_chunk():
                break
            want = self._remaining if size < 0 else min(self._remaining, size - len(out))
            data = self._rfile.read(want)
            if not data:
                raise ConnectionError("client closed the connection mid-body")
            out += data
            self._remaining -= len(data)
            if self._remaining == 0 and not self.chunked:
                self.done = True
        return bytes(out)

    def iter_chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        while chunk := self.read(size):
            yield chunk

    def _next_chunk(self) -> bool:
        if self._in_chunk:
            self._rfile.readline()  # CRLF closing the previous chunk
        line = self._rfile.readline().split(b";")[0].strip()
        self._remaining = int(line or b"0", 16)
        self._in_chunk = True
        if self._remaining == 0:
            while self._rfile.readline().strip():  # trailers
                pass
            self.done = True
            return False
        return True


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: BodyReader
    base_url: str
    params: dict[str, str] = field(default_factory=dict)  # groups of the route regex, percent-decoded
    user: str | None = None
    token: str | None = None

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        return (self.arg(name) or "").lower() in ("1", "true", "yes")

    def json(self) -> Any:
        raw = self.body.read()
        try:
            return json.loads(raw or b"{}")
        except ValueError as exc:
            raise HubError(400, f"Invalid JSON body: {exc}") from exc

    def repo_key(self) -> tuple[str, str]:
        """(repo type, repo id) from the route, for both `/api/<type>s/...` and `/<prefix>ns/name...` URLs."""
        if "type" in self.params:
            repo_type = API_REPO_TYPES[self.params["type"]]
        else:
            repo_type = {"datasets": "dataset", "spaces": "space"}.get(self.params.get("prefix") or "", "model")
        return repo_type, f"{self.params['ns']}/{self.params['name']}"


# --------------------------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------------------------

_API_REPO = r"^/api/(?P<type>models|datasets|spaces)/(?P<ns>[^/]+)/(?P<name>[^/]+)"
_WEB_REPO = r"^/(?:(?P<prefix>datasets|spaces)/)?(?P<ns>[^/]+)/(?P<name>[^/]+?)"


class HubServer:
    """A Hub-compatible server on 127.0.0.1 (random port) storing its data under `root`.

    Knobs (plain attributes, change them at any time):
      tokens            token -> user name. Requests with another Bearer token get 401.
      read_only_tokens  tokens that may read but not write (403 on writes).
      orgs              org name -> member user names; members may write to the org's namespace.
      lfs_threshold     files at least this big are sent to LFS by `preupload` (default: 10 MiB, like the Hub).
      fail_uploads      number of upcoming LFS uploads (PUT) to cut mid-body. `fail_next_upload = True` sets it to 1.
                        The client retries LFS uploads (up to 5 times, 1s, 2s, 4s... apart), so a single drop is
                        survived; more than 5 make the push fail before any commit is sent.
      fail_next_commit  cut the next commit request mid-body (the client does not retry commits: the push fails).
      fail_commits_to   repo ids whose commit requests are all cut mid-body, as fail_next_commit does.
      lose_next_commit_answer
                        apply the next commit, then drop the connection instead of answering (the answer is lost).
    Observability: `requests` (method, path) of every request, `unhandled` requests that matched no route,
    `errors` tracebacks of internal errors (500). The `hub_server` fixture fails the test if `errors` is not empty.
    """

    def __init__(self, root: Path | str, tokens: dict[str, str] | None = None, port: int = 0):
        self.root = Path(root)
        self.port = port  # 0: any free port
        self.storage = Storage(self.root)
        self.tokens: dict[str, str] = dict(tokens) if tokens is not None else {DEFAULT_TOKEN: DEFAULT_USER}
        self.read_only_tokens: set[str] = set()
        self.orgs: dict[str, set[str]] = {}
        self.lfs_threshold = LFS_SIZE_THRESHOLD
        self.fail_uploads = 0
        self.fail_next_commit = False
        self.fail_commits_to: set[str] = set()
        self.lose_next_commit_answer = False
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.hf_home: Path | None = None  # set by the `hub_server` fixture: the client's HF_HOME (cache, token)
        self._lock = threading.RLock()  # guards repo metadata (and the fault counters)
        self._secret = secrets.token_bytes(16)  # signs the LFS upload URLs (stand-ins for S3 presigned URLs)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._routes: list[tuple[set[str], re.Pattern[str], Callable[[Request], Response]]] = [
            ({"POST"}, re.compile(r"^/api/repos/create$"), self._create_repo),
            ({"DELETE"}, re.compile(r"^/api/repos/delete$"), self._delete_repo),
            ({"GET"}, re.compile(r"^/api/whoami-v2$"), self._whoami),
            ({"POST"}, re.compile(r"^/api/validate-yaml$"), self._validate_yaml),
            ({"GET"}, re.compile(_API_REPO + r"(?:/revision/(?P<rev>[^/]+))?$"), self._repo_info),
            ({"GET"}, re.compile(_API_REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"), self._tree),
            ({"POST"}, re.compile(_API_REPO + r"/paths-info/(?P<rev>[^/]+)$"), self._paths_info),
            ({"GET"}, re.compile(_API_REPO + r"/commits/(?P<rev>[^/]+)$"), self._list_commits),
            ({"GET"}, re.compile(_API_REPO + r"/refs$"), self._list_refs),
            ({"POST"}, re.compile(_API_REPO + r"/branch/(?P<rev>[^/]+)$"), self._create_branch),
            ({"DELETE"}, re.compile(_API_REPO + r"/branch/(?P<rev>[^/]+)$"), self._delete_branch),
            ({"POST"}, re.compile(_API_REPO + r"/preupload/(?P<rev>[^/]+)$"), self._preupload),
            ({"POST"}, re.compile(_API_REPO + r"/commit/(?P<rev>[^/]+)$"), self._commit),
            ({"POST"}, re.compile(_WEB_REPO + r"\.git/info/lfs/objects/batch$"), self._lfs_batch),
            ({"POST"}, re.compile(_WEB_REPO + r"\.git/info/lfs/objects/verify$"), self._lfs_verify),
            ({"PUT"}, re.compile(r"^/lfs-upload/(?P<oid>[0-9a-f]{64})$"), self._lfs_upload),
            ({"GET", "HEAD"}, re.compile(_WEB_REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), self._resolve),
        ]

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        self._httpd = _HTTPServer(("127.0.0.1", self.port), _Handler, self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.close_connections()  # keep-alive connections would otherwise outlive the server
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("HubServer is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def fail_next_upload(self) -> bool:
        return self.fail_uploads > 0

    @fail_next_upload.setter
    def fail_next_upload(self, value: bool) -> None:
        self.fail_uploads = 1 if value else 0

    # -- dispatch ------------------------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        """Route a request; turn HubErrors into Hub-style error responses and crashes into recorded 500s."""
        self.requests.append((request.method, request.path))
        try:
            request.user, request.token = self._authenticate(request.headers)
            for methods, pattern, route in self._routes:
                match = pattern.match(request.path)
                if match and request.method in methods:
                    request.params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    return route(request)
            return self._unhandled(request)
        except HubError as exc:
            return exc.to_response()
        except (DropConnection, ConnectionError):  # the connection is gone or must go: nothing to answer
            raise
        except Exception:
            self.errors.append(traceback.format_exc())
            logger.exception("hub server: internal error on %s %s", request.method, request.path)
            return Response.json({"error": "Internal error (see HubServer.errors)"}, status=500)

    def _unhandled(self, request: Request) -> Response:
        self.unhandled.append((request.method, request.path))
        # Unknown sub-routes of a repo, or repo ids without a namespace, are reported as unknown repos.
        if re.match(r"^/api/(models|datasets|spaces)/", request.path) or "/resolve/" in request.path:
            raise repo_not_found(request.user is None)
        raise HubError(404, f"Not found: {request.method} {request.path}")

    # -- auth ----------------------------------------------------------------------------------------------------

    def _authenticate(self, headers: Message) -> tuple[str | None, str | None]:
        authorization = headers.get("Authorization")
        if not authorization:
            return None, None
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token], token

    def _is_member(self, user: str | None, namespace: str) -> bool:
        return user is not None and (user == namespace or user in self.orgs.get(namespace, ()))

    def _require_write(self, request: Request, namespace: str, repo_id: str | None = None) -> None:
        if request.user is None:
            raise HubError(401, "You must be authenticated to write to the Hub (pass a token)")
        if request.token in self.read_only_tokens:
            raise HubError(403, "Forbidden: this token has read access only")
        if not self._is_member(request.user, namespace):
            target = f"repository '{repo_id}'" if repo_id else f"namespace '{namespace}'"
            raise HubError(
                403,
                f"Forbidden: user '{request.user}' has no write access to {target}. "
                "Pass `create_pr=1` as a query parameter to create a Pull Request",
            )

    def _readable_repo(self, request: Request) -> Repo:
        repo = self.storage.repos.get(request.repo_key())
        if repo is None or (repo.private and not self._is_member(request.user, repo.namespace)):
            raise repo_not_found(request.user is None)
        return repo

    def _writable_repo(self, request: Request, pull_request: bool = False) -> Repo:
        """Repo the caller may push to. Opening a PR (or updating one) only needs an authenticated reader."""
        repo = self._readable_repo(request)
        if pull_request:
            if request.user is None:
                raise HubError(401, "You must be authenticated to open a Pull Request")
        else:
            self._require_write(request, repo.namespace, repo.repo_id)
        return repo

    # -- repos ---------------------------------------------------------------------------------------------------

    def _repo_url(self, request: Request, repo_type: str, repo_id: str) -> str:
        return f"{request.base_url}/{URL_PREFIXES[repo_type]}{repo_id}"

    def _create_repo(self, request: Request) -> Response:
        payload = request.json()
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"Invalid repo type: {repo_type}")
        name = str(payload.get("name") or "")
        namespace = payload.get("organization")
        if "/" in name:  # older clients send "namespace/name" as the name
            namespace, name = name.split("/", 1)
        if request.user is None:
            raise HubError(401, "You must be authenticated to create a repo")
        namespace = namespace or request.user
        if not _REPO_NAME.match(name) or not _REPO_NAME.match(namespace) or name.endswith(".git"):
            raise HubError(400, f"Invalid repo name: '{namespace}/{name}'")
        self._require_write(request, namespace)
        repo_id = f"{namespace}/{name}"
        private = payload.get("visibility", "public") == "private" or bool(payload.get("private"))
        with self._lock:
            if (repo_type, repo_id) in self.storage.repos:
                # `create_repo(exist_ok=True)` reads "url" from this 409 answer, as the Hub sends it.
                url = self._repo_url(request, repo_type, repo_id)
                raise HubError(409, f"You already created this {repo_type} repo", body={"url": url})
            repo = Repo(repo_type, repo_id, private=private, created_at=now_iso())
            # Like the Hub, a new repo starts with one commit holding the default .gitattributes.
            oid = self.storage.put_blob(DEFAULT_GITATTRIBUTES.encode())
            files = {".gitattributes": FileEntry(len(DEFAULT_GITATTRIBUTES), oid)}
            initial = self._new_commit(request.user, [], "initial commit", "", files)
            repo.commits[initial.id] = initial
            repo.branches["main"] = initial.id
            self.storage.repos[(repo_type, repo_id)] = repo
            self.storage.save(repo)
        url = self._repo_url(request, repo_type, repo_id)
        return Response.json({"url": url, "name": repo_id, "id": uuid.uuid4().hex[:24]})

    def _delete_repo(self, request: Request) -> Response:
        payload = request.json()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or request.user}/{payload.get('name')}"
        with self._lock:
            repo = self.storage.repos.get((repo_type, repo_id))
            if repo is None or (repo.private and not self._is_member(request.user, repo.namespace)):
                raise repo_not_found(request.user is None)
            self._require_write(request, repo.namespace, repo_id)
            del self.storage.repos[(repo_type, repo_id)]
            self.storage.delete(repo)
        return Response.json({})

    def _whoami(self, request: Request) -> Response:
        if request.user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        orgs = [{"type": "org", "name": org} for org, members in self.orgs.items() if request.user in members]
        role = "read" if request.token in self.read_only_tokens else "write"
        return Response.json(
            {
                "type": "user",
                "id": hashlib.sha1(request.user.encode()).hexdigest()[:24],
                "name": request.user,
                "fullname": request.user,
                "email": f"{request.user}@example.com",
                "emailVerified": True,
                "isPro": False,
                "orgs": orgs,
                "auth": {"type": "access_token", "accessToken": {"displayName": "tests", "role": role}},
            }
        )

    def _validate_yaml(self, request: Request) -> Response:
        content = str(request.json().get("content") or "")
        metadata, error = parse_front_matter(content)
        if error is not None:
            return Response.json({"errors": [{"message": error}], "warnings": []}, status=400)
        warnings = [] if metadata else [{"message": "Empty or missing yaml metadata in repo card"}]
        return Response.json({"errors": [], "warnings": warnings})

    def _repo_info(self, request: Request) -> Response:
        repo = self._readable_repo(request)
        commit = repo.resolve(request.params.get("rev", "main"))
        with_blobs = request.flag("blobs")
        siblings = [self._sibling(path, entry, with_blobs) for path, entry in sorted(commit.files.items())]
        card: dict[str, Any] = {}
        if "README.md" in commit.files:
            card = parse_front_matter(self.storage.read(commit.files["README.md"]).decode(errors="replace"))[0] or {}
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.namespace,
            "sha": commit.id,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": list(card.get("tags") or []),
            "siblings": siblings,
            "usedStorage": sum(entry.size for entry in commit.files.values()),
        }
        if card:
            info["cardData"] = card
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
            info["library_name"] = card.get("library_name")
            info["pipeline_tag"] = card.get("pipeline_tag")
        return Response.json(info)

    @staticmethod
    def _sibling(path: str, entry: FileEntry, with_blobs: bool) -> dict[str, Any]:
        sibling: dict[str, Any] = {"rfilename": path}
        if with_blobs:
            sibling.update(size=entry.size, blobId=entry.oid)
            if entry.sha256:
                pointer_size = len(lfs_pointer(entry.sha256, entry.size))
                sibling["lfs"] = {"size": entry.size, "sha256": entry.sha256, "pointerSize": pointer_size}
        return sibling

    # -- tree / paths-info / commits / refs ----------------------------------------------------------------------

    def _tree_entry(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict[str, Any]:
        """A file or folder as listed by the tree and paths-info APIs (RepoFile / RepoFolder in the client)."""
        entry = commit.files.get(path)
        if entry is None:  # a folder: its id only needs to change when its content does
            content = sorted((p, e.oid) for p, e in commit.files.items() if p.startswith(path + "/"))
            data: dict[str, Any] = {"type": "directory", "oid": hashlib.sha1(repr(content).encode()).hexdigest()}
            data.update(size=0, path=path)
        else:
            data = {"type": "file", "oid": entry.oid, "size": entry.size, "path": path}
            if entry.sha256:
                pointer_size = len(lfs_pointer(entry.sha256, entry.size))
                data["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": pointer_size}
        if expand:
            last = self._last_commit_touching(repo, commit, path)
            data["lastCommit"] = {"id": last.id, "title": last.title, "date": last.date}
        return data

    @staticmethod
    def _last_commit_touching(repo: Repo, commit: Commit, path: str) -> Commit:
        def state(c: Commit) -> list[tuple[str, str]]:
            return sorted((p, e.oid) for p, e in c.files.items() if p == path or p.startswith(path + "/"))

        current = commit
        for older in repo.history(commit):
            if state(older) != state(commit):
                break
            current = older
        return current

    @staticmethod
    def _folders(commit: Commit) -> set[str]:
        return {"/".join(p.split("/")[:i]) for p in commit.files for i in range(1, p.count("/") + 1)}

    def _tree(self, request: Request) -> Response:
        repo = self._readable_repo(request)
        commit = repo.resolve(request.params["rev"])
        base = request.params.get("path", "").strip("/")
        folders = self._folders(commit)
        if base and base not in folders:
            raise entry_not_found(commit.id, f"Entry not found: '{base}' is not a folder")
        prefix = f"{base}/" if base else ""
        paths = [p for p in sorted(set(commit.files) | folders) if p.startswith(prefix)]
        if not request.flag("recursive"):
            paths = [p for p in paths if "/" not in p[len(prefix) :]]
        expand = request.flag("expand")
        return Response.json([self._tree_entry(repo, commit, p, expand) for p in paths])

    def _paths_info(self, request: Request) -> Response:
        repo = self._readable_repo(request)
        commit = repo.resolve(request.params["rev"])
        raw = request.body.read().decode()
        if "json" in (request.headers.get("Content-Type") or ""):
            form = {k: v if isinstance(v, list) else [str(v)] for k, v in json.loads(raw or "{}").items()}
        else:
            form = parse_qs(raw, keep_blank_values=True)
        expand = (form.get("expand") or ["false"])[0].lower() == "true"
        folders = self._folders(commit)
        paths = [p.strip("/") for p in form.get("paths", [])]
        existing = [p for p in paths if p in commit.files or p in folders]
        return Response.json([self._tree_entry(repo, commit, p, expand) for p in existing])

    def _list_commits(self, request: Request) -> Response:
        repo = self._readable_repo(request)
        formatted = "formatted" in request.query.get("expand[]", [])
        items = []
        for commit in repo.history(repo.resolve(request.params["rev"])):
            item: dict[str, Any] = {
                "id": commit.id,
                "title": commit.title,
                "message": commit.message,
                "authors": [{"user": commit.author, "avatar": None}],
                "date": commit.date,
            }
            if formatted:
                item["formatted"] = {"title": f"<p>{commit.title}</p>", "message": f"<p>{commit.message}</p>"}
            items.append(item)
        return Response.json(items)

    def _list_refs(self, request: Request) -> Response:
        repo = self._readable_repo(request)
        with self._lock:
            prs_by_number = list(repo.pull_requests.items())
            branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c} for b, c in repo.branches.items()]
            prs = [{"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": c} for n, c in prs_by_number]
        data: dict[str, Any] = {"branches": branches, "converts": [], "tags": []}
        if request.flag("include_prs"):
            data["pullRequests"] = prs
        return Response.json(data)

    def _create_branch(self, request: Request) -> Response:
        repo = self._writable_repo(request)
        branch = request.params["rev"]
        if branch.startswith("refs/") or not re.fullmatch(r"[A-Za-z0-9._/-]+", branch):
            raise HubError(400, f"Invalid reference for a branch: {branch}")
        starting_point = request.json().get("startingPoint") or "main"
        with self._lock:
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            repo.branches[branch] = repo.resolve(starting_point).id
            self.storage.save(repo)
        return Response.json({})

    def _delete_branch(self, request: Request) -> Response:
        repo = self._writable_repo(request)
        branch = request.params["rev"]
        with self._lock:
            if branch == "main":
                raise HubError(403, "Cannot delete the main branch")
            if repo.branches.pop(branch, None) is None:
                raise revision_not_found(branch)
            self.storage.save(repo)
        return Response.json({})

    # -- upload: preupload, LFS, commit --------------------------------------------------------------------------

    def _preupload(self, request: Request) -> Response:
        """Tell the client, per file, whether to send it inline ("regular") or through LFS, and its current oid.

        The client skips files whose `oid` equals its local one (git sha1 for regular files, sha256 for LFS), which is
        how re-uploading unchanged files produces no commit at all.
        """
        repo = self._writable_repo(request, pull_request=request.flag("create_pr"))
        commit = repo.resolve(request.params["rev"])
        payload = request.json()
        lfs_rules = lfs_patterns(self._text_file(commit, ".gitattributes"))
        ignore_rules = [
            line.strip()
            for line in (payload.get("gitIgnore") or self._text_file(commit, ".gitignore")).splitlines()
            if line.strip() and not line.startswith("#")
        ]
        files = []
        for item in payload.get("files", []):
            path, size = item["path"], int(item.get("size", 0))
            sample = base64.b64decode(item.get("sample") or "")
            is_lfs = size >= self.lfs_threshold or matches_any(path, lfs_rules) or is_binary(sample)
            existing = commit.files.get(path)
            info: dict[str, Any] = {
                "path": path,
                "uploadMode": "lfs" if is_lfs else "regular",
                "shouldIgnore": matches_any(path, ignore_rules),
            }
            if existing is not None:
                info["oid"] = existing.sha256 if (is_lfs and existing.sha256) else existing.oid
            files.append(info)
        return Response.json({"files": files, "commitOid": commit.id})

    def _text_file(self, commit: Commit, path: str) -> str:
        entry = commit.files.get(path)
        return self.storage.read(entry).decode(errors="replace") if entry else ""

    def _lfs_batch(self, request: Request) -> Response:
        """git-lfs batch API: answer "already there" (no actions) or a URL to PUT the object to (basic transfer).

        Uploads need an authenticated reader; whether the caller may use the objects is checked at commit time.
        """
        repo = self._writable_repo(request, pull_request=True)
        payload = request.json()
        if payload.get("operation") != "upload":
            raise HubError(400, "Only the 'upload' operation is supported")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = str(obj.get("oid")), obj.get("size")
            if not _SHA256.match(oid) or not isinstance(size, int) or size < 0:
                objects.append({"oid": oid, "size": size or 0, "error": {"code": 422, "message": "Invalid object"}})
            elif self.storage.has_lfs(oid, size):
                objects.append({"oid": oid, "size": size})
            else:
                signature = self._sign(oid, size)
                upload = f"{request.base_url}/lfs-upload/{oid}?size={size}&sig={signature}"
                verify = f"{self._repo_url(request, repo.repo_type, repo.repo_id)}.git/info/lfs/objects/verify"
                actions = {"upload": {"href": upload, "header": {}}, "verify": {"href": verify, "header": {}}}
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": actions})
        body = json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode()
        return Response(200, body, {"Content-Type": "application/vnd.git-lfs+json"})

    def _sign(self, oid: str, size: int) -> str:
        return hmac.new(self._secret, f"{oid}:{size}".encode(), hashlib.sha256).hexdigest()

    def _lfs_upload(self, request: Request) -> Response:
        """The PUT of an LFS object (an S3 presigned URL on the real Hub: no auth header, a signature instead)."""
        oid, size_arg = request.params["oid"], request.arg("size") or ""
        size = int(size_arg) if size_arg.isdigit() else -1
        if size < 0 or not hmac.compare_digest(request.arg("sig") or "", self._sign(oid, size)):
            raise HubError(403, "Invalid upload signature")
        with self._lock:
            drop = self.fail_uploads > 0
            self.fail_uploads -= int(drop)
        if drop:
            request.body.read(max(size // 2, 1))
            raise DropConnection
        self.storage.ingest_lfs(request.body.iter_chunks(), oid, size)
        return Response(200, b"", {"ETag": f'"{oid}"'})

    def _lfs_verify(self, request: Request) -> Response:
        self._writable_repo(request, pull_request=True)
        payload = request.json()
        if not self.storage.has_lfs(str(payload.get("oid")), payload.get("size")):
            raise HubError(404, f"LFS object {payload.get('oid')} not found")
        return Response.json({"success": True})

    def _commit(self, request: Request) -> Response:
        revision = request.params["rev"]
        create_pr = request.flag("create_pr")
        repo = self._writable_repo(request, pull_request=create_pr or revision.startswith("refs/pr/"))
        with self._lock:
            drop = self.fail_next_commit or repo.repo_id in self.fail_commits_to
            self.fail_next_commit = False
            lose_answer, self.lose_next_commit_answer = self.lose_next_commit_answer, False
        if drop:
            request.body.read(max((request.body.length or 2) // 2, 1))
            raise DropConnection
        header, operations = self._parse_commit_payload(request.body.read())
        # Write contents first: they are content-addressed, so if the commit fails below they are just unused.
        staged = [self._stage(op) for op in operations]
        with self._lock:
            head = repo.ref_head(revision)
            if head is None:
                raise revision_not_found(revision)
            parent_commit = header.get("parentCommit")
            if parent_commit and create_pr:
                head = repo.resolve(parent_commit).id  # a PR can be opened from any parent commit
            elif parent_commit and parent_commit != head:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = self._apply(repo.commits[head].files, staged)
            commit = self._new_commit(
                request.user or "", [head], header.get("summary") or "", header.get("description") or "", files
            )
            repo.commits[commit.id] = commit
            pr_number = None
            if create_pr:
                pr_number = max(repo.pull_requests, default=0) + 1
                repo.pull_requests[pr_number] = commit.id
            elif match := re.fullmatch(r"refs/pr/(\d+)", revision):
                repo.pull_requests[int(match.group(1))] = commit.id
            else:
                repo.branches[revision.removeprefix("refs/heads/")] = commit.id
            self.storage.save(repo)
        if lose_answer:
            raise DropConnection  # the commit landed; the client never hears so
        repo_url = self._repo_url(request, repo.repo_type, repo.repo_id)
        return Response.json(
            {
                "success": True,
                "commitOid": commit.id,
                "commitUrl": f"{repo_url}/commit/{commit.id}",
                "pullRequestUrl": f"{repo_url}/discussions/{pr_number}" if pr_number else None,
                "hookOutput": "",
            }
        )

    @staticmethod
    def _parse_commit_payload(raw: bytes) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
        """The NDJSON commit payload: a header line, then one line per operation."""
        try:
            lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
        except ValueError as exc:
            raise HubError(400, f"Invalid NDJSON commit payload: {exc}") from exc
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The commit payload must start with a header line")
        operations = [(line.get("key"), line.get("value") or {}) for line in lines[1:]]
        for _key, value in operations:
            path = str(value.get("path") or "")
            parts = path.split("/")
            if not path or path.startswith("/") or ".." in parts or parts[0] == ".git":
                raise HubError(400, f"Invalid path in commit: '{path}'")
        return lines[0].get("value") or {}, operations

    def _stage(self, operation: tuple[str, dict[str, Any]]) -> tuple[str, str, FileEntry | None]:
        """Validate one operation and store its content; returns (kind, path, entry)."""
        key, value = operation
        path = value["path"]
        if key == "file":
            if value.get("encoding", "base64") != "base64":
                raise HubError(400, f"Unsupported encoding for '{path}'")
            data = base64.b64decode(value.get("content") or "")
            if len(data) >= self.lfs_threshold or is_binary(data):
                raise HubError(400, f"Your push was rejected: '{path}' is binary or too large, it must use LFS")
            return "add", path, FileEntry(len(data), self.storage.put_blob(data))
        if key == "lfsFile":
            sha256 = str(value.get("oid"))
            size = value.get("size")
            if not self.storage.has_lfs(sha256, size):
                raise HubError(400, f"Your push was rejected: LFS object {sha256} of '{path}' was never uploaded")
            size = self.storage.lfs_path(sha256).stat().st_size
            return "add", path, FileEntry(size, git_blob_sha1(lfs_pointer(sha256, size)), sha256)
        if key in ("deletedFile", "deletedFolder"):
            return key, path.rstrip("/"), None
        raise HubError(400, f"Unknown commit operation: {key}")

    @staticmethod
    def _apply(files: dict[str, FileEntry], staged: list[tuple[str, str, FileEntry | None]]) -> dict[str, FileEntry]:
        """The file table after the operations, in order; the input table is left untouched."""
        files = dict(files)
        for kind, path, entry in staged:
            if kind == "add" and entry is not None:
                files[path] = entry
            elif kind == "deletedFile":
                if files.pop(path, None) is None:
                    raise entry_not_found(message=f"A file with this name doesn't exist: {path}")
            elif kind == "deletedFolder":
                inside = [p for p in files if p.startswith(path + "/")]
                if not inside:
                    raise entry_not_found(message=f"A folder with this name doesn't exist: {path}")
                for p in inside:
                    del files[p]
        return files

    @staticmethod
    def _new_commit(author: str, parents: list[str], title: str, message: str, files: dict[str, FileEntry]) -> Commit:
        date = now_iso()
        # Not a real git hash, but 40 hex digits, unique, and stable for the life of the commit.
        tree = sorted((path, entry.oid) for path, entry in files.items())
        seed = json.dumps([parents, title, message, date, uuid.uuid4().hex, tree])
        commit_id = hashlib.sha1(seed.encode()).hexdigest()
        return Commit(commit_id, parents, title, message, author, date, files)

    # -- download ------------------------------------------------------------------------------------------------

    def _resolve(self, request: Request) -> Response:
        """HEAD/GET of a file at a revision, with the headers `hf_hub_download` relies on.

        X-Repo-Commit: the resolved commit (names the snapshot folder in the cache); ETag: the blob name in the cache
        (git sha1, or sha256 for LFS files, which also get X-Linked-Etag/X-Linked-Size as on the Hub). The Hub
        redirects LFS downloads to a CDN; here they are served directly, which the client accepts as well.
        """
        repo = self._readable_repo(request)
        commit = repo.resolve(request.params["rev"])
        path = request.params["path"]
        entry = commit.files.get(path)
        if entry is None:
            raise entry_not_found(commit.id)
        headers = {
            "X-Repo-Commit": commit.id,
            "ETag": f'"{entry.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}",
        }
        if entry.sha256:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        response = Response(200, self.storage.path_of(entry), headers)
        byte_range = request.headers.get("Range")
        if byte_range and request.method == "GET":
            self._apply_range(response, byte_range, entry.size)
        return response

    @staticmethod
    def _apply_range(response: Response, header: str, size: int) -> None:
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
        if not match or match.groups() == ("", ""):
            raise HubError(416, f"Invalid range: {header}", headers={"Content-Range": f"bytes */{size}"})
        start_s, end_s = match.groups()
        if start_s:
            start, end = int(start_s), min(int(end_s), size - 1) if end_s else size - 1
        else:  # suffix range: the last N bytes
            start, end = max(size - int(end_s), 0), size - 1
        if start >= size or start > end:
            raise HubError(416, f"Range not satisfiable: {header}", headers={"Content-Range": f"bytes */{size}"})
        response.status = 206
        response.byte_range = (start, end)
        response.headers["Content-Range"] = f"bytes {start}-{end}/{size}"


# --------------------------------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that remembers open connections, so that `stop()` can close idle keep-alive ones."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], hub: HubServer):
        super().__init__(address, handler)
        self.hub = hub
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    timeout = 60  # idle keep-alive connections eventually release their thread
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms delayed-ACK stalls
    server: _HTTPServer

    def _handle(self) -> None:
        body = BodyReader(self.rfile, self.headers)
        split = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers=self.headers,
            body=body,
            base_url=f"http://{self.headers.get('Host') or self.server.hub.url.removeprefix('http://')}",
        )
        try:
            response = self.server.hub.handle(request)
        except (DropConnection, ConnectionError):
            self.close_connection = True
            with suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        try:
            # Read what the route did not (e.g. it refused the request early): unread bytes would be parsed as the
            # next request, and closing instead could cut a client that is still sending before it sees our answer.
            for _ in body.iter_chunks():
                pass
        except (ConnectionError, OSError):
            return
        try:
            self._send(response)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            # Header values must be single-line latin-1 (error messages may quote arbitrary paths).
            self.send_header(name, " ".join(value.splitlines()).encode("latin-1", "replace").decode("latin-1"))
        if self.close_connection:
            self.send_header("Connection", "close")
        if isinstance(response.body, Path):
            start, end = response.byte_range or (0, response.body.stat().st_size - 1)
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            if self.command != "HEAD":
                with response.body.open("rb") as source:
                    source.seek(start)
                    self._copy(source, end - start + 1)
        else:
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)

    def _copy(self, source: Any, remaining: int) -> None:
        while remaining > 0 and (chunk := source.read(min(remaining, 1 << 20))):
            self.wfile.write(chunk)
            remaining -= len(chunk)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (signature of the base class)
        logger.debug("hub server: " + format, *args)


# --------------------------------------------------------------------------------------------------------------------
# Pointing the client at the server, and the pytest fixture
# --------------------------------------------------------------------------------------------------------------------


def client_env(url: str, hf_home: Path, token: str | None = DEFAULT_TOKEN) -> dict[str, str]:
    """Environment variables that configure a *fresh* process (e.g. a subprocess) to use the server."""
    env = {
        "HF_ENDPOINT": url,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def use_hub_server(url: str, hf_home: Path, monkeypatch: pytest.MonkeyPatch, token: str | None = DEFAULT_TOKEN) -> None:
    """Point the already-imported huggingface_hub (and transformers/timm through it) at `url` for one test.

    `token` is exported as HF_TOKEN (None: anonymous). The cache and token file live under `hf_home`, so the
    developer's own cache and stored token are never touched. See the module docstring for why this works.
    """
    from huggingface_hub import constants, hf_api

    for name, value in client_env(url, hf_home, token).items():
        monkeypatch.setenv(name, value)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    if token is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)

    # Constants that huggingface_hub computed at import time and reads back at call time. raising=True (the
    # default): if a future version renames one, fail loudly rather than silently talking to huggingface.co.
    patched = {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HUGGINGFACE_HUB_CACHE": str(hf_home / "hub"),
        "HF_ASSETS_CACHE": str(hf_home / "assets"),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
    }
    for name, value in patched.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(hf_api.api, "endpoint", url)  # module-level HfApi behind `huggingface_hub.upload_file` etc.
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:  # datasets reads HF_ENDPOINT once, at import, into its own config
        monkeypatch.setattr(datasets_config, "HF_ENDPOINT", url)
    _forget_endpoint_caches(monkeypatch)


def _forget_endpoint_caches(monkeypatch: pytest.MonkeyPatch | None = None) -> None:
    """Drop client objects that captured an endpoint when built, so that they are rebuilt with the current one."""
    from huggingface_hub import HfFileSystem

    HfFileSystem.clear_instance_cache()  # fsspec reuses instances built with the same arguments
    transformers_hub = sys.modules.get("transformers.utils.hub")
    if transformers_hub is not None and hasattr(transformers_hub, "_hf_api"):  # transformers' shared HfApi
        if monkeypatch is not None:
            monkeypatch.setattr(transformers_hub, "_hf_api", None)
        else:
            transformers_hub._hf_api = None


@pytest.fixture(name="hub_server")  # a distinct function name lets test modules import it without F811 warnings
def hub_server_fixture(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[HubServer]:
    """A running HubServer with empty storage; the client points at it with a fresh cache, logged in as `user`.

    `hub_server.url`, `hub_server.hf_home` (client cache root), `hub_server.tokens`... see `HubServer`.
    """
    root = tmp_path_factory.mktemp("hub_storage")
    hf_home = tmp_path_factory.mktemp("hf_home")
    with HubServer(root) as server:
        server.hf_home = hf_home
        use_hub_server(server.url, hf_home, monkeypatch)
        yield server
    # Objects built during the test (e.g. transformers imported by the test itself) must not keep this dead URL.
    _forget_endpoint_caches()
    assert not server.errors, "hub server internal errors:\n" + "\n".join(server.errors)


def main() -> None:
    """Run the server by hand: `python tests/hub_server.py --root /tmp/hub`, then use the printed env vars."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="storage directory")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    with HubServer(args.root, port=args.port) as server:
        print(f"export HF_ENDPOINT={server.url} HF_HUB_DISABLE_XET=1 HF_TOKEN={DEFAULT_TOKEN}", flush=True)
        with suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
