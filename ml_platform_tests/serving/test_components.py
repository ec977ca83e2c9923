"""In-process checks of the serving building blocks (no server processes; they run in about a second)."""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import threading
import time
from dataclasses import replace
from pathlib import Path
from queue import Empty

import numpy as np
import pytest

from ml_platform.spec import FeatureSpec, load_spec
from serving.config import ConfigError, load_config
from serving.predlog import JsonlWriter, PredictionLogFormat
from serving.refresher import ModelRefresher
from serving.registry import ModelBundle, ModelResolutionError, RegistryClient, parse_model_uri, redact_uri
from serving.schema import RequestError, RequestSchema
from serving.service import ServingContext
from serving.state import RuntimeLayout, write_worker_status
from serving.transport import PipeTransport, RequestChannel


def test_flags_win_over_environment_which_wins_over_defaults():
    env = {"MODEL_URI": "models:/m@champion", "MODEL_NAME": "m", "PORT": "9001", "WORKERS": "3"}
    config = load_config(["--port", "9002"], env | {"ADMIN_API_TOKEN": " s3cret "})

    assert (config.model_uri, config.port, config.workers, config.host) == ("models:/m@champion", 9002, 3, "127.0.0.1")
    assert config.admin_api_token == "s3cret"
    assert "s3cret" not in repr(config)
    with pytest.raises(ConfigError, match="BATCH_TIMEOUT"):
        load_config([], {**env, "BATCH_TIMEOUT": "-1"})


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:////tmp/a/mlflow.db", "sqlite:////tmp/a/mlflow.db"),
        ("http://user:pw@mlflow:5000", "http://user:***@mlflow:5000"),
        ("https://token@mlflow.example.com/x?api_key=k&x=1", "https://***@mlflow.example.com/x?api_key=***&x=1"),
        ("postgresql://ml:pw@db/mlflow", "postgresql://ml:***@db/mlflow"),
    ],
)
def test_tracking_uris_are_redacted(uri: str, expected: str):
    assert redact_uri(uri) == expected


def test_model_uris():
    assert parse_model_uri("models:/iris-random-forest@champion").alias == "champion"
    assert parse_model_uri("models:/iris-random-forest/12").version == "12"
    for bad in ("models:/x", "models:/x/latest", "runs:/abc/model"):
        with pytest.raises(ModelResolutionError):
            parse_model_uri(bad)
        with pytest.raises(ConfigError, match="MODEL_URI"):
            load_config([], {"MODEL_URI": bad})


def test_schema_from_a_spec_with_int_and_category_features():
    spec = load_spec("iris")
    features = (*spec.features[:2], FeatureSpec("n", "int"), FeatureSpec("c", "category", categories=("a", "b")))
    schema = RequestSchema(replace(spec, features=features), max_rows=5)

    rows = schema.parse_predict(b'{"records": [{"sepal_length": 1, "sepal_width": 2.5, "n": 3, "c": "b"}]}')
    assert rows == [(1.0, 2.5, 3.0, "b")]
    for body in (
        b'{"features": [[1, 2, 3.5, "a"]]}',
        b'{"features": [[1, 2, 3, "z"]]}',
        b'{"features": [[1, 2, 3, 4]]}',
    ):
        with pytest.raises(RequestError) as info:
            schema.parse_predict(body)
        assert info.value.status == 422


def test_schema_with_a_single_feature_gives_rows_of_one_value():
    spec = load_spec("iris")
    schema = RequestSchema(replace(spec, features=spec.features[2:3]), max_rows=5)
    from_records = schema.parse_predict(b'{"records": [{"petal_length": 1.5}, {"petal_length": 4}]}')
    from_features = schema.parse_predict(b'{"features": [[1.5], [4]]}')
    assert isinstance(from_records, np.ndarray) and from_records.shape == (2, 1)
    assert from_records.tolist() == from_features.tolist() == [[1.5], [4.0]]


def test_backoff_grows_exponentially_and_is_capped(tmp_path: Path):
    refresher = _refresher(tmp_path, interval=60)
    delays = []
    for failures in range(9):
        refresher.failures = failures
        delays.append(refresher.next_delay())
    assert delays == [60, 1, 2, 4, 8, 16, 32, 60, 60]


