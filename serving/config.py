"""Serving configuration: command-line flags, each with an environment equivalent.

Precedence is flag > environment variable > default. Parsing imports nothing
heavy, so ``python -m serving --help`` answers instantly and the environment
(``PROMETHEUS_MULTIPROC_DIR`` in particular) can be prepared before any
library that reads it is imported.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml_platform.catalog import MODEL_NAME_PATTERN, CatalogError, list_models
from serving.registry import ModelResolutionError, parse_model_uri

ALLOWED_HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServe accepts
TRACK_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
RUNTIMES = ("auto", "sklearn")
FEEDBACK_KEY_MIN_BYTES = 32  # a feedback signing key's minimum length


class ConfigError(ValueError):
    """A flag or environment variable has an invalid value."""


@dataclass(frozen=True)
class ServingConfig:
    """Everything ``python -m serving`` needs to start, already validated."""

    model_uri: str
    model_name: str = ""  # the platform's model name (catalog instance, e.g. iris): logs, metrics, /health
    host: str = "127.0.0.1"
    port: int = 8000
    track: str = "stable"
    workers: int = 2
    api_servers: int = 2
    max_batch_size: int = 32
    batch_timeout: float = 0.0
    batch_row_limit: int = 512
    inline_max_rows: int = 64
    max_batch_rows: int = 10_000
    max_body_bytes: int | None = None  # None: derived from MAX_BATCH_ROWS and the request schema
    max_inflight_body_bytes: int = 64 * 1024 * 1024
    max_header_bytes: int = 32 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    drain_timeout: float = 20.0
    model_auto_refresh_seconds: float = 60.0
    request_timeout: float = 30.0
    runtime: str = "auto"
    feedback_cache_size: int = 100_000
    log_level: str = "info"
    admin_api_token: str | None = field(default=None, repr=False)
    feedback_signing_key: bytes = field(default=b"", repr=False)  # empty: generated at start (load_config)
    feedback_key_source: str = "generated"
    prometheus_multiproc_dir: Path | None = None
    prediction_log_dir: Path | None = None  # None: <platform home>/logs/predictions/<model_name>
    platform_home: Path | None = None
    tracking_uri: str | None = None

    @property
    def admin_enabled(self) -> bool:
        return bool(self.admin_api_token)


@dataclass(frozen=True)
class _Option:
    """One setting: its flag, environment variable, parser and default."""

    name: str
    env: str
    parse: Callable[[str], Any]
    help: str
    default: Any = None


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be >= 1")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a finite number >= 0")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a finite number > 0")
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 1024 <= value <= 65535:
        raise ValueError("must be between 1024 and 65535")
    return value


def _host(raw: str) -> str:
    if raw not in ALLOWED_HOSTS:
        raise ValueError(f"must be one of {', '.join(ALLOWED_HOSTS)}")
    return raw


def _track(raw: str) -> str:
    if not TRACK_PATTERN.match(raw):
        raise ValueError("must be lower-case letters, digits, '-' or '_' (it names log files and metric labels)")
    return raw


def _model_uri(raw: str) -> str:
    try:
        return parse_model_uri(raw).uri
    except ModelResolutionError:
        raise ValueError("must look like models:/<name>@<alias> or models:/<name>/<version>") from None


def _model_name(raw: str) -> str:
    if not MODEL_NAME_PATTERN.match(raw):
        raise ValueError("must be 1-40 characters: lower-case letters, digits and '_', starting with a letter")
    return raw


def default_model_name(model_uri: str, models_dir: Path | None = None) -> str:
    """The platform model whose catalog entry registers the URI's MLflow model (the ``MODEL_NAME`` default).

    Raises:
        ConfigError: no catalog entry (or no readable catalog) registers that name: set ``--model-name``.
    """
    registered = parse_model_uri(model_uri).name
    try:
        matches = [e.name for e in list_models(models_dir) if e.spec.model.name == registered]
    except CatalogError as exc:
        raise ConfigError(f"--model-name / MODEL_NAME is required: the model catalog cannot be read ({exc})") from None
    if len(matches) != 1:  # the catalog refuses two entries registering one name, so this means none
        raise ConfigError(f"--model-name / MODEL_NAME is required: no model of the catalog registers {registered!r}")
    return matches[0]


def _runtime(raw: str) -> str:
    if raw not in RUNTIMES:
        raise ValueError(f"must be one of {', '.join(RUNTIMES)}")
    return raw


def _log_level(raw: str) -> str:
    level = raw.lower()
    if level not in ("critical", "error", "warning", "info", "debug"):
        raise ValueError("must be critical, error, warning, info or debug")
    return level


OPTIONS: tuple[_Option, ...] = (
    _Option("model_uri", "MODEL_URI", _model_uri, "registry URI: models:/<name>@<alias> or models:/<name>/<version>"),
    _Option(
        "model_name",
        "MODEL_NAME",
        _model_name,
        "platform model name (e.g. iris): names the log folder, log lines, metric labels and /health "
        "(default: the catalog model that registers MODEL_URI's model)",
    ),
    _Option("host", "HOST", _host, "interface to bind (0.0.0.0 in the container image)", "127.0.0.1"),
    _Option("port", "PORT", _port, "TCP port", 8000),
    _Option("track", "TRACK", _track, "deployment track label, e.g. stable or canary", "stable"),
    _Option("workers", "WORKERS", _positive_int, "inference worker processes", 2),
    _Option(
        "api_servers",
        "API_SERVERS",
        _positive_int,
        "HTTP (API server) processes sharing the port; each answers small ONNX requests itself",
        2,
    ),
    _Option("max_batch_size", "MAX_BATCH_SIZE", _positive_int, "requests merged into one model call", 32),
    _Option("batch_timeout", "BATCH_TIMEOUT", _non_negative_float, "seconds a worker waits to fill a batch", 0.0),
    _Option(
        "batch_row_limit",
        "BATCH_ROW_LIMIT",
        _positive_int,
        "rows at which a worker stops merging requests (big requests run alone, spread over workers)",
        512,
    ),
    _Option(
        "inline_max_rows",
        "INLINE_MAX_ROWS",
        _non_negative_int,
        "requests of at most this many rows are answered in the API process when the model runs on ONNX "
        "(no process hop); larger ones and the sklearn fallback go to the workers; 0: always the workers",
        64,
    ),
    _Option("max_batch_rows", "MAX_BATCH_ROWS", _positive_int, "rows allowed in one /predict request", 10_000),
    _Option(
        "max_body_bytes",
        "MAX_BODY_BYTES",
        _positive_int,
        "largest accepted request body (default: derived from MAX_BATCH_ROWS and the features)",
    ),
    _Option(
        "max_inflight_body_bytes",
        "MAX_INFLIGHT_BODY_BYTES",
        _positive_int,
        "request body bytes buffered at once over all connections; beyond it new bodies get 503",
        64 * 1024 * 1024,
    ),
    _Option("max_header_bytes", "MAX_HEADER_BYTES", _positive_int, "largest accepted request head", 32 * 1024),
    _Option("header_timeout", "HEADER_TIMEOUT", _positive_float, "seconds to receive a request's headers", 10.0),
    _Option("body_timeout", "BODY_TIMEOUT", _positive_float, "seconds to receive a request's body (then 408)", 30.0),
    _Option("keep_alive_timeout", "KEEP_ALIVE_TIMEOUT", _positive_float, "seconds an idle connection stays open", 5.0),
    _Option(
        "drain_timeout",
        "DRAIN_TIMEOUT",
        _positive_float,
        "seconds in-flight requests get to finish after SIGTERM",
        20.0,
    ),
    _Option(
        "model_auto_refresh_seconds",
        "MODEL_AUTO_REFRESH_SECONDS",
        _non_negative_float,
        "re-resolve the model URI this often (0 disables)",
        60.0,
    ),
    _Option("request_timeout", "REQUEST_TIMEOUT", _non_negative_float, "seconds a request may wait for a worker", 30.0),
    _Option("runtime", "MODEL_RUNTIME", _runtime, "auto (ONNX when verified, else sklearn) or sklearn", "auto"),
    _Option("feedback_cache_size", "FEEDBACK_CACHE_SIZE", _positive_int, "feedback ids kept in memory", 100_000),
    _Option("log_level", "LOG_LEVEL", _log_level, "log verbosity", "info"),
    _Option("prometheus_multiproc_dir", "PROMETHEUS_MULTIPROC_DIR", Path, "metric files shared by all processes"),
    _Option(
        "prediction_log_dir",
        "PREDICTION_LOG_DIR",
        Path,
        "this model's prediction/feedback log folder (default <platform home>/logs/predictions/<model name>)",
    ),
    _Option("platform_home", "ML_PLATFORM_HOME", Path, "platform home (default .ml_platform/)"),
    _Option("tracking_uri", "MLFLOW_TRACKING_URI", str, "MLflow tracking URI (default sqlite in the platform home)"),
)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m serving`` argument parser (defaults are applied later, from the environment)."""
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description="Serve a registered MLflow model with LitServe. Every flag has an environment "
        "equivalent (shown in brackets); ADMIN_API_TOKEN and FEEDBACK_SIGNING_KEY (or FEEDBACK_SIGNING_KEY_FILE, "
        "one key per deployment; unset: random per server) are environment-only so they never show in `ps`.",
    )
    for option in OPTIONS:
        flag = "--" + option.name.replace("_", "-")
        default = f"; default {option.default}" if option.default is not None else ""
        parser.add_argument(flag, dest=option.name, default=None, help=f"{option.help} [{option.env}{default}]")
    return parser


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> ServingConfig:
    """Parse flags and environment into a validated :class:`ServingConfig`."""
    env = os.environ if environ is None else environ
    args = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw = args.get(option.name)
        source = "--" + option.name.replace("_", "-")
        if raw is None:
            raw = (env.get(option.env) or "").strip() or None
            source = option.env
        if raw is None:
            if option.default is not None:
                values[option.name] = option.default
            continue
        try:
            values[option.name] = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}={raw!r}: {exc}") from exc
    if "model_uri" not in values:
        raise ConfigError("a model URI is required: --model-uri or MODEL_URI")
    if "model_name" not in values:
        values["model_name"] = default_model_name(values["model_uri"])
    token = (env.get("ADMIN_API_TOKEN") or "").strip() or None
    key, key_source = _feedback_signing_key(env)
    return ServingConfig(**values, admin_api_token=token, feedback_signing_key=key, feedback_key_source=key_source)


