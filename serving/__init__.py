"""The LitServe inference service: ``python -m serving --model-uri models:/<name>@<alias>``.

See docs/serving.md for endpoints, configuration, metrics and the prediction-log format.
Modules, one concern each:

- ``config``: flags and their environment equivalents
- ``registry``: resolving and downloading model versions from MLflow
- ``state``: files shared by the API process and the workers (desired version, worker status)
- ``runtime``: ONNX (fast path) and scikit-learn (fallback) model runtimes
- ``schema``: the request schema derived from the dataset spec, and validation
- ``api``: the LitAPI and batching loop that run in the inference workers
- ``service`` / ``routes``: API-process bookkeeping and HTTP endpoints
- ``middleware`` / ``errors``: request ids, body limits, request metrics, JSON errors
- ``metrics``: Prometheus metrics (multiprocess)
- ``predlog`` / ``encoding``: the JSON Lines prediction log and fast JSON row encoding
- ``feedback``: recent predictions and live accuracy
- ``refresher``: periodic re-resolution and hot-swap publishing
- ``server`` / ``__main__``: the LitServer subclass and the entry point
"""