def test_health_is_unavailable_until_workers_are_ready_then_degraded_when_the_registry_is_down(tmp_path: Path):
    refresher = _refresher(tmp_path, interval=0)
    config = load_config([], {"MODEL_URI": "models:/m@a", "MODEL_NAME": "m"})
    context = ServingContext(config, refresher.layout, refresher.schema, refresher, tmp_path)

    status, body = context.health()
    assert (status, body["status"]) == (503, "unavailable")

    context.workers_ready = lambda: True
    write_worker_status(refresher.layout, 0, {"model_version": "1", "runtime": "onnx", "loaded_at": 0, "error": None})
    status, body = context.health()
    assert (status, body["status"], body["problems"], body["platform_model"]) == (200, "ok", [], "m")

    refresher.reachable = False
    status, body = context.health()
    assert (status, body["status"]) == (200, "degraded")
    assert body["mlflow"]["reachable"] is False


def test_request_channel_and_pipe_transport_carry_large_messages_and_batches():
    ctx = mp.get_context("spawn")
    requests, responses = RequestChannel(ctx), PipeTransport(1, ctx)
    big = {"rows": np.arange(200_000, dtype=np.float64)}  # 1.6 MB: many times the pipe buffer

    async def api_side() -> list:
        requests.put(("q", 1, big))
        requests.put(("q", 2, "small"))
        received = [await responses.areceive(0) for _ in range(3)]
        assert await responses.areceive(0, timeout=0.05) is None  # nothing more: times out quietly
        return received

    def worker_side() -> None:
        first, second = requests.get(timeout=10), requests.get(timeout=10)
        responses.send(first, 0)
        responses.send_many([second, "third"], 0)

    worker = threading.Thread(target=worker_side)
    worker.start()
    first, second, third = asyncio.run(api_side())
    worker.join(10)

    assert first[:2] == ("q", 1) and np.array_equal(first[2]["rows"], big["rows"])
    assert second == ("q", 2, "small") and third == "third"
    with pytest.raises(Empty):
        requests.get_nowait()


def _api_server_writes(requests: RequestChannel, api_server: int, count: int) -> None:
    async def write() -> None:
        for i in range(count):  # each larger than the pipe buffer: written in many partial, non-blocking writes
            requests.put((api_server, f"{api_server}-{i}", np.full(150_000, api_server * 1000 + i, dtype=np.float64)))
            await asyncio.sleep(0)
        while requests._pending:
            await asyncio.sleep(0.01)

    asyncio.run(write())


def test_request_channel_with_two_api_servers_never_interleaves_their_messages():
    """Two API server processes writing big requests at once: each has its own pipe, every message arrives whole."""
    requests = RequestChannel(mp.get_context("spawn"), api_servers=2)
    fork = mp.get_context("fork")
    writers = [fork.Process(target=_api_server_writes, args=(requests, i, 12)) for i in range(2)]
    for writer in writers:
        writer.start()
    received = [requests.get(timeout=20) for _ in range(24)]
    for writer in writers:
        writer.join(20)
        assert writer.exitcode == 0

    assert sorted(uid for _, uid, _ in received) == sorted(f"{a}-{i}" for a in range(2) for i in range(12))
    for api_server, uid, rows in received:
        assert uid.startswith(f"{api_server}-") and np.all(rows == api_server * 1000 + int(uid.split("-")[1]))
    # per API server, in the order it sent them
    for api_server in range(2):
        order = [int(uid.split("-")[1]) for a, uid, _ in received if a == api_server]
        assert order == sorted(order)
    assert requests.stop_workers(2)
    assert [requests.get(timeout=5)[1] for _ in range(2)] == [None, None]  # the stop sentinel, whichever pipe
    with pytest.raises(Empty):
        requests.get_nowait()


