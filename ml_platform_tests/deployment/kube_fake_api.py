"""A fake Kubernetes API server for the backend tests: a real HTTPS server on 127.0.0.1, no cluster.

No Kubernetes cluster can run where these tests run, so the API server is the one
part replaced: :class:`FakeKubeServer` is a real ``http.server`` over TLS (a
self-signed certificate made with ``openssl``, trusted through the kubeconfig's
``certificate-authority``) in a thread, answering the subset of the API the deployer
calls. :class:`ObjectStore` implements that subset with the API server's rules
that matter here: ``resourceVersion`` on every object (a ``PUT`` carrying a stale
one gets 409 Conflict, a ``POST`` of an existing name 409 AlreadyExists),
``generation`` bumped when a Deployment's spec changes, JSON Patch (with ``test``),
JSON merge patch and the strategic merge patch the backend sends (lists of
containers and env merged by ``name``), label-selected pod lists, bearer tokens
checked (401 otherwise) and failures injected on demand (429 with
``Retry-After``, 503, 409). Errors are ``Status`` objects with
``Content-Type: application/json`` like the real server's.

Not covered (needs a cluster): admission, field ownership, controllers moving
``status`` (tests set it), watches.
"""

from __future__ import annotations

import copy
import json
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml


@dataclass
class Recorded:
    """One request as the server received it."""

    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: Any

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    @property
    def token(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Recorded], Reply]


def status_reply(code: int, reason: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason}
    body["message"] = message
    return Reply(code, body, headers or {})


class FakeKubeServer:
    """HTTPS server in a thread; every request is recorded, checked for a token and passed to ``handler``."""

    def __init__(self, handler: Handler, workdir: Path, tokens: set[str] | None = None) -> None:
        self.handler = handler
        self.tokens = tokens  # accepted bearer tokens (None: no auth check)
        self.requests: list[Recorded] = []
        self.failures: list[tuple[Callable[[Recorded], bool], Reply]] = []
        self.lock = threading.Lock()
        self.cert, key = make_certificate(workdir)
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                recorded = Recorded(
                    method=self.command,
                    path=url.path,
                    params={k: v[-1] for k, v in parse_qs(url.query).items()},
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=json.loads(raw) if raw else None,
                )
                reply = server.dispatch(recorded)
                payload = json.dumps(reply.body).encode() if reply.body is not None else b""
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PATCH = do_PUT = do_POST = do_DELETE = _serve

        import ssl

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FakeKubeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def fail(self, match: Callable[[Recorded], bool], reply: Reply, times: int = 1) -> None:
        """Answer the next ``times`` requests that ``match`` with ``reply`` instead of handling them."""
        with self.lock:
            self.failures.extend([(match, reply)] * times)

    def dispatch(self, request: Recorded) -> Reply:
        with self.lock:
            self.requests.append(request)
            if self.tokens is not None and request.token not in self.tokens:
                return status_reply(401, "Unauthorized", "Unauthorized")
            for i, (match, reply) in enumerate(self.failures):
                if match(request):
                    del self.failures[i]
                    return reply
            return self.handler(request)

    def kubeconfig(self, path: Path, *, token_file: Path | None = None, namespace: str = "ml-serving") -> Path:
        """A kubeconfig with context ``fake`` (current) pointing here, trusting this server's certificate."""
        user: dict[str, Any] = {"tokenFile": str(token_file)} if token_file else {}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url, "certificate-authority": str(self.cert)}}],
            "users": [{"name": "deployer", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "deployer", "namespace": namespace}}],
        }
        path.write_text(yaml.safe_dump(config))
        return path


def make_certificate(workdir: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl), returned as (cert, key) files."""
    cert, key = workdir / "apiserver.crt", workdir / "apiserver.key"
    if not cert.exists():
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
                "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
    return cert, key


# -- an object store with the API server's concurrency rules --------------------------------


RESOURCES = {"deployments": "Deployment", "httproutes": "HTTPRoute", "ingresses": "Ingress"}
RESOURCES |= {"configmaps": "ConfigMap", "pods": "Pod"}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Merge patch where lists of objects with a ``name`` merge by name (containers, env): enough for the backend."""
    if isinstance(patch, dict) and isinstance(target, dict):
        result = dict(target)
        for key, value in patch.items():
            result[key] = None if value is None else strategic_merge_patch(target.get(key), value)
        return {k: v for k, v in result.items() if v is not None}
    if isinstance(patch, list) and isinstance(target, list) and all(isinstance(i, dict) and "name" in i for i in patch):
        merged = [copy.deepcopy(i) for i in target]
        for item in patch:
            index = next((n for n, old in enumerate(merged) if old.get("name") == item["name"]), None)
            if index is None:
                merged.append(copy.deepcopy(item))
            else:
                merged[index] = strategic_merge_patch(merged[index], item)
        return merged
    return copy.deepcopy(patch)


