"""A local stand-in for the Hugging Face Hub, so that hub downloads are tested offline.

It speaks the part of the hub's HTTP protocol that ``huggingface_hub``'s
``snapshot_download`` and ``hf_hub_download`` use (read from huggingface_hub 2.x):

* ``GET /api/models/{repo}/revision/{revision}`` (and ``/api/models/{repo}``, the
  default branch): the repo info. The client reads ``sha`` from it to turn a branch or
  tag into the commit whose files it then downloads.
* ``GET /api/models/{repo}/tree/{revision}[/{folder}]?recursive=...``: the file list
  (path, size, git blob id, LFS metadata) that the snapshot is filtered from.
* ``HEAD`` / ``GET /{repo}/resolve/{revision}/{path}``: one file. Small files are
  answered directly with ``ETag`` (their git blob id) and ``X-Repo-Commit``. LFS files
  (weights) are answered with a ``302`` to a second listener standing in for the hub's
  CDN, carrying ``X-Linked-Etag`` (the sha256), ``X-Linked-Size`` and ``X-Repo-Commit``.
  The CDN being another origin (another port) matters: the client does not follow
  that redirect on ``HEAD`` and reads the metadata from the ``302`` itself, then
  downloads from ``Location``, exactly as it does against huggingface.co.
* Failures as ``404`` with an ``X-Error-Code`` header (``RepoNotFound``,
  ``RevisionNotFound``, ``EntryNotFound``), which the client's ``hf_raise_for_status``
  turns into ``RepositoryNotFoundError``, ``RevisionNotFoundError`` and
  ``RemoteEntryNotFoundError``.

Single byte ranges (``Range: bytes=a-b``, ``bytes=a-``, ``bytes=-n``) are honoured
with ``206``, as the client asks for the rest of a file after a dropped connection.
No Xet headers are ever sent, so the client always downloads over plain HTTP.

Only model repos exist, and nothing needs a token. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

#: Suffixes that the hub's default ``.gitattributes`` stores in LFS (the weight formats).
LFS_SUFFIXES = (
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx",
    ".model",
)  # fmt: skip

_COMMIT = re.compile(r"[0-9a-f]{40}")
# A repo id is "name" (legacy, e.g. "gpt2") or "namespace/name". Revisions arrive
# percent-encoded as one path segment ("refs/pr/1" -> "refs%2Fpr%2F1").
_REPO = r"(?P<repo>[^/]+(?:/[^/]+)?)"
_INFO = re.compile(rf"^/api/models/{_REPO}(?:/revision/(?P<revision>[^/]+))?$")
_TREE = re.compile(rf"^/api/models/{_REPO}/tree/(?P<revision>[^/]+)(?:/(?P<folder>.*))?$")
_RESOLVE = re.compile(rf"^/{_REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)$")
_BLOB = re.compile(r"^/blobs/(?P<sha256>[0-9a-f]{64})$")
_RANGE = re.compile(r"^bytes=(?P<start>\d*)-(?P<end>\d*)$")


class ServedRequest(NamedTuple):
    """One request the hub answered (``path`` without the query string)."""

    method: str
    path: str
    status: int
    range: str | None


@dataclass(frozen=True)
class _File:
    """A file of a commit, with the identifiers the hub reports for it."""

    data: bytes
    sha256: str
    git_oid: str  # id of the git blob: the file itself, or its LFS pointer
    lfs_pointer: bytes | None  # the pointer text when the file lives in LFS

    @classmethod
    def of(cls, path: str, data: bytes) -> _File:
        sha256 = hashlib.sha256(data).hexdigest()
        pointer = None
        if path.endswith(LFS_SUFFIXES):
            pointer = (
                f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\n"
                f"size {len(data)}\n"
            ).encode()
        stored = data if pointer is None else pointer
        git_oid = hashlib.sha1(b"blob %d\0" % len(stored) + stored).hexdigest()
        return cls(data=data, sha256=sha256, git_oid=git_oid, lfs_pointer=pointer)


@dataclass
class _Repo:
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit
    commits: dict[str, dict[str, _File]] = field(default_factory=dict)  # commit -> files

    def resolve(self, revision: str) -> str | None:
        """The commit a branch, tag or commit id names, or None."""
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


@dataclass
class _Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def _json(payload: object) -> _Response:
    return _Response(200, {"Content-Type": "application/json"}, json.dumps(payload).encode())


def _error(code: str, message: str, commit: str | None = None) -> _Response:
    """A hub error: the client dispatches on ``X-Error-Code`` to pick the exception."""
    headers = {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message}
    if commit is not None:
        # Sent with EntryNotFound so that the client can cache the file's absence.
        headers["X-Repo-Commit"] = commit
    return _Response(404, headers, json.dumps({"error": message}).encode())


def _content(data: bytes, range_header: str | None, headers: dict[str, str]) -> _Response:
    """File bytes, or the single byte range asked for (RFC 9110; other forms are ignored
    and answered with the whole file, which the standard allows)."""
    headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", **headers}
    match = _RANGE.match(range_header.strip()) if range_header else None
    if match is None or not (match["start"] or match["end"]):
        return _Response(200, headers, data)
    size = len(data)
    if match["start"]:
        start = int(match["start"])
        end = min(int(match["end"]), size - 1) if match["end"] else size - 1
    else:  # "bytes=-n": the last n bytes
        start, end = max(size - int(match["end"]), 0), size - 1
    if start >= size or start > end:
        return _Response(416, {"Content-Range": f"bytes */{size}"})
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return _Response(206, headers, data[start : end + 1])


class LocalHub:
    """A Hugging Face Hub on 127.0.0.1 serving folders published into it.

    Use as a context manager (or ``start()`` / ``stop()``), point the client at
    :attr:`endpoint` (``HF_ENDPOINT``), and :meth:`publish` folders as repo revisions.
    :attr:`requests` lists what was served, so tests can tell a download from a cache hit.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._repos: dict[str, _Repo] = {}
        self._blobs: dict[str, bytes] = {}  # sha256 -> content, served by the CDN listener
        self._requests: list[ServedRequest] = []
        self._servers: dict[str, _Server] = {}
        self._threads: list[threading.Thread] = []
        self._cut_after: int | None = None  # see cut_next_download

    # -------------------------------------------------------------- lifecycle
    def start(self) -> LocalHub:
        if self._servers:
            raise RuntimeError("the hub is already running")
        for role in ("hub", "cdn"):
            server = _Server(self, role)
            # A short poll interval so that stop() returns promptly.
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            thread.start()
            self._servers[role] = server
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in self._servers.values():
            server.shutdown()
            server.server_close()  # closes the port: clients now get "connection refused"
        for thread in self._threads:
            thread.join()
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _url(self, role: str) -> str:
        if role not in self._servers:
            raise RuntimeError("the hub is not running; call start() first")
        host, port = self._servers[role].server_address[:2]
        return f"http://{host}:{port}"

    @property
    def endpoint(self) -> str:
        """Base URL of the hub, for ``HF_ENDPOINT``."""
        return self._url("hub")

    @property
    def requests(self) -> list[ServedRequest]:
        """Every request answered so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    # ------------------------------------------------------------- publishing
    def publish(self, repo_id: str, folder: str | Path, revision: str = "main") -> str:
        """Serve the files under ``folder`` as ``repo_id`` at branch (or tag) ``revision``.

        Publishing again to the same revision moves it to the new commit; earlier
        commits stay reachable by their id, as on the hub.

        Returns:
            The commit id (40 hex digits, derived from the repo id and the contents).
        """
        if _COMMIT.fullmatch(revision):
            raise ValueError(f"{revision!r} looks like a commit id; name a branch or tag")
        folder = Path(folder)
        files = {
            path.relative_to(folder).as_posix(): path.read_bytes()
            for path in sorted(folder.rglob("*"))
            if path.is_file()
        }
        if not files:
            raise ValueError(f"{folder} has no files to publish")
        entries = {path: _File.of(path, data) for path, data in files.items()}
        digest = hashlib.sha1(repo_id.encode())
        for path, entry in entries.items():
            digest.update(f"\0{path}\0{entry.git_oid}".encode())
        commit = digest.hexdigest()
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo())
            repo.commits[commit] = entries
            repo.refs[revision] = commit
            for entry in entries.values():
                self._blobs[entry.sha256] = entry.data
        return commit

    # ---------------------------------------------------------------- serving
    def _lookup(self, repo_id: str, revision: str) -> tuple[str, dict[str, _File]] | _Response:
        """The commit and files at ``revision``, or the hub's error for a wrong name."""
        with self._lock:
            repo = self._repos.get(repo_id)
            if repo is None:
                return _error("RepoNotFound", "Repository not found")
            commit = repo.resolve(revision)
            if commit is None:
                return _error("RevisionNotFound", f"Invalid rev id: {revision}")
            return commit, repo.commits[commit]

    def _respond(self, role: str, path: str, query: str, range_header: str | None) -> _Response:
        if role == "cdn":
            match = _BLOB.match(path)
            with self._lock:
                data = self._blobs.get(match["sha256"]) if match else None
            if data is None:
                return _Response(404, {}, b"no such blob")
            return _content(data, range_header, {"ETag": f'"{match["sha256"]}"'})

        if match := _RESOLVE.match(path):
            revision, file = unquote(match["revision"]), unquote(match["path"])
            return self._resolve(match["repo"], revision, file, range_header)
        if match := _TREE.match(path):
            recursive = parse_qs(query).get("recursive", ["false"])[0].lower() == "true"
            folder = unquote(match["folder"] or "").strip("/")
            return self._tree(match["repo"], unquote(match["revision"]), folder, recursive)
        if match := _INFO.match(path):
            blobs = parse_qs(query).get("blobs", ["false"])[0].lower() == "true"
            return self._info(match["repo"], unquote(match["revision"] or "main"), blobs)
        return _Response(404, {}, b"not a hub route")

    def _info(self, repo_id: str, revision: str, blobs: bool) -> _Response:
        found = self._lookup(repo_id, revision)
        if isinstance(found, _Response):
            return found
        commit, files = found
        siblings = []
        for path, entry in files.items():
            sibling: dict[str, object] = {"rfilename": path}
            if blobs:  # ?blobs=true (files_metadata) adds sizes and LFS metadata
                sibling.update(size=len(entry.data), blobId=entry.git_oid)
                if entry.lfs_pointer is not None:
                    sibling["lfs"] = {
                        "size": len(entry.data),
                        "sha256": entry.sha256,
                        "pointerSize": len(entry.lfs_pointer),
                    }
            siblings.append(sibling)
        return _json(
            {
                "_id": commit[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0] if "/" in repo_id else None,
                "sha": commit,
                "private": False,
                "gated": False,
                "disabled": False,
                "tags": [],
                "siblings": siblings,
            }
        )

    def _tree(self, repo_id: str, revision: str, folder: str, recursive: bool) -> _Response:
        found = self._lookup(repo_id, revision)
        if isinstance(found, _Response):
            return found
        commit, files = found
        prefix = f"{folder}/" if folder else ""
        listing: list[dict[str, object]] = []
        folders: set[str] = set()
        for path, entry in files.items():
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            # Every folder between `folder` and the file (only the first one when not
            # recursive), listed once each.
            depth = len(parts) - 1 if recursive else min(len(parts) - 1, 1)
            for i in range(1, depth + 1):
                folders.add(prefix + "/".join(parts[:i]))
            if len(parts) > 1 and not recursive:
                continue
            item: dict[str, object] = {
                "type": "file", "oid": entry.git_oid, "size": len(entry.data), "path": path,
            }  # fmt: skip
            if entry.lfs_pointer is not None:
                item["lfs"] = {
                    "oid": entry.sha256,
                    "size": len(entry.data),
                    "pointerSize": len(entry.lfs_pointer),
                }
            listing.append(item)
        if folder and not listing and not folders:
            return _error("EntryNotFound", f"{folder} does not exist on {revision}", commit)
        for path in sorted(folders):
            oid = hashlib.sha1(f"{commit}\0{path}".encode()).hexdigest()
            listing.append({"type": "directory", "oid": oid, "size": 0, "path": path})
        # One page: no "Link: <...>; rel=next" header, so the client stops here.
        return _json(listing)

    def _resolve(
        self, repo_id: str, revision: str, path: str, range_header: str | None
    ) -> _Response:
        found = self._lookup(repo_id, revision)
        if isinstance(found, _Response):
            return found
        commit, files = found
        entry = files.get(path)
        if entry is None:
            return _error("EntryNotFound", f"{path} does not exist on {revision}", commit)
        if entry.lfs_pointer is None:
            headers = {"ETag": f'"{entry.git_oid}"', "X-Repo-Commit": commit}
            return _content(entry.data, range_header, headers)
        # LFS: redirect to the CDN; the metadata of the real file rides on the redirect.
        return _Response(
            302,
            {
                "Location": f"{self._url('cdn')}/blobs/{entry.sha256}",
                "ETag": f'"{entry.git_oid}"',
                "X-Linked-Etag": f'"{entry.sha256}"',
                "X-Linked-Size": str(len(entry.data)),
                "X-Repo-Commit": commit,
            },
        )

    def cut_next_download(self, after_bytes: int) -> None:
        """Make the next file download from the CDN stop after ``after_bytes`` bytes of
        its body, the connection closed as by a network failure (the headers still
        announce the whole length)."""
        with self._lock:
            self._cut_after = after_bytes

    def _take_cut(self) -> int | None:
        with self._lock:
            cut, self._cut_after = self._cut_after, None
            return cut

    def _serve(self, role: str, method: str, raw_path: str, range_header: str | None) -> _Response:
        url = urlsplit(raw_path)
        response = self._respond(role, url.path, url.query, range_header)
        with self._lock:
            self._requests.append(ServedRequest(method, url.path, response.status, range_header))
        return response


class _Server(ThreadingHTTPServer):
    """One listener of a :class:`LocalHub`: the hub itself, or its CDN."""

    daemon_threads = True  # a handler stuck on a slow client never blocks interpreter exit

    def __init__(self, hub: LocalHub, role: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)  # port 0: any free port
        self.hub = hub
        self.role = role

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hangs up mid-response is normal (it may have what it needs);
        # anything else is a bug in this server and is printed.
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0 closes the connection after each response. The client keeps a pool of
    # keep-alive connections; with 1.0 none outlives its request, so a stopped hub is
    # really unreachable instead of still answering on an old connection.
    protocol_version = "HTTP/1.0"
    server: _Server

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        response = self.server.hub._serve(
            self.server.role, self.command, self.path, self.headers.get("Range")
        )
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        # HEAD reports the length the GET would have, as the client reads sizes from it.
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if not send_body:
            return
        cut = self.server.hub._take_cut() if self.server.role == "cdn" else None
        if cut is not None and response.status in (200, 206) and cut < len(response.body):
            self.wfile.write(response.body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)  # the network drops mid-file
            return
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: object) -> None:
        """Silent: the hub's own log (``LocalHub.requests``) is what tests look at."""