def _feedback_signing_key(env: Mapping[str, str]) -> tuple[bytes, str]:
    """The key that signs ``/predict`` feedback receipts, and where it came from.

    ``FEEDBACK_SIGNING_KEY`` (the value) or ``FEEDBACK_SIGNING_KEY_FILE`` (a
    file holding it), at least 32 bytes; environment only, like the admin
    token. Every process of one deployment must get the same key. Unset: a
    random key for this server (its API process and workers share it), so
    receipts verify only here and not after a restart.
    """
    import secrets

    value, path = env.get("FEEDBACK_SIGNING_KEY"), (env.get("FEEDBACK_SIGNING_KEY_FILE") or "").strip()
    if value and path:
        raise ConfigError("set FEEDBACK_SIGNING_KEY or FEEDBACK_SIGNING_KEY_FILE, not both")
    if path:
        try:
            raw, source = Path(path).read_bytes().strip(), "FEEDBACK_SIGNING_KEY_FILE"
        except OSError as exc:
            raise ConfigError(f"FEEDBACK_SIGNING_KEY_FILE={path!r}: cannot read: {exc.strerror or exc}") from None
    elif value:
        raw, source = value.strip().encode(), "FEEDBACK_SIGNING_KEY"
    else:
        return secrets.token_bytes(FEEDBACK_KEY_MIN_BYTES), "generated"
    if len(raw) < FEEDBACK_KEY_MIN_BYTES:  # the value is never echoed
        raise ConfigError(f"{source}: the key must be at least {FEEDBACK_KEY_MIN_BYTES} bytes (`openssl rand -hex 32`)")
    return raw, source
