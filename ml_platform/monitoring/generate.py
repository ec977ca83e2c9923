"""Demo traffic: feature rows drawn like the training data, optionally shifted, and prediction logs.

* :func:`drifted_rows` samples rows (features + true label) from the spec's
  bundled data, with ``shift`` standard deviations added to chosen numeric
  features. The canary simulator sends these through the public port.
* :func:`write_prediction_log` scores such rows with a registered model and
  writes them, with feedback, in serving's prediction-log format for any date,
  which is how past days are filled for a backfill demo.

Command line (writes one model's logs into ``<PREDICTION_LOG_ROOT or home/logs/predictions>/<model>``;
``--model`` defaults to ``ML_PLATFORM_MODEL``, else the default model)::

    python -m ml_platform.monitoring.generate --model iris --date 2026-11-20 --days 3 --rows 500
    python -m ml_platform.monitoring.generate --model wine --date 2026-11-23 --rows 500 --shift 2 \\
        --features alcohol,flavanoids
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml_platform.spec import DatasetSpec

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_TRACK = "stable"


def _source_frame(spec: DatasetSpec, source: pd.DataFrame | None) -> pd.DataFrame:
    import pandas as pd

    if source is not None:
        return source
    path = spec.bootstrap_path()
    if path is None or not path.exists():
        raise ValueError(f"dataset {spec.name!r} has no bundled data to draw rows from; pass source=")
    frame = pd.read_csv(path, skipinitialspace=True)
    return frame.rename(columns=lambda c: str(c).strip())


def drifted_rows(
    spec: DatasetSpec,
    n: int,
    shift: float = 0.0,
    *,
    features: Sequence[str] | None = None,
    seed: int | None = 0,
    source: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """``n`` rows drawn like the training data, with ``shift`` applied to ``features``.

    Rows are sampled with replacement from ``source`` (default: the spec's
    bundled data file), so with ``shift=0`` they follow the training
    distribution. A numeric feature moves by ``shift`` times its standard
    deviation in the source, then is clipped to the spec's ``[min, max]`` and
    rounded for ``int`` features. A categorical feature in ``features`` takes
    the next category of the spec's list in a share ``min(1, |shift| / 2)`` of
    the rows. The target column keeps the label of the row the features came
    from, so sending it as feedback shows what a shift does to live accuracy.

    Args:
        spec: Dataset spec.
        n: Number of rows.
        shift: Size of the shift (0: none).
        features: Features to shift (default: every numeric feature).
        seed: Random seed (None: not reproducible).
        source: Rows to draw from (features + target columns).

    Returns:
        A frame with the spec's feature columns (spec order) and the target column.
    """
    import numpy as np

    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    frame = _source_frame(spec, source)
    missing = [c for c in spec.columns if c not in frame.columns]
    if missing:
        raise ValueError(f"source rows lack columns {missing}")
    chosen = list(features) if features is not None else spec.numeric_features
    unknown = [name for name in chosen if name not in spec.feature_names]
    if unknown:
        raise ValueError(f"cannot shift unknown features {unknown}; the spec has {spec.feature_names}")
    rng = np.random.default_rng(seed)
    rows = frame[spec.columns].iloc[rng.integers(0, len(frame), size=n)].reset_index(drop=True)
    if shift:
        for name in chosen:
            feature = spec.feature(name)
            if feature.is_numeric:
                values = rows[name].astype("float64") + shift * float(frame[name].astype("float64").std(ddof=0))
                low = -np.inf if feature.min is None else feature.min
                high = np.inf if feature.max is None else feature.max
                values = values.clip(low, high)
                rows[name] = values.round().astype("int64") if feature.type == "int" else values.round(6)
            else:
                categories = list(feature.categories)
                moved = rng.random(n) < min(1.0, abs(shift) / 2)
                rotate = {c: categories[(i + 1) % len(categories)] for i, c in enumerate(categories)}
                rows.loc[moved, name] = rows.loc[moved, name].astype(str).map(rotate)
    return rows


def _resolve_model(spec: DatasetSpec, model_uri: str | None) -> tuple[str, str, str]:
    """``(model_uri, model_name, version)``: the given URI, else champion, else challenger, else newest."""
    from mlflow import MlflowClient

    from ml_platform.ml.mlflow_store import configure_mlflow
    from ml_platform.ml.registry import CHALLENGER_ALIAS, CHAMPION_ALIAS, alias_version

    client = MlflowClient(tracking_uri=configure_mlflow())
    name = spec.model.name
    if model_uri:
        target = model_uri.removeprefix("models:/")
        if "@" in target:
            name, alias = target.split("@", 1)
            found = client.get_model_version_by_alias(name, alias)
        else:
            name, version = target.rsplit("/", 1)
            found = client.get_model_version(name, version)
        return model_uri, name, str(found.version)
    for alias in (CHAMPION_ALIAS, CHALLENGER_ALIAS):
        aliased = alias_version(client, name, alias)
        if aliased is not None:
            return f"models:/{name}/{aliased.version}", name, str(aliased.version)
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        raise ValueError(f"no registered version of {name!r}: run training_job first, or pass --model-uri")
    newest = max(versions, key=lambda v: int(v.version))
    return f"models:/{name}/{newest.version}", name, str(newest.version)


def write_prediction_log(
    spec: DatasetSpec,
    day: str,
    rows: int,
    shift: float = 0.0,
    *,
    model: str,
    features: Sequence[str] | None = None,
    model_uri: str | None = None,
    log_dir: str | Path | None = None,
    track: str = DEFAULT_TRACK,
    feedback: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Score :func:`drifted_rows` with a registered model and log them for ``day`` as serving would.

    One single-row request per row, spread over the day in time order; a share
    ``feedback`` of them gets a feedback event with the true label a few
    seconds later. Every line names the platform ``model``. Files are
    ``<log_dir>/date=<day>/predictions-<track>-<pid>.jsonl`` and
    ``feedback-<track>-<pid>.jsonl`` (appended to if they exist); ``log_dir``
    is the model's log folder, by default ``<PREDICTION_LOG_ROOT or
    home/logs/predictions>/<model>``.

    Returns:
        Paths written, row counts, the model version and the live accuracy of the generated rows.
    """
    import mlflow
    import numpy as np
    import orjson

    from ml_platform.ml.training import class_label, feature_frame
    from ml_platform.monitoring.paths import prediction_log_dir

    if not 0.0 <= feedback <= 1.0:
        raise ValueError(f"feedback must be a share in [0, 1], got {feedback}")
    start = datetime.combine(date.fromisoformat(day), datetime.min.time(), tzinfo=UTC)
    uri, name, version = _resolve_model(spec, model_uri)
    from ml_platform.ml.mlflow_store import configure_mlflow
    from ml_platform.ml.safe_load import load_verified_version

    # the safe loader (hashes checked, skops with the fixed allowlist, never pickle); any version may be chosen here
    client = mlflow.MlflowClient(tracking_uri=configure_mlflow())
    estimator = load_verified_version(client, name, version, require_gates=False).model
    frame = drifted_rows(spec, rows, shift, features=features, seed=seed)
    inputs = feature_frame(frame, spec)
    predictions = estimator.predict(inputs) if rows else np.array([])
    probabilities = estimator.predict_proba(inputs) if rows and hasattr(estimator, "predict_proba") else None
    proba_order = [class_label(spec, c) for c in getattr(estimator, "classes_", spec.target.classes)]

    rng = np.random.default_rng(seed + 1)
    offsets = np.sort(rng.uniform(0, 86_399.0, size=rows))
    gets_feedback = rng.random(rows) < feedback
    folder = Path(log_dir or prediction_log_dir(model)) / f"date={day}"
    folder.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    pred_path = folder / f"predictions-{track}-{pid}.jsonl"
    fb_path = folder / f"feedback-{track}-{pid}.jsonl"
    correct = 0
    feedback_rows = 0

    def stamp(seconds: float) -> str:
        return (start + timedelta(seconds=float(min(seconds, 86_399.999)))).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    records = frame[spec.feature_names].to_dict(orient="records")
    truths = frame[spec.target.name].tolist()
    with open(pred_path, "ab") as pred_out, open(fb_path, "ab") as fb_out:
        for i in range(rows):
            request_id = f"gen-{day}-{seed}-{i:07d}-{rng.integers(0, 1 << 32):08x}"
            prediction = predictions[i].item() if hasattr(predictions[i], "item") else predictions[i]
            probs = (
                {label: [round(float(p), 6)] for label, p in zip(proba_order, probabilities[i], strict=True)}
                if probabilities is not None
                else None
            )
            pred_out.write(
                orjson.dumps(
                    {
                        "event": "prediction",
                        "model": model,
                        "request_id": request_id,
                        "timestamp": stamp(offsets[i]),
                        "model_name": name,
                        "model_version": version,
                        "track": track,
                        "rows": 1,
                        "features": {key: [value] for key, value in records[i].items()},
                        "predictions": [prediction],
                        "probabilities": probs,
                        "latency_ms": round(float(rng.uniform(1.0, 8.0)), 3),
                    }
                )
                + b"\n"
            )
            if gets_feedback[i]:
                truth = truths[i].item() if hasattr(truths[i], "item") else truths[i]
                is_correct = truth == prediction
                correct += int(is_correct)
                feedback_rows += 1
                fb_out.write(
                    orjson.dumps(
                        {
                            "event": "feedback",
                            "model": model,
                            "request_id": request_id,
                            "row": 0,
                            "timestamp": stamp(offsets[i] + 5.0),
                            "label": truth,
                            "prediction": prediction,
                            "correct": is_correct,
                            "model_version": version,
                            "track": track,
                        }
                    )
                    + b"\n"
                )
    return {
        "model": model,
        "date": day,
        "rows": rows,
        "shift": shift,
        "shifted_features": list(features) if features is not None else spec.numeric_features,
        "model_uri": uri,
        "model_version": version,
        "predictions_file": str(pred_path),
        "feedback_file": str(fb_path),
        "feedback_rows": feedback_rows,
        "live_accuracy": (correct / feedback_rows) if feedback_rows else None,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ml_platform.monitoring.generate",
        description="Write prediction and feedback logs for given days, scored by a registered model, "
        "with an optional feature shift, in serving's log format.",
    )
    parser.add_argument("--date", required=True, help="first day, YYYY-MM-DD (UTC)")
    parser.add_argument("--days", type=int, default=1, help="number of consecutive days (default 1)")
    parser.add_argument("--rows", type=int, default=500, help="prediction rows per day (default 500)")
    parser.add_argument("--shift", type=float, default=0.0, help="shift in standard deviations (default 0)")
    parser.add_argument("--features", default=None, help="comma-separated features to shift (default: all numeric)")
    parser.add_argument("--feedback", type=float, default=1.0, help="share of rows with feedback (default 1.0)")
    parser.add_argument(
        "--model-uri",
        default=None,
        help="models:/<name>/<version> or @alias (default: champion, else challenger, else the newest version)",
    )
    parser.add_argument(
        "--log-dir",
        default=None,
        help="the model's log folder (default <PREDICTION_LOG_ROOT or <home>/logs/predictions>/<model>)",
    )
    parser.add_argument("--track", default=DEFAULT_TRACK, help="track named in the log (default stable)")
    parser.add_argument(
        "--model", default=None, help="platform model name, e.g. iris (default ML_PLATFORM_MODEL, else the default)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; prints one JSON summary per day written."""
    args = _parser().parse_args(argv)
    try:
        first = date.fromisoformat(args.date)
    except ValueError:
        print(f"--date must be YYYY-MM-DD, got {args.date!r}", file=sys.stderr)
        return 2
    from ml_platform.catalog import CatalogError, get_model

    try:
        entry = get_model(args.model)
    except CatalogError as exc:
        print(f"--model: {exc}", file=sys.stderr)
        return 2
    spec = entry.spec
    features = [f.strip() for f in args.features.split(",") if f.strip()] if args.features else None
    for offset in range(max(1, args.days)):
        day = (first + timedelta(days=offset)).isoformat()
        summary = write_prediction_log(
            spec,
            day,
            args.rows,
            args.shift,
            model=entry.name,
            features=features,
            model_uri=args.model_uri,
            log_dir=args.log_dir,
            track=args.track,
            feedback=args.feedback,
            seed=args.seed + offset,
        )
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
