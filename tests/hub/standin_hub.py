"""A STAND-IN for the Hugging Face Hub, for contract tests only. It is not the Hub.

No offline server accepts uploads, so this in-process HTTP server imitates the endpoints that
huggingface_hub (2.x, with HF_HUB_DISABLE_XET=1, i.e. the LFS protocol) and `datasets` call to
push and read a dataset repository:

    POST /api/repos/create                               create a repo (409 if it exists)
    POST /api/validate-yaml                              README front matter must parse
    GET  /api/datasets/{repo}[/revision/{rev}]           repo info (sha, private, siblings)
    POST /api/datasets/{repo}/branch/{branch}            create a branch (409 if it exists)
    POST /api/datasets/{repo}/preupload/{rev}            upload mode and remote oid per file
    POST /datasets/{repo}.git/info/lfs/objects/batch     LFS batch: where to PUT each new object
    PUT  /standin-lfs/{sha256}                           the LFS object itself (sha256 checked)
    POST /api/datasets/{repo}/commit/{rev}               ndjson commit (file, lfsFile, deletedFile)
    GET  /api/datasets/{repo}/tree/{rev}[/{path}]        tree listing, recursive or not
    POST /api/datasets/{repo}/paths-info/{rev}           info on given paths
    HEAD|GET /datasets/{repo}/resolve/{rev}/{path}       file bytes, with Range (206)

State lives in memory: repos with branches and commits, and one LFS object store. Any non-empty
Bearer token is accepted for writes; private repos need one to be read. Every request's method,
path and Authorization header are recorded in `requests` so tests can check what the client sent.
`interrupt_after_puts = k` makes every LFS PUT after the k-th fail with 400 (a simulated
interrupted upload) until it is reset to None.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub stores big files in LFS whatever their extension
LFS_SUFFIXES = (".parquet", ".arrow", ".bin", ".safetensors", ".gguf")
GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class Entry:
    """One file in a commit: its bytes live inline (regular) or in the LFS store (lfs)."""

    size: int
    sha256: str
    lfs: bool
    content: bytes | None = None  # regular files only

    @property
    def oid(self) -> str:
        """The oid preupload reports: sha256 for LFS files, git blob sha1 for regular ones."""
        return self.sha256 if self.lfs else git_blob_sha1(self.content)

    @property
    def blob_id(self) -> str:
        return git_blob_sha1(lfs_pointer(self.sha256, self.size) if self.lfs else self.content)


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, Entry]


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, body: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.body = status, code, body


class StandinHub:
    """`with StandinHub() as hub:` serves on `hub.endpoint` (127.0.0.1, a free port)."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, authorization)
        self.lfs_puts = 0
        self.interrupt_after_puts: int | None = None
        self._lock = threading.RLock()
        self._commit_counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> StandinHub:
        hub = self

        class Handler(_Handler):
            standin = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ---- helpers for tests -----------------------------------------------------------------
    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """path -> bytes of every file at `revision` (LFS files resolved)."""
        commit = self.repos[repo_id].resolve(revision)
        return {path: self._bytes(e) for path, e in commit.files.items()}

    def _bytes(self, entry: Entry) -> bytes:
        return self.lfs[entry.sha256] if entry.lfs else entry.content

    # ---- repo operations -------------------------------------------------------------------
    def _repo(self, repo_id: str, token: str | None) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not token):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _new_commit(self, repo: Repo, branch: str, message: str, files: dict[str, Entry]) -> Commit:
        self._commit_counter += 1
        parent = repo.branches.get(branch)
        seed = f"{repo.repo_id}|{parent}|{message}|{self._commit_counter}|{sorted(files)}"
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, message, dict(files))
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit

    def create_repo(self, body: dict, token: str | None) -> dict:
        if not token:
            raise HubError(401, "Invalid credentials in Authorization header")
        if body.get("type") != "dataset":
            raise HubError(400, "the stand-in only hosts dataset repos")
        namespace = body.get("organization") or "standin-user"
        repo_id = f"{namespace}/{body['name']}"
        url = f"{self.endpoint}/datasets/{repo_id}"
        if repo_id in self.repos:
            raise HubError(409, "You already created this dataset repo", body={"url": url})
        repo = Repo(repo_id, private=body.get("visibility") == "private")
        self.repos[repo_id] = repo
        self._new_commit(repo, "main", "initial commit", {".gitattributes": _regular(GITATTRIBUTES)})
        return {"url": url, "name": repo_id}

    def repo_info(self, repo_id: str, revision: str | None, token: str | None) -> dict:
        repo = self._repo(repo_id, token)
        commit = self._commit(repo, revision or "main")
        return {
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.oid,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "lastModified": "2026-01-01T00:00:00.000Z",
            "createdAt": "2026-01-01T00:00:00.000Z",
            "tags": [],
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        }

    def create_branch(self, repo_id: str, branch: str, body: dict, token: str | None) -> dict:
        repo = self._repo(repo_id, token)
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        start = self._commit(repo, body.get("startingPoint") or "main")
        repo.branches[branch] = start.oid
        return {}

    def preupload(self, repo_id: str, revision: str, body: dict, token: str | None) -> dict:
        commit = self._commit(self._repo(repo_id, token), revision)
        out = []
        for f in body["files"]:
            lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] >= LFS_MIN_SIZE
            remote = commit.files.get(f["path"])
            out.append(
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": remote.oid if remote is not None else None,
                }
            )
        return {"files": out, "commitOid": commit.oid}

    def lfs_batch(self, repo_id: str, body: dict, token: str | None) -> dict:
        self._repo(repo_id, token)
        if not token:
            raise HubError(401, "Invalid credentials in Authorization header")
        objects = []
        for obj in body["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.lfs:
                item["actions"] = {
                    "upload": {"href": f"{self.endpoint}/standin-lfs/{obj['oid']}", "header": {}},
                    "verify": {"href": f"{self.endpoint}/standin-lfs/{obj['oid']}/verify"},
                }
            objects.append(item)
        return {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}

    def lfs_put(self, oid: str, data: bytes) -> None:
        if self.interrupt_after_puts is not None and self.lfs_puts >= self.interrupt_after_puts:
            raise HubError(400, "stand-in: simulated interrupted upload")
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, "sha256 of the uploaded bytes does not match the oid")
        self.lfs[oid] = data
        self.lfs_puts += 1

    def lfs_verify(self, oid: str, body: dict) -> dict:
        if oid not in self.lfs or len(self.lfs[oid]) != body["size"]:
            raise HubError(404, "object not uploaded")
        return {}

    def commit(self, repo_id: str, revision: str, lines: list[dict], token: str | None) -> dict:
        if not token:
            raise HubError(401, "Invalid credentials in Authorization header")
        repo = self._repo(repo_id, token)
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        files = dict(self._commit(repo, revision).files)
        header = {}
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                header = value
            elif key == "file":
                files[value["path"]] = _regular(base64.b64decode(value["content"]))
            elif key == "lfsFile":
                if value["oid"] not in self.lfs:
                    raise HubError(422, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = Entry(len(self.lfs[value["oid"]]), value["oid"], lfs=True)
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                del files[value["path"]]
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: e for p, e in files.items() if not p.startswith(prefix)}
            else:
                raise HubError(400, f"the stand-in does not support commit operation {key!r}")
        parent = header.get("parentCommit")
        if parent and parent != repo.branches[revision]:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        commit = self._new_commit(repo, revision, header.get("summary", ""), files)
        return {
            "commitUrl": f"{self.endpoint}/datasets/{repo_id}/commit/{commit.oid}",
            "commitOid": commit.oid,
            "pullRequestUrl": None,
        }

    def _path_info(self, commit: Commit, path: str) -> dict | None:
        entry = commit.files.get(path)
        if entry is not None:
            info = {"type": "file", "oid": entry.blob_id, "size": entry.size, "path": path}
            if entry.lfs:
                pointer = lfs_pointer(entry.sha256, entry.size)
                info["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": len(pointer)}
            return info
        if any(p.startswith(path + "/") for p in commit.files):
            return {
                "type": "directory",
                "oid": hashlib.sha1(path.encode()).hexdigest(),
                "size": 0,
                "path": path,
            }
        return None

    def tree(self, repo_id: str, revision: str, path: str, recursive: bool, token: str | None) -> list:
        commit = self._commit(self._repo(repo_id, token), revision)
        path = path.strip("/")
        if path and (info := self._path_info(commit, path)) is not None and info["type"] == "file":
            raise HubError(404, f"{path} is a file, not a folder", "EntryNotFound")
        prefix = path + "/" if path else ""
        children: set[str] = set()
        for p in commit.files:
            if not p.startswith(prefix):
                continue
            parts = p[len(prefix) :].split("/")
            depth = len(parts) if recursive else 1
            children.update(prefix + "/".join(parts[: i + 1]) for i in range(depth))
        if path and not children:
            raise HubError(404, f"{path} does not exist", "EntryNotFound")
        return [self._path_info(commit, c) for c in sorted(children)]

    def paths_info(self, repo_id: str, revision: str, paths: list[str], token: str | None) -> list:
        commit = self._commit(self._repo(repo_id, token), revision)
        return [info for p in paths if (info := self._path_info(commit, p.strip("/"))) is not None]

    def resolve(self, repo_id: str, revision: str, path: str, token: str | None) -> tuple[Commit, Entry]:
        commit = self._commit(self._repo(repo_id, token), revision)
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        return commit, entry


