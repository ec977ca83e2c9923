"""``python -m serving``: resolve the model, prepare shared state, run the LitServe server.

Order matters: the metric directory is set up (``PROMETHEUS_MULTIPROC_DIR``)
before prometheus_client, LitServe or MLflow are imported, and the model is
resolved and downloaded before any worker is spawned, so workers start from
local files and never need the registry. The server's runtime folder is
``$ML_PLATFORM_HOME/serving/run-<track>-<random>/`` (see :mod:`serving.state`).

Exit codes: 0 after SIGTERM/SIGINT once everything drained, 1 when the server
cannot start, 2 for invalid configuration, 3 when the API server or an
inference worker died while serving (the rest of the tree is stopped first;
see :mod:`serving.supervision`).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from ml_platform.settings import mlflow_tracking_uri, platform_paths
from serving.config import ConfigError, ServingConfig, load_config
from serving.feedback import LEDGER_ENV
from serving.registry import (
    ModelResolutionError,
    RegistryClient,
    configure_mlflow_client_env,
    load_bundle_spec,
    load_input_example,
    parse_model_uri,
)
from serving.state import RuntimeLayout, prepare_multiproc_dir, publish_desired_model

log = logging.getLogger("serving")


def _serve(config: ServingConfig, layout: RuntimeLayout) -> int:
    # imported here: they load prometheus_client, which must see PROMETHEUS_MULTIPROC_DIR first
    from serving.api import ModelAPI
    from serving.inline import InlinePredictor
    from serving.refresher import ModelRefresher
    from serving.schema import RequestSchema
    from serving.server import ChildProcessDied, ServingServer
    from serving.service import ServingContext

    registry = RegistryClient(mlflow_tracking_uri(), layout.models_dir)
    try:
        ref = parse_model_uri(config.model_uri)
        bundle = registry.fetch(ref)
        schema = RequestSchema(load_bundle_spec(bundle), config.max_batch_rows, load_input_example(bundle))
    except ModelResolutionError as exc:
        log.error("cannot start: %s", exc)
        return 1
    publish_desired_model(layout, bundle)
    log.info(
        "serving %s as model %r (resolved from %s, ONNX %s)",
        bundle.uri,
        config.model_name,
        ref.uri,
        "yes" if bundle.onnx_verified else "no",
    )

    log_dir = config.prediction_log_dir or platform_paths().prediction_log_dir(config.model_name)
    if config.api_servers > 1 and not os.environ.get(LEDGER_ENV, "").strip():
        # every API server process must see the same labelled rows: a SQLite ledger in this server's runtime
        # folder (gone with the server, as an in-memory one would be); set FEEDBACK_LEDGER to share across replicas
        os.environ[LEDGER_ENV] = str(layout.root / "feedback-ledger.sqlite")
    refresher = ModelRefresher(ref, registry, layout, schema, bundle, config.model_auto_refresh_seconds)
    refresher.server_version = refresher.probe_server_version()
    context = ServingContext(config, layout, schema, refresher, Path(log_dir))
    make_api = partial(
        ModelAPI,
        runtime_root=str(layout.root),
        track=config.track,
        model=config.model_name,
        prediction_log_dir=str(log_dir),
        runtime_preference=config.runtime,
        max_batch_size=config.max_batch_size,
        batch_timeout=config.batch_timeout,
        batch_row_limit=config.batch_row_limit,
        log_level=config.log_level,
        feedback_key=config.feedback_signing_key,
    )
    api = make_api()
    if config.runtime == "auto" and bundle.onnx_verified:
        context.inline = InlinePredictor(make_api, config.inline_max_rows)  # loads in the API process's lifespan
    server = ServingServer(api, context, config)
    try:
        server.serve()  # returns after SIGTERM/SIGINT, once everything drained
    except ChildProcessDied as exc:
        log.error("stopped: %s", exc)
        return 3
    except RuntimeError as exc:  # LitServe: a worker failed its setup
        log.error("cannot start: %s", exc)
        server.stop_workers()
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"python -m serving: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config.platform_home:
        os.environ["ML_PLATFORM_HOME"] = str(config.platform_home)
    if config.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = config.tracking_uri
    configure_mlflow_client_env()
    # Per-server state (desired-version marker, worker status, downloaded models, default metric files) lives
    # under the platform home, the one folder the platform writes to (writable on Kubernetes too); removed at exit.
    runs = platform_paths().home / "serving"
    runs.mkdir(parents=True, exist_ok=True)
    layout = RuntimeLayout(Path(tempfile.mkdtemp(prefix=f"run-{config.track}-", dir=runs))).create()
    prepare_multiproc_dir(config.prometheus_multiproc_dir or layout.default_prometheus_dir)
    try:
        return _serve(config, layout)
    finally:
        shutil.rmtree(layout.root, ignore_errors=True)


if __name__ == "__main__":
    code = main()
    # Children (API server, workers) have flushed and exited; skip the slow final
    # garbage collection of a process that imported MLflow.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
