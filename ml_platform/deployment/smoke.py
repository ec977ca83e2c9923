"""Smoke tests before any traffic: the track is healthy and answers a known prediction.

Requests go through the public URL pinned to one track (``X-ML-Track``), so
the route is exercised too. The rows are the version's reference snapshot
(features with the predictions recorded at training time) when it has one,
else rows of the dataset's bundled CSV, checked for a valid answer only. Every request is
marked ``X-ML-Platform-Traffic: smoke``, so monitoring leaves it out of production windows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from ml_platform.deployment.backend import TRACK_HEADER
from ml_platform.monitoring.traffic import SMOKE, TRAFFIC_HEADER
from ml_platform.spec import DatasetSpec


@dataclass
class SmokeRows:
    """Rows to predict, with the predictions expected (None: any valid class)."""

    records: list[dict[str, Any]]
    expected: list[Any] | None
    source: str


@dataclass
class SmokeResult:
    """The outcome of a smoke test."""

    passed: bool
    detail: str
    seconds: float
    rows: int = 0
    source: str = ""
    predictions: list[Any] = field(default_factory=list)


def smoke_rows(spec: DatasetSpec, reference_uri: str | None, count: int) -> SmokeRows:
    """Known rows for a version: its reference snapshot when readable, else the bundled data."""
    import pandas as pd

    if reference_uri:
        try:
            from upath import UPath

            with UPath(reference_uri).open("rb") as handle:
                snapshot = pd.read_parquet(handle, columns=[*spec.feature_names, "prediction"])
            head = snapshot.head(count)
            return SmokeRows(
                records=head[spec.feature_names].to_dict(orient="records"),
                expected=head["prediction"].tolist(),
                source=f"reference snapshot {reference_uri}",
            )
        except Exception:  # unreadable snapshot: fall back to the dataset's rows
            pass
    path = spec.bootstrap_path()
    if path is None or not path.exists():
        raise ValueError(f"dataset {spec.name} has no reference snapshot and no bundled rows for a smoke test")
    frame = pd.read_csv(path, nrows=count)
    return SmokeRows(records=frame[spec.feature_names].to_dict(orient="records"), expected=None, source=str(path))


def _same(a: Any, b: Any) -> bool:
    return str(a) == str(b)


def smoke_test(
    public_url: str, track: str, version: str, rows: SmokeRows, classes: list[Any], timeout: float = 30.0
) -> SmokeResult:
    """POST the rows to ``track`` through the public URL; check version, track and predictions."""
    started = time.perf_counter()

    def result(passed: bool, detail: str, predictions: list[Any] | None = None) -> SmokeResult:
        return SmokeResult(
            passed, detail, time.perf_counter() - started, len(rows.records), rows.source, predictions or []
        )

    try:
        response = httpx.post(
            f"{public_url.rstrip('/')}/predict",
            json={"records": rows.records},
            headers={
                TRACK_HEADER: track,
                TRAFFIC_HEADER: SMOKE,  # kept out of production windows and drift
                "X-Request-ID": f"smoke-{track}-{version}-{int(time.time())}",
            },
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        return result(False, f"/predict failed: {exc!r}")
    if response.status_code != 200:
        return result(False, f"/predict answered {response.status_code}: {response.text[:200]}")
    body = response.json()
    predictions = list(body.get("predictions") or [])
    if str(body.get("model_version")) != str(version) or body.get("track") != track:
        return result(
            False, f"answered by {body.get('track')} version {body.get('model_version')}, not {track} version {version}"
        )
    if len(predictions) != len(rows.records):
        return result(False, f"{len(predictions)} predictions for {len(rows.records)} rows", predictions)
    unknown = [p for p in predictions if not any(_same(p, c) for c in classes)]
    if unknown:
        return result(False, f"predictions {unknown} are not classes of the spec", predictions)
    if rows.expected is not None:
        mismatches = [i for i, (p, e) in enumerate(zip(predictions, rows.expected, strict=True)) if not _same(p, e)]
        if mismatches:
            return result(False, f"rows {mismatches} differ from the recorded predictions", predictions)
        return result(True, f"{len(predictions)} known predictions match ({rows.source})", predictions)
    return result(True, f"{len(predictions)} valid predictions ({rows.source})", predictions)