def _regular(data: bytes) -> Entry:
    return Entry(len(data), hashlib.sha256(data).hexdigest(), lfs=False, content=data)


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_REV = r"(?P<rev>[^/]+)"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    standin: StandinHub

    def log_message(self, format, *args) -> None:  # keep test output quiet
        pass

    # ---- plumbing --------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[7:] if auth.startswith("Bearer ") and len(auth) > 7 else None

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        headers = {"Content-Length": str(len(body)), **(headers or {})}
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, obj, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        self.standin.requests.append((method, self.path, self.headers.get("Authorization")))
        body = self._body() if method in ("POST", "PUT") else b""
        try:
            with self.standin._lock:
                self._route(method, path, query, body)
        except HubError as e:
            headers = {"Content-Type": "application/json"}
            if e.code:
                headers["X-Error-Code"] = e.code
            payload = json.dumps({"error": str(e), **(e.body or {})}).encode()
            self._send(e.status, payload, headers, head=method == "HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # ---- routes ----------------------------------------------------------------------------
    def _route(self, method: str, path: str, query: dict, body: bytes) -> None:
        hub, token = self.standin, self._token()
        match = lambda pattern: re.fullmatch(pattern, path)  # noqa: E731
        if method == "POST" and path == "/api/repos/create":
            return self._json(hub.create_repo(json.loads(body), token))
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body)["content"])
        if method == "GET" and (m := match(rf"/api/datasets/{_REPO}(?:/revision/{_REV})?")):
            rev = unquote(m["rev"]) if m["rev"] else None
            return self._json(hub.repo_info(m["repo"], rev, token))
        if method == "POST" and (m := match(rf"/api/datasets/{_REPO}/branch/(?P<branch>.+)")):
            return self._json(
                hub.create_branch(m["repo"], unquote(m["branch"]), json.loads(body or b"{}"), token)
            )
        if method == "POST" and (m := match(rf"/api/datasets/{_REPO}/preupload/{_REV}")):
            return self._json(hub.preupload(m["repo"], unquote(m["rev"]), json.loads(body), token))
        if method == "POST" and (m := match(rf"/datasets/{_REPO}\.git/info/lfs/objects/batch")):
            return self._json(hub.lfs_batch(m["repo"], json.loads(body), token))
        if method == "PUT" and (m := match(r"/standin-lfs/(?P<oid>[0-9a-f]{64})")):
            hub.lfs_put(m["oid"], body)
            return self._send(200)
        if method == "POST" and (m := match(r"/standin-lfs/(?P<oid>[0-9a-f]{64})/verify")):
            return self._json(hub.lfs_verify(m["oid"], json.loads(body)))
        if method == "POST" and (m := match(rf"/api/datasets/{_REPO}/commit/{_REV}")):
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            return self._json(hub.commit(m["repo"], unquote(m["rev"]), lines, token))
        if method == "GET" and (m := match(rf"/api/datasets/{_REPO}/tree/{_REV}(?:/(?P<path>.*))?")):
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            tree = hub.tree(m["repo"], unquote(m["rev"]), unquote(m["path"] or ""), recursive, token)
            return self._json(tree)
        if method == "POST" and (m := match(rf"/api/datasets/{_REPO}/paths-info/{_REV}")):
            paths = parse_qs(body.decode()).get("paths", [])
            return self._json(hub.paths_info(m["repo"], unquote(m["rev"]), paths, token))
        if method in ("GET", "HEAD") and (m := match(rf"/datasets/{_REPO}/resolve/{_REV}/(?P<path>.+)")):
            commit, entry = hub.resolve(m["repo"], unquote(m["rev"]), unquote(m["path"]), token)
            return self._file(commit, entry, head=method == "HEAD")
        raise HubError(404, f"the stand-in does not serve {method} {path}")

    def _validate_yaml(self, content: str) -> None:
        match = re.match(r"^---\n(.*?)\n---\n", content, flags=re.S)
        try:
            meta = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as e:
            raise HubError(400, "invalid YAML", body={"errors": [{"message": str(e)}]}) from e
        if not isinstance(meta, dict):
            raise HubError(400, "metadata is not a mapping", body={"errors": [{"message": "not a mapping"}]})
        warnings = [] if meta else [{"message": "empty or missing yaml metadata in repo card"}]
        self._json({"errors": [], "warnings": warnings})

    def _file(self, commit: Commit, entry: Entry, head: bool) -> None:
        data = self.standin._bytes(entry)
        headers = {
            "X-Repo-Commit": commit.oid,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if entry.lfs:
            headers |= {
                "ETag": f'"{entry.blob_id}"',
                "X-Linked-Etag": f'"{entry.sha256}"',
                "X-Linked-Size": str(entry.size),
            }
        else:
            headers["ETag"] = f'"{entry.blob_id}"'
        headers["Content-Length"] = str(len(data))
        status, rng = 200, self.headers.get("Range")
        if rng and not head:
            start, end = _parse_range(rng, len(data))
            if start is None:
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            status, data = 206, data[start : end + 1]
            headers["Content-Length"] = str(len(data))
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        self._send(status, data, headers, head=head)


def _parse_range(header: str, size: int) -> tuple[int | None, int | None]:
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not m or (not m[1] and not m[2]):
        return None, None
    if not m[1]:  # suffix: the last n bytes
        return max(size - int(m[2]), 0), size - 1
    start = int(m[1])
    end = min(int(m[2]), size - 1) if m[2] else size - 1
    return (start, end) if start <= end else (None, None)
