"""The plain peer for the serving benchmark: Starlette + uvicorn + onnxruntime + orjson, one process.

What a careful engineer would write in an afternoon to serve a tabular model's
ONNX graph: no batching, no workers, no prediction log, no metrics, no request
ids. It answers ``POST /predict`` with the same body shapes as ``python -m
serving`` (``{"features": [[...], ...]}`` rows in feature order, or
``{"records": [{name: value, ...}, ...]}``) and returns predictions, class
labels and per-row probabilities keyed by label; malformed bodies get a 400 or
422. ``GET /health`` answers ``{"status": "ok"}``.

Started by ``benchmarks/serving.py`` as a subprocess on 127.0.0.1::

    python benchmarks/plain_peer.py --onnx model.onnx --port 8000 --config '{"features": [...], ...}'

``--config`` is JSON: ``features`` (names in spec order), ``classes`` (class
values in the ONNX probability-column order, i.e. sorted) and ``labels`` (the
readable label of each of those classes). It deliberately imports neither
``serving`` nor ``mlflow``, so its memory is that of the plain stack.
"""

from __future__ import annotations

import argparse
import operator
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

MAX_ROWS = 10_000
DECIMALS = 5  # as the service rounds probabilities


def build_app(onnx_path: str, features: list[str], classes: list[Any], labels: list[str]) -> Starlette:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as the service's workers and the in-process ceiling run it
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    width = len(features)
    record_values = operator.itemgetter(*features)
    class_index = {value: i for i, value in enumerate(classes)}

    def error(status: int, message: str) -> Response:
        return Response(orjson.dumps({"error": message}), status, media_type="application/json")

    async def predict(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return error(400, f"malformed JSON: {exc}")
        if not isinstance(body, dict) or len(body) != 1:
            return error(422, "send exactly one of `features` or `records`")
        try:
            if "features" in body:
                matrix = np.asarray(body["features"], dtype=np.float32)
            elif "records" in body:
                matrix = np.asarray([record_values(r) for r in body["records"]], dtype=np.float32)
            else:
                return error(422, "send exactly one of `features` or `records`")
        except (TypeError, ValueError, KeyError) as exc:
            return error(422, f"invalid rows: {exc}")
        if matrix.ndim != 2 or matrix.shape[1] != width or not 0 < matrix.shape[0] <= MAX_ROWS:
            return error(422, f"rows of {width} numbers expected, 1 to {MAX_ROWS} of them")
        if not np.isfinite(matrix).all():
            return error(422, "features must be finite numbers")
        predicted, probabilities = session.run(None, {input_name: matrix})
        predictions = predicted.tolist()
        return Response(
            orjson.dumps(
                {
                    "predictions": predictions,
                    "class_labels": [labels[class_index[p]] for p in predictions],
                    "probabilities": [
                        dict(zip(labels, row, strict=True)) for row in np.round(probabilities, DECIMALS).tolist()
                    ],
                }
            ),
            media_type="application/json",
        )

    async def health(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/health", health)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", required=True, help="path of the version's model.onnx")
    parser.add_argument("--config", required=True, help="JSON: features, classes, labels")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    config = orjson.loads(args.config)
    app = build_app(args.onnx, config["features"], config["classes"], config["labels"])
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