class PatchTestFailed(ValueError):
    pass


def json_patch(target: Any, operations: list[dict[str, Any]]) -> Any:
    """RFC 6902 ``test``/``replace``/``add`` on object and list paths."""
    doc = copy.deepcopy(target)
    for op in operations:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last: Any = int(parts[-1]) if isinstance(parent, list) else parts[-1]
        if op["op"] == "test":
            if parent[last] != op["value"]:
                raise PatchTestFailed(f"test operation failed at {op['path']}")
        elif op["op"] in ("replace", "add"):
            parent[last] = op["value"]
        else:
            raise ValueError(f"unsupported op {op['op']}")
    return doc


class ObjectStore:
    """Namespaced objects by (plural, namespace, name), with resourceVersion, generation and patch semantics."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.version = 100
        self.on_read: Callable[[dict[str, Any]], None] | None = None  # e.g. a controller moving status

    def _bump(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        self.version += 1
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self.version)
        if old is None:
            meta["generation"] = 1
        elif obj.get("spec") != old.get("spec"):
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1

    def put_object(self, plural: str, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        stored = copy.deepcopy(obj)
        stored.setdefault("metadata", {})["namespace"] = namespace
        key = (plural, namespace, stored["metadata"]["name"])
        self._bump(stored, self.objects.get(key))
        self.objects[key] = stored
        return stored

    def get_object(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((plural, namespace, name))
        return None if obj is None else copy.deepcopy(obj)

    def __call__(self, request: Recorded) -> Reply:
        parts = request.path.strip("/").split("/")
        try:
            ns_index = parts.index("namespaces")
        except ValueError:
            return status_reply(404, "NotFound", f"no route {request.path}")
        namespace, plural = parts[ns_index + 1], parts[ns_index + 2]
        name = parts[ns_index + 3] if len(parts) > ns_index + 3 else None
        if plural not in RESOURCES:
            return status_reply(404, "NotFound", f"unknown resource {plural}")
        key = (plural, namespace, name or "")
        current = self.objects.get(key)
        if request.method == "GET" and name is None:
            selector = dict(p.split("=", 1) for p in request.params.get("labelSelector", "").split(",") if p)
            items = [
                copy.deepcopy(o)
                for (p, ns, _), o in sorted(self.objects.items())
                if p == plural and ns == namespace
                and all((o["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
            ]  # fmt: skip
            kind = RESOURCES[plural] + "List"
            return Reply(200, {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": str(self.version)},
                               "items": items})  # fmt: skip
        if request.method == "POST":
            body = request.body
            new_key = (plural, namespace, body["metadata"]["name"])
            if new_key in self.objects:
                return status_reply(409, "AlreadyExists", f'{plural} "{new_key[2]}" already exists')
            return Reply(201, self.put_object(plural, namespace, body))
        if current is None:
            return status_reply(404, "NotFound", f'{plural} "{name}" not found')
        if request.method == "GET":
            if self.on_read is not None:
                self.on_read(current)
            return Reply(200, copy.deepcopy(current))
        if request.method == "PUT":
            sent = (request.body.get("metadata") or {}).get("resourceVersion")
            if sent and sent != current["metadata"]["resourceVersion"]:
                return status_reply(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {plural} "{name}": the object has been modified; '
                    "please apply your changes to the latest version and try again",
                )
            body = copy.deepcopy(request.body)
            body.setdefault("metadata", {})["name"] = name
            return Reply(200, self._store_update(key, current, body))
        if request.method == "PATCH":
            try:
                if request.content_type == "application/json-patch+json":
                    updated = json_patch(current, request.body)
                elif request.content_type == "application/merge-patch+json":
                    updated = merge_patch(current, request.body)
                elif request.content_type == "application/strategic-merge-patch+json":
                    updated = strategic_merge_patch(current, request.body)
                else:
                    return status_reply(415, "UnsupportedMediaType", str(request.content_type))
            except (PatchTestFailed, KeyError, IndexError) as exc:
                return status_reply(422, "Invalid", str(exc))
            return Reply(200, self._store_update(key, current, updated))
        return status_reply(405, "MethodNotAllowed", request.method)

    def _store_update(self, key: tuple[str, str, str], old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        new = copy.deepcopy(new)
        new.setdefault("metadata", {})
        for kept in ("namespace", "name", "generation", "uid", "creationTimestamp"):
            if kept in old["metadata"]:
                new["metadata"][kept] = old["metadata"][kept]
        if "status" in old and "status" not in new:
            new["status"] = old["status"]
        self._bump(new, old)
        self.objects[key] = new
        return copy.deepcopy(new)