def test_log_writer_renders_one_line_per_request_and_flushes_on_close(tmp_path: Path):
    writer = JsonlWriter(tmp_path, "predictions", "stable", model="iris", flush_interval=60).start()
    log_format = PredictionLogFormat("iris", ["a", "b"], [0, 1], ["no", "yes"])
    request = {
        "request_id": "r",
        "received_at": 0.0,
        "latency_ms": 1.5,
        "model_name": "m",
        "model_version": "1",
        "track": "stable",
        "rows": np.array([[1.0, 2.5], [3.0, 4.0]]),
        "class_index": np.array([1, 0], dtype=np.uint16),
    }
    writer.submit(lambda: log_format.render(**request, probabilities=np.array([[0.25, 0.75], [1.0, 0.0]])))
    writer.submit(lambda: log_format.render(**request | {"request_id": "s"}, probabilities=None))
    writer.close()

    (path,) = (tmp_path / "date=1970-01-01").glob("predictions-stable-*.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["request_id"], r["rows"], r["features"], r["predictions"]) for r in lines] == [
        ("r", 2, {"a": [1.0, 3.0], "b": [2.5, 4.0]}, [1, 0]),
        ("s", 2, {"a": [1.0, 3.0], "b": [2.5, 4.0]}, [1, 0]),
    ]
    assert lines[0]["probabilities"] == {"no": [0.25, 1.0], "yes": [0.75, 0.0]} and lines[1]["probabilities"] is None
    assert lines[0]["timestamp"] == "1970-01-01T00:00:00.000000Z"
    assert [r["model"] for r in lines] == ["iris", "iris"], "every line names its platform model"


def test_log_format_keeps_category_values_and_string_classes():
    log_format = PredictionLogFormat("churn", ["colour", "size"], ["small", "large"], ["small", "large"])
    day, line = log_format.render(
        request_id="r",
        received_at=86_400.5,
        latency_ms=2.0,
        model_name="m",
        model_version="2",
        track="canary",
        rows=[("red", 1.5), ("blue", 2.0)],
        class_index=np.array([1, 1], dtype=np.uint16),
        probabilities=None,
    )
    record = json.loads(line)
    assert day == "1970-01-02" and line.endswith(b"\n")
    assert record["features"] == {"colour": ["red", "blue"], "size": [1.5, 2.0]}
    assert record["predictions"] == ["large", "large"] and record["track"] == "canary"
    assert record["model"] == "churn" and record["model_name"] == "m"


def _refresher(tmp_path: Path, interval: float) -> ModelRefresher:
    spec = load_spec("iris")
    layout = RuntimeLayout(tmp_path / "run").create()
    bundle = ModelBundle("m", "1", str(tmp_path), onnx_verified=True)
    registry = RegistryClient("sqlite:///" + str(tmp_path / "none.db"), layout.models_dir)
    return ModelRefresher(parse_model_uri("models:/m@a"), registry, layout, RequestSchema(spec, 10), bundle, interval)


@pytest.mark.parametrize("shape", [(1, 1), (1, 3), (5, 1), (7, 2), (200, 4)])
def test_objects_array_matches_a_dict_per_row(shape: tuple[int, int]):
    """The one-join encoder gives exactly the JSON of one object per row, for any width and tiny or huge values."""
    from serving.encoding import objects_array

    matrix = np.random.default_rng(shape[0]).normal(size=shape) * np.logspace(-9, 9, shape[1])
    keys = [f'k"{i}' for i in range(shape[1])]
    assert json.loads(objects_array(keys, matrix)) == [dict(zip(keys, row, strict=True)) for row in matrix.tolist()]
    assert objects_array(keys, matrix[:0]) == b"[]"
    with pytest.raises(ValueError, match="columns"):
        objects_array(keys[:-1], matrix)


def test_batches_stop_growing_at_the_row_limit_or_the_request_limit():
    """Small requests merge into one model call; big ones are taken one by one, so another worker can have the next."""
    from queue import Queue
    from types import SimpleNamespace

    from serving.api import PredictPayload, ServingLoop

    def batches(sizes: list[int], **limits: int) -> list[list[int]]:
        queue: Queue = Queue()
        for i, size in enumerate(sizes):
            queue.put((0, f"u{i}", time.monotonic(), PredictPayload(f"r{i}", np.zeros((size, 4)), 0.0)))
        api = SimpleNamespace(batch_timeout=0.0, request_timeout=30.0, **limits)
        taken = []
        while not queue.empty():
            taken.append([len(payload.rows) for _, _, payload in ServingLoop()._collect(api, queue, None)])
        return taken

    assert batches([1] * 5, max_batch_size=32, batch_row_limit=512) == [[1] * 5]
    assert batches([1000, 1000, 1000], max_batch_size=32, batch_row_limit=512) == [[1000], [1000], [1000]]
    assert batches([300, 300, 300], max_batch_size=32, batch_row_limit=512) == [[300, 300], [300]]
    assert batches([1] * 5, max_batch_size=2, batch_row_limit=512) == [[1, 1], [1, 1], [1]]
