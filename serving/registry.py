"""Model resolution: turn ``models:/<name>@<alias>`` into a downloaded version.

The API side of the server (the main process at start-up, then the refresher
thread of the API process) talks to MLflow; inference workers never do. A
resolved version is downloaded once into the server's cache folder, checked,
and handed to workers as a :class:`ModelBundle` (a local folder plus what is
known about it), so workers keep serving whatever happens to the registry.

"Checked" means :mod:`ml_platform.ml.safe_load`'s rules: the version passed
every blocking model gate (refused before anything is downloaded otherwise),
its ``model.skops`` and ``model.onnx`` match the sha256 tags recorded at
registration, and no pickle is ever read whatever its ``MLmodel`` says. A
refused version raises :class:`ModelResolutionError` with a short reason
("version 7 refused: artifact hash mismatch (model.skops)"); the refresher
keeps the loaded version serving and shows the reason in ``/health``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ml_platform.ml.safe_load import ModelRefused, gate_refusal, verify_model_dir

log = logging.getLogger(__name__)
SPEC_RELPATH = Path("extra_files") / "dataset_spec.yaml"
EXAMPLE_RELPATH = Path("extra_files") / "input_example.json"
ONNX_RELPATH = Path("extra_files") / "model.onnx"
_URI_PATTERN = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")
_SECRET_QUERY_KEYS = ("token", "password", "secret", "key", "signature", "credential")

# MLflow's HTTP client retries for minutes by default; the refresher has its own backoff.
MLFLOW_CLIENT_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    # No pooled sqlite connections: the API process is forked after start-up resolution.
    "MLFLOW_SQLALCHEMYSTORE_POOLCLASS": "NullPool",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


class ModelResolutionError(RuntimeError):
    """The registry could not be reached, or the version is missing or unusable."""


@dataclass(frozen=True)
class ModelRef:
    """A parsed ``models:/`` URI: a name plus either an alias or a pinned version."""

    name: str
    alias: str | None = None
    version: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"

    @property
    def is_alias(self) -> bool:
        return self.alias is not None


def parse_model_uri(uri: str) -> ModelRef:
    """Parse ``models:/name@alias`` or ``models:/name/<version>``."""
    match = _URI_PATTERN.match(uri.strip())
    if not match:
        raise ModelResolutionError(f"unsupported model URI {uri!r}: use models:/<name>@<alias> or models:/<name>/<n>")
    return ModelRef(match["name"], match["alias"], match["version"])


def redact_uri(uri: str) -> str:
    """A tracking URI safe to show: no password in the netloc, no secret query values."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable uri>"
    netloc, query = parts.netloc, parts.query
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}:***@{host}" if ":" in userinfo else f"***@{host}"
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if any(s in k.lower() for s in _SECRET_QUERY_KEYS) else v) for k, v in pairs], safe="*"
        )
    if (netloc, query) == (parts.netloc, parts.query):
        return uri  # nothing secret (and sqlite:////abs/path keeps its slashes)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@dataclass(frozen=True)
class ModelBundle:
    """A downloaded, checked model version: everything a worker needs to load it."""

    name: str
    version: str
    local_dir: str
    onnx_verified: bool
    run_id: str | None = None
    data_version: str | None = None
    artifact_sha256: dict[str, str] = field(default_factory=dict)  # verified at download; re-checked at load

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def spec_path(self) -> Path:
        return Path(self.local_dir) / SPEC_RELPATH

    @property
    def onnx_path(self) -> Path:
        return Path(self.local_dir) / ONNX_RELPATH

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelBundle:
        return cls(
            name=str(raw["name"]),
            version=str(raw["version"]),
            local_dir=str(raw["local_dir"]),
            onnx_verified=bool(raw["onnx_verified"]),
            run_id=raw.get("run_id"),
            data_version=raw.get("data_version"),
            artifact_sha256={str(k): str(v) for k, v in (raw.get("artifact_sha256") or {}).items()},
        )


def load_bundle_spec(bundle: ModelBundle) -> Any:
    """The dataset spec shipped with the version (``extra_files/dataset_spec.yaml``)."""
    import yaml

    from ml_platform.spec import SpecError, parse_spec

    try:
        raw = yaml.safe_load(bundle.spec_path.read_text())
        return parse_spec(raw, source_path=bundle.spec_path)
    except (OSError, yaml.YAMLError, SpecError) as exc:
        raise ModelResolutionError(f"{bundle.uri}: unusable dataset spec: {exc}") from exc


def load_input_example(bundle: ModelBundle) -> dict[str, Any] | None:
    """The request example logged with the version (``extra_files/input_example.json``), if any."""
    try:
        example = json.loads((Path(bundle.local_dir) / EXAMPLE_RELPATH).read_text())
    except (OSError, ValueError):
        return None
    return example if isinstance(example, dict) else None


