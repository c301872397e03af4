"""A local stand-in for the Hugging Face Hub's file endpoint, enough for `huggingface_hub.hf_hub_download`.

`hf_hub_download` (huggingface_hub 2.x) sends `HEAD /{repo_id}/resolve/{revision}/{filename}` and needs, on a
200 answer, the `X-Repo-Commit` and `ETag` headers (it refuses a response without them) and reads the size from
`Content-Length`; it then GETs the same URL (optionally with a `Range` header) and checks the size. A 404
carries `X-Error-Code: EntryNotFound` or `RepoNotFound` so that huggingface_hub raises its specific errors.

`huggingface_hub.snapshot_download` first asks `GET /api/models/{repo_id}/revision/{revision}` for the commit
(`sha`) and then `GET /api/models/{repo_id}/tree/{commit}?recursive=...` for the files (a JSON list of
`{"type": "file", "path", "size", "oid"}`; no `Link` header: one page). Revisions are the names in `revisions`
(branch or tag -> commit) and the commits themselves; another answers 404 `RevisionNotFound`.

Files are served from `root/{repo_id}/{filename}`, the same at every revision. Every request is recorded in
`requests` as (method, repo_id, filename), with "api:revision" or "api:tree" as the filename of API calls. `stall` names files whose GET sends half the body and then waits until `release`
is set, to test interrupted downloads.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<kind>revision|tree)/(?P<rev>[^/]+)/?$")


class FakeHub:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.requests: list[tuple[str, str, str]] = []
        self.revisions: dict[str, str] = {"main": COMMIT}
        self.stall: set[str] = set()
        self.stalled = threading.Event()  # set once a stalled GET has sent its first half
        self.release = threading.Event()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_HEAD(self):
                hub._serve(self, body=False)

            def do_GET(self):
                hub._serve(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, repo: str, filename: str, data: bytes) -> None:
        path = self.root / repo / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def count(self, method: str | None = None) -> int:
        return sum(1 for m, _, _ in self.requests if method is None or m == method)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def commit(self, revision: str) -> str | None:
        revision = unquote(revision)
        return self.revisions.get(revision) or (revision if revision in self.revisions.values() else None)

    def _serve(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = handler.path.split("?")[0]
        api = _API.match(path)
        if api:
            self._serve_api(handler, api["repo"], api["kind"], api["rev"])
            return
        match = _RESOLVE.match(path)
        if not match:
            self._error(handler, 404, "RepoNotFound")
            return
        repo, filename = match["repo"], match["file"]
        self.requests.append((handler.command, repo, filename))
        if not (self.root / repo).is_dir():
            self._error(handler, 404, "RepoNotFound")
            return
        commit = self.commit(match["rev"])
        if commit is None:
            self._error(handler, 404, "RevisionNotFound")
            return
        path = self.root / repo / filename
        if not path.is_file():
            self._error(handler, 404, "EntryNotFound")
            return
        data = path.read_bytes()
        start = 0
        range_header = handler.headers.get("Range")
        if body and range_header and (m := re.match(r"bytes=(\d+)-$", range_header)):
            start = int(m[1])
        handler.send_response(206 if start else 200)
        handler.send_header("X-Repo-Commit", commit)
        handler.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        handler.send_header("Content-Length", str(len(data) - start))
        handler.send_header("Content-Type", "application/octet-stream")
        handler.end_headers()
        if not body:
            return
        payload = data[start:]
        if filename in self.stall:
            handler.wfile.write(payload[: len(payload) // 2])
            handler.wfile.flush()
            self.stalled.set()
            self.release.wait(timeout=30)
            handler.close_connection = True
            return
        handler.wfile.write(payload)

    def _serve_api(self, handler: BaseHTTPRequestHandler, repo: str, kind: str, revision: str) -> None:
        self.requests.append((handler.command, repo, f"api:{kind}"))
        folder = self.root / repo
        if not folder.is_dir():
            self._error(handler, 404, "RepoNotFound")
            return
        commit = self.commit(revision)
        if commit is None:
            self._error(handler, 404, "RevisionNotFound")
            return
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        names = [p.relative_to(folder).as_posix() for p in files]
        if kind == "revision":
            answer = {"id": repo, "sha": commit, "siblings": [{"rfilename": n} for n in names]}
        else:
            answer = [{"type": "file", "path": n, "size": p.stat().st_size,
                       "oid": hashlib.sha1(p.read_bytes()).hexdigest()} for n, p in zip(names, files)]
        data = json.dumps(answer).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)

    @staticmethod
    def _error(handler: BaseHTTPRequestHandler, status: int, code: str) -> None:
        handler.send_response(status)
        handler.send_header("X-Error-Code", code)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
