"""A stand-in Hugging Face Hub on 127.0.0.1, for the real ``huggingface_hub`` client.

Answers what create_repo, upload_folder (preupload + commit), snapshot_download and
hf_hub_download call (the routes are in ``post`` and ``get`` below; the callers are
``pipelines/publish.py`` and ``serving/hub.py``), keeping every commit in memory, so
revisions can be pinned. Point the client at it with ``HF_ENDPOINT`` (read at import) or
``endpoint=``; any token is accepted.

In tests: ``with HubStandIn() as hub: hub.url``. From the command line (the README's "Try
it without network"), serving until Ctrl-C:

    python -m tests.hub_server --port 8765
    HF_ENDPOINT=http://127.0.0.1:8765 HF_TOKEN=any python -m pipelines publish ...
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler
from urllib.parse import unquote, urlparse

from tests.loopback import LoopbackServer, port_argument, serve_until_interrupted


class HubStandIn(LoopbackServer):
    """``with HubStandIn() as hub: hub.url``; ``port=0``: a free port."""

    def __init__(self, *, port: int = 0):
        self.port = port
        self.repos: dict[str, dict] = {}   # repo_id -> {"commits": {sha: files}, "main": sha}
        self.requests: list[tuple[str, str]] = []
        self.authorizations: list[str | None] = []
        self._lock = threading.Lock()

    def __enter__(self) -> "HubStandIn":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status, body=b"", headers=None, head=False):
                if isinstance(body, (dict, list)):
                    body = json.dumps(body).encode()
                    headers = {"Content-Type": "application/json", **(headers or {})}
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _body(self):
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length)
                if self.headers.get("Content-Encoding") == "gzip":
                    data = gzip.decompress(data)
                return data

            def do_POST(self):
                hub._record(self)
                status, body, headers = hub.post(urlparse(self.path).path, self._body())
                self._send(status, body, headers)

            def do_GET(self):
                hub._record(self)
                status, body, headers = hub.get(urlparse(self.path))
                self._send(status, body, headers)

            def do_HEAD(self):
                hub._record(self)
                status, body, headers = hub.get(urlparse(self.path))
                headers = dict(headers or {})
                if isinstance(body, bytes):
                    headers["Content-Length"] = str(len(body))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", "0")
                self.end_headers()

        return self._serve(Handler)

    @property
    def url(self) -> str:
        return self.origin

    def _record(self, handler):
        with self._lock:
            self.requests.append((handler.command, handler.path))
            self.authorizations.append(handler.headers.get("Authorization"))

    # -- API ----------------------------------------------------------------------------
    def post(self, path: str, body: bytes):
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") \
                else payload["name"]
            with self._lock:
                if repo_id in self.repos:
                    return 409, {"error": "You already created this model repo",
                                 "url": f"{self.url}/{repo_id}"}, {}
                empty = self._sha({})
                self.repos[repo_id] = {"commits": {empty: {}}, "main": empty,
                                       "private": payload.get("visibility") == "private"}
            return 200, {"url": f"{self.url}/{repo_id}"}, {}
        if path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}, {}
        parts = path.split("/")
        # /api/models/{ns}/{name}/{preupload|commit}/{rev}
        if len(parts) >= 7 and parts[1] == "api" and parts[2] == "models":
            repo_id, action = f"{parts[3]}/{parts[4]}", parts[5]
            if repo_id not in self.repos:
                return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
            if action == "preupload":
                files = json.loads(body)["files"]
                return 200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                        "shouldIgnore": False, "oid": None} for f in files]}, {}
            if action == "commit":
                return self._commit(repo_id, body)
        return 404, {"error": f"no route {path}"}, {}

    def _commit(self, repo_id: str, body: bytes):
        repo = self.repos[repo_id]
        files = dict(repo["commits"][repo["main"]])
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "deletedFile":
                files.pop(value["path"], None)
        sha = self._sha(files, parent=repo["main"])
        with self._lock:
            repo["commits"][sha] = files
            repo["main"] = sha
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{sha}", "commitOid": sha}, {}

    @staticmethod
    def _sha(files: dict, parent: str = "") -> str:
        digest = hashlib.sha1(parent.encode())
        for path in sorted(files):
            digest.update(path.encode() + hashlib.sha1(files[path]).digest())
        return digest.hexdigest()

    def _resolve(self, repo_id: str, revision: str):
        repo = self.repos.get(repo_id)
        if repo is None:
            return None, None
        sha = repo["main"] if revision == "main" else revision
        return sha, repo["commits"].get(sha)

    def get(self, url):
        path = unquote(url.path)
        parts = path.split("/")
        not_found = {"X-Error-Code": "RepoNotFound"}
        if len(parts) >= 5 and parts[1] == "api" and parts[2] == "models":
            repo_id = f"{parts[3]}/{parts[4]}"
            if repo_id not in self.repos:
                return 404, {"error": "Repository not found"}, not_found
            revision = parts[6] if len(parts) > 6 and parts[5] in ("revision", "tree") else "main"
            sha, files = self._resolve(repo_id, revision)
            if files is None:
                return 404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"}
            if len(parts) > 5 and parts[5] == "tree":
                return 200, [{"type": "file", "path": p, "size": len(b),
                              "oid": hashlib.sha1(b).hexdigest()} for p, b in sorted(files.items())], {}
            return 200, {"id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                         "siblings": [{"rfilename": p} for p in sorted(files)]}, {}
        # /{ns}/{name}/resolve/{rev}/{path...}
        if len(parts) >= 6 and parts[3] == "resolve":
            repo_id, revision, file_path = f"{parts[1]}/{parts[2]}", parts[4], "/".join(parts[5:])
            if repo_id not in self.repos:
                return 404, b"", not_found
            sha, files = self._resolve(repo_id, revision)
            if files is None:
                return 404, b"", {"X-Error-Code": "RevisionNotFound"}
            if file_path not in files:
                return 404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha}
            content = files[file_path]
            return 200, content, {"X-Repo-Commit": sha,
                                  "ETag": f'"{hashlib.sha1(content).hexdigest()}"',
                                  "Content-Type": "application/octet-stream"}
        return 404, b"", not_found


def _describe(hub: HubStandIn) -> list[str]:
    return [f"stand-in Hugging Face Hub at {hub.url} (repos live in memory until it stops; "
            "Ctrl-C stops it)",
            "point huggingface_hub and `python -m pipelines publish` at it with:",
            f"  export HF_ENDPOINT={hub.url} HF_TOKEN=any"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.hub_server",
        description="Serves a stand-in Hugging Face Hub on 127.0.0.1 until Ctrl-C: create "
                    "repos, upload, download and pin revisions with the real client, with "
                    "no network and no account.")
    port_argument(parser, 8765)
    args = parser.parse_args(argv)
    return serve_until_interrupted(HubStandIn(port=args.port), _describe)


if __name__ == "__main__":
    sys.exit(main())