def configure_mlflow_client_env() -> None:
    """Bound MLflow's own retries and timeouts (explicit user settings win)."""
    for key, value in MLFLOW_CLIENT_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


class RegistryClient:
    """Resolves, downloads and checks model versions; probes the tracking server."""

    def __init__(self, tracking_uri: str, cache_dir: Path) -> None:
        self.tracking_uri = tracking_uri
        self.cache_dir = cache_dir

    @property
    def is_http(self) -> bool:
        return self.tracking_uri.startswith(("http://", "https://"))

    def _client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def resolve(self, ref: ModelRef) -> Any:
        """The MLflow ``ModelVersion`` the reference points at right now."""
        from mlflow.exceptions import MlflowException

        client = self._client()
        try:
            if ref.alias:
                return client.get_model_version_by_alias(ref.name, ref.alias)
            return client.get_model_version(ref.name, str(ref.version))
        except MlflowException as exc:
            raise ModelResolutionError(f"cannot resolve {ref.uri}: {exc.message}"[:500]) from exc
        except Exception as exc:  # connection errors surface as many types
            raise ModelResolutionError(
                f"cannot reach the registry for {ref.uri}: {type(exc).__name__}: {exc}"[:500]
            ) from exc

    def fetch(self, ref: ModelRef) -> ModelBundle:
        """Resolve ``ref``; download the version if it passed its gates; verify its files against their hashes."""
        model_version = self.resolve(ref)
        version = str(model_version.version)
        tags = dict(getattr(model_version, "tags", None) or {})
        try:
            if reason := gate_refusal(tags):
                raise ModelRefused(f"version {version} refused: {reason}")
            target = self.cache_dir / ref.name / version
            if not (target / "MLmodel").exists():
                self._download(ref.name, version, target)
            hashes = verify_model_dir(version, target, tags, require_gates=True)
        except ModelRefused as exc:
            log.warning("%s: %s", ref.uri, exc)
            raise ModelResolutionError(str(exc)) from exc
        return self._bundle(ref.name, version, target, tags, model_version, hashes)

    def _download(self, name: str, version: str, target: Path) -> None:
        import mlflow
        import mlflow.artifacts

        staging = target.parent / f".{version}.{uuid.uuid4().hex[:8]}.partial"
        staging.mkdir(parents=True, exist_ok=True)
        try:
            # models:/ URIs resolve through the *registry* URI; this process talks to one store.
            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.set_registry_uri(self.tracking_uri)
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}", dst_path=str(staging), tracking_uri=self.tracking_uri
            )
            if not (staging / "MLmodel").exists():
                raise ModelResolutionError(f"models:/{name}/{version}: downloaded artifacts have no MLmodel file")
            # Several API server processes may download the same version at once (each refreshes): a complete
            # folder is never removed, since another process or a worker may be reading it; the first one wins.
            if (target / "MLmodel").exists():
                return
            if target.exists():
                shutil.rmtree(target)  # a leftover without its MLmodel file: never complete
            try:
                os.replace(staging, target)  # workers never see a half-written folder
            except OSError:
                if not (target / "MLmodel").exists():  # not another process's complete copy: a real failure
                    raise
        except ModelResolutionError:
            raise
        except Exception as exc:
            raise ModelResolutionError(
                f"cannot download models:/{name}/{version}: {type(exc).__name__}: {exc}"[:500]
            ) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def _bundle(
        name: str, version: str, local_dir: Path, tags: dict[str, str], model_version: Any, hashes: dict[str, str]
    ) -> ModelBundle:
        if not (local_dir / SPEC_RELPATH).exists():
            raise ModelResolutionError(
                f"models:/{name}/{version} has no {SPEC_RELPATH}: it was not registered by ml_platform"
            )
        onnx_tag = tags.get("onnx")
        onnx_verified = (local_dir / ONNX_RELPATH).exists() and (onnx_tag is None or onnx_tag == "verified")
        return ModelBundle(
            name=name,
            version=version,
            local_dir=str(local_dir),
            onnx_verified=onnx_verified,
            run_id=getattr(model_version, "run_id", None),
            data_version=tags.get("data_version"),
            artifact_sha256=hashes,
        )

    def ping(self) -> bool:
        """Whether the tracking store answers at all (used to tell "down" from "alias missing")."""
        try:
            if self.is_http:
                self.server_version()
            else:
                self._client().search_registered_models(max_results=1)
            return True
        except Exception:
            return False

    def server_version(self) -> str | None:
        """``GET <uri>/version`` of an MLflow tracking server (None for local stores)."""
        if not self.is_http:
            return None
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request

        response = http_request(get_default_host_creds(self.tracking_uri), "/version", "GET", max_retries=0, timeout=5)
        response.raise_for_status()
        return response.text.strip()[:64]


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON so readers see the old or the new file, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, sort_keys=True))
    os.replace(tmp, path)
