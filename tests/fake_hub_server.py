"""A local stand-in for the Hugging Face Hub's file API, speaking what ``huggingface_hub.snapshot_download`` calls.

The hub cannot be reached from the test machines, so this real ``ThreadingHTTPServer`` on 127.0.0.1 answers the
requests huggingface_hub 2.x makes for a model download (read from its source, ``hf_api.py`` and
``file_download.py``):

* ``GET /api/models/{owner}/{name}[/revision/{rev}]`` — the model info JSON (``id``, ``sha``, ``siblings``); an unknown
  repo is ``404`` with ``X-Error-Code: RepoNotFound``, an unknown revision ``X-Error-Code: RevisionNotFound``;
* ``GET /api/models/{owner}/{name}/tree/{rev}?recursive=True`` — the file listing (``type``, ``path``, ``size``,
  ``oid`` = git blob id, and ``lfs`` = ``{oid: sha256, size, pointerSize}`` for large files), one page;
* ``HEAD``/``GET /{owner}/{name}/resolve/{rev}/{path}`` — ``ETag`` (sha256 for LFS files, the git blob id otherwise),
  ``X-Repo-Commit``, ``Content-Length``, ``Accept-Ranges``; ``Range: bytes=N-`` gets ``206`` + ``Content-Range``.

Test knobs: ``drop_after[path] = n`` makes the next GET of that file send its full ``Content-Length`` but close the
connection after ``n`` bytes (a dropped line); ``corrupt[path] = bytes`` serves other bytes of the same length while
the listing keeps the true checksum (a damaged transfer). ``requests`` records ``(method, path, range)``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_MIN = 1024
"""Files this big or bigger are listed as LFS files (sha256 in the listing and the ETag), like the hub's weights."""


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """``with FakeHub({"org/tiny": {"config.json": b"{...}", ...}}) as hub: ... hub.url``"""

    def __init__(self, repos: dict[str, dict[str, bytes]] | None = None, commit: str = COMMIT):
        self.repos: dict[str, dict[str, bytes]] = dict(repos or {})
        self.commit = commit
        self.drop_after: dict[str, int] = {}
        self.corrupt: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # ---- what the hub knows about a file ----------------------------------------------------------------------------
    @staticmethod
    def is_lfs(data: bytes) -> bool:
        return len(data) >= LFS_MIN

    def etag(self, data: bytes) -> str:
        return hashlib.sha256(data).hexdigest() if self.is_lfs(data) else git_blob_id(data)

    def tree(self, repo: str) -> list[dict]:
        out = []
        for path, data in sorted(self.repos[repo].items()):
            entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}
            if self.is_lfs(data):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            out.append(entry)
        return out

    def gets(self, path: str) -> list[str | None]:
        """The Range header of each GET of ``path`` (None: the whole file)."""
        return [r for m, p, r in self.requests if m == "GET" and p.endswith("/resolve/" + self.commit + "/" + path)]

    # ---- server -----------------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._handle(self, head=True)

            def do_GET(self):
                hub._handle(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _json(self, h: BaseHTTPRequestHandler, status: int, body, headers: dict | None = None) -> None:
        raw = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(raw)

    def _not_found(self, h, code: str, message: str) -> None:
        self._json(h, 404, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        with self._lock:
            self.requests.append(("HEAD" if head else "GET", path, h.headers.get("Range")))
        m = re.match(r"^/api/models/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+)(?:/.*)?)?$", path)
        if m:
            repo, kind, rev = m.groups()
            kind, rev = kind or "revision", rev or "main"
            if repo not in self.repos:
                return self._not_found(h, "RepoNotFound", "Repository not found")
            if rev not in ("main", self.commit):
                return self._not_found(h, "RevisionNotFound", "Invalid rev id: " + rev)
            if kind == "revision":
                siblings = [{"rfilename": p} for p in sorted(self.repos[repo])]
                return self._json(h, 200, {"id": repo, "modelId": repo, "sha": self.commit, "siblings": siblings})
            return self._json(h, 200, self.tree(repo))
        m = re.match(r"^/api/v1/models/([^/]+/[^/]+)/repo/files$", path)
        if m:
            repo = m.group(1)
            if repo not in self.repos:
                return self._json(h, 404, {"Code": 10010101004, "Message": "model not found", "Success": False})
            files = [
                {
                    "Path": p,
                    "Name": p.rsplit("/", 1)[-1],
                    "Size": len(d),
                    "Sha256": hashlib.sha256(d).hexdigest(),
                    "Type": "blob",
                    "Revision": self.commit,
                }
                for p, d in sorted(self.repos[repo].items())
            ]
            return self._json(h, 200, {"Code": 200, "Data": {"Files": files}, "Success": True})
        m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        ms = re.match(r"^/api/v1/models/([^/]+/[^/]+)/repo$", path)  # ModelScope: ?Revision=…&FilePath=…
        if ms:
            query = parse_qs(urlsplit(h.path).query)
            repo, file = ms.group(1), (query.get("FilePath") or [""])[0]
        elif m:
            repo, _rev, file = m.groups()
        else:
            return self._not_found(h, "EntryNotFound", "Not found")
        if repo not in self.repos:
            return self._not_found(h, "RepoNotFound", "Repository not found")
        if file not in self.repos[repo]:
            return self._not_found(h, "EntryNotFound", "Entry not found")
        true = self.repos[repo][file]
        data = self.corrupt.get(file, true)
        start = 0
        rng = h.headers.get("Range")
        if rng and not head:
            rm = re.match(r"bytes=(\d+)-$", rng.strip())
            start = int(rm.group(1)) if rm else 0
        body = data[start:]
        h.send_response(206 if start else 200)
        h.send_header("ETag", f'"{self.etag(true)}"')
        h.send_header("X-Repo-Commit", self.commit)
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(body)))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if head:
            return
        with self._lock:
            cut = self.drop_after.pop(file, None)
        if cut is not None and cut < len(body):
            h.wfile.write(body[:cut])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)  # the line drops mid-file
            return
        h.wfile.write(body)
