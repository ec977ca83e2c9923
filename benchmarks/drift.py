"""Benchmark the drift engine against Evidently 0.7 ``DataDriftPreset``.

Runs, each in its own fresh Python subprocess (so time and memory peaks are
independent of one another):

1. the engine (``ml_platform.drift.engine.compute_drift``) on ``--rows`` x ``--cols``
   (reference and current each), then checks a few Wasserstein scores against
   ``scipy.stats.wasserstein_distance`` on the full columns;
2. the engine and plain Evidently ``DataDriftPreset`` on ``--compare-rows`` rows
   (large-data regime: Wasserstein / Jensen-Shannon);
3. the engine and Evidently on ``--small-rows`` rows (<= 1,000 reference rows:
   K-S / chi-square / Z-test);

and prints markdown (for docs/benchmarks.md): timings, memory, and per-column
agreement between the engine and Evidently on identical data.

Memory, as measured inside each subprocess from ``/proc/self/status`` (Linux):

* *RSS before*: resident memory once the synthetic data is built and libraries
  are imported, just before the timed call;
* *peak RSS during*: the process's resident high-water mark over the timed call
  only (reset right before it by writing ``5`` to ``/proc/self/clear_refs``); it
  includes the input data and the imported libraries;
* *engine working memory* (engine only): ``tracemalloc`` peak of new allocations
  (numpy buffers included) during a second, untimed call: the memory the engine
  needs on top of its inputs.

Usage::

    .venv/bin/python benchmarks/drift.py                 # 1M x 50, compare at 100k and 800 rows
    .venv/bin/python benchmarks/drift.py --rows 200000 --compare-rows 20000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------- synthetic data


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    kind: str  # "numeric" | "categorical"
    key: str  # generator recipe, see _fill_numeric / _categorical
    pattern: str  # human-readable description of what differs in current
    shifted: bool  # whether the current distribution differs from the reference one


NUMERIC_PATTERNS: list[tuple[str, str, bool]] = [
    ("normal", "normal, unchanged", False),
    ("normal_mean_0.5", "normal, mean +0.5 sd", True),
    ("normal_nan", "normal, unchanged, 5% NaN in current", False),
    ("normal_scale_1.5", "normal, sd x1.5", True),
    ("normal_mean_0.05", "normal, mean +0.05 sd (subtle)", True),
    ("discrete", "4 discrete values, unchanged", False),
    ("discrete_shift", "4 discrete values, shares changed", True),
    ("lognormal", "lognormal, unchanged", False),
    ("lognormal_shift", "lognormal, log-mean +0.3", True),
]
CATEGORICAL_PATTERNS: list[tuple[str, str, bool]] = [
    ("six", "6 levels, unchanged", False),
    ("six_shift", "6 levels, shares changed", True),
    ("new_level", "5 levels, new level in current (8%)", True),
    ("binary", "2 levels, unchanged", False),
    ("binary_shift", "2 levels, 50/50 -> 35/65", True),
]
_LEVELS = np.array(["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"], dtype=object)


def column_specs(cols: int) -> list[ColumnSpec]:
    """Every 10th column is categorical; the others cycle through the numeric patterns."""
    specs = []
    n_num = n_cat = 0
    for i in range(cols):
        if i % 10 == 9:
            key, pattern, shifted = CATEGORICAL_PATTERNS[n_cat % len(CATEGORICAL_PATTERNS)]
            specs.append(ColumnSpec(f"cat_{i:02d}", "categorical", key, pattern, shifted))
            n_cat += 1
        else:
            key, pattern, shifted = NUMERIC_PATTERNS[n_num % len(NUMERIC_PATTERNS)]
            specs.append(ColumnSpec(f"num_{i:02d}", "numeric", key, pattern, shifted))
            n_num += 1
    return specs


def _fill_numeric(out: np.ndarray, key: str, current: bool, rng: np.random.Generator) -> None:
    """Fill ``out`` in place; the reference always gets the unshifted recipe."""
    if key.startswith("normal"):
        rng.standard_normal(out=out)
        if current and key == "normal_mean_0.5":
            out += 0.5
        elif current and key == "normal_mean_0.05":
            out += 0.05
        elif current and key == "normal_scale_1.5":
            out *= 1.5
        elif current and key == "normal_nan":
            out[rng.random(out.size) < 0.05] = np.nan
    elif key.startswith("discrete"):
        probs = [0.25, 0.25, 0.25, 0.25] if (current and key == "discrete_shift") else [0.4, 0.3, 0.2, 0.1]
        out[:] = rng.choice(4, size=out.size, p=probs)
    elif key.startswith("lognormal"):
        rng.standard_normal(out=out)
        if current and key == "lognormal_shift":
            out += 0.3
        np.exp(out, out=out)
    else:  # pragma: no cover - keys are fixed above
        raise ValueError(key)


def _categorical(key: str, rows: int, current: bool, rng: np.random.Generator) -> np.ndarray:
    """Strings drawn from a few shared objects (like a categorical column read from a file)."""
    if key.startswith("six"):
        probs = np.array([0.30, 0.25, 0.20, 0.12, 0.08, 0.05])
        if current and key == "six_shift":
            probs = np.array([0.20, 0.20, 0.20, 0.15, 0.15, 0.10])
        return _LEVELS[rng.choice(6, size=rows, p=probs)]
    if key == "new_level":
        probs = (
            np.array([0.28, 0.23, 0.18, 0.14, 0.09, 0.08]) if current else np.array([0.30, 0.25, 0.20, 0.15, 0.10, 0.0])
        )
        return _LEVELS[rng.choice(6, size=rows, p=probs)]
    p_second = 0.65 if (current and key == "binary_shift") else 0.5
    return _LEVELS[(rng.random(rows) < p_second).astype(np.intp)]


def make_frame(rows: int, cols: int, seed: int, current: bool) -> pd.DataFrame:
    """Seeded synthetic frame; numeric columns float64 in one block, categoricals as shared strings."""
    specs = column_specs(cols)
    numeric = [s for s in specs if s.kind == "numeric"]
    block = np.empty((len(numeric), rows), dtype=np.float64)
    for j, spec in enumerate(numeric):
        rng = np.random.default_rng([seed, int(spec.name[-2:]), int(current)])
        _fill_numeric(block[j], spec.key, current, rng)
    frame = pd.DataFrame(block.T, columns=[s.name for s in numeric], copy=False)
    for spec in specs:
        if spec.kind == "categorical":
            rng = np.random.default_rng([seed, int(spec.name[-2:]), int(current)])
            frame[spec.name] = _categorical(spec.key, rows, current, rng)
    return frame


# ----------------------------------------------------------------------------- worker side


def _proc_status_mib(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _current_rows(rows: int, fraction: float) -> int:
    return max(1, round(rows * fraction))


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    specs = column_specs(args.cols)
    numeric = [s.name for s in specs if s.kind == "numeric"]
    categorical = [s.name for s in specs if s.kind == "categorical"]

    # Import the statistics libraries up front: a one-off per process, not part of the timed call.
    import scipy.spatial.distance
    import scipy.stats  # noqa: F401

    if args.worker == "engine":
        from ml_platform.drift.engine import compute_drift
    else:
        import evidently.presets  # noqa: F401  (import cost outside the timed region)

        from ml_platform.drift.evidently_report import run_evidently_drift

    reference = make_frame(args.rows, args.cols, args.seed, current=False)
    current = make_frame(_current_rows(args.rows, args.current_fraction), args.cols, args.seed, current=True)
    gc.collect()
    generation_peak = _proc_status_mib("VmHWM")
    rss_before = _proc_status_mib("VmRSS")
    peak_reset = _reset_peak()

    load_before = os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), time.process_time()
    if args.worker == "engine":
        result = compute_drift(reference, current, numeric, categorical, workers=args.workers)
        columns = {
            f.feature: {"method": f.method, "score": f.score, "threshold": f.threshold, "drifted": f.drifted}
            for f in result.features
        }
        summary = {
            "drifted_count": result.drifted_count,
            "drift_share": result.drift_share,
            "dataset_drift": result.dataset_drift,
        }
    else:
        evidently_result = run_evidently_drift(reference, current, numeric, categorical)
        columns = evidently_result["columns"]
        summary = {k: evidently_result[k] for k in ("drifted_count", "drift_share", "dataset_drift")}
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak_during = _proc_status_mib("VmHWM")

    out: dict[str, Any] = {
        "variant": args.worker,
        "rows": args.rows,
        "current_rows": len(current),
        "cols": args.cols,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "load_before": load_before,
        "rss_before_mib": rss_before,
        "peak_during_mib": peak_during if peak_reset else float("nan"),
        "generation_peak_mib": generation_peak,
        "peak_reset": peak_reset,
        "columns": columns,
        **summary,
    }

    if args.worker == "engine":
        import tracemalloc

        del result
        gc.collect()
        tracemalloc.start()
        compute_drift(reference, current, numeric, categorical, workers=args.workers)
        out["engine_working_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        out["verification"] = _verify_wasserstein(reference, current, columns, args.verify_columns)
    return out


def _verify_wasserstein(
    reference: pd.DataFrame, current: pd.DataFrame, columns: dict[str, Any], limit: int
) -> list[dict[str, Any]]:
    """Recompute a few engine Wasserstein scores with scipy on the full columns."""
    from scipy import stats

    checked: list[dict[str, Any]] = []
    for name, col in columns.items():
        if len(checked) >= limit:
            break
        if col["method"] != "Wasserstein distance (normed)":
            continue
        ref = reference[name].to_numpy()
        cur = current[name].to_numpy()
        ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
        start = time.perf_counter()
        expected = stats.wasserstein_distance(ref, cur) / max(float(np.std(ref)), 0.001)
        checked.append(
            {
                "column": name,
                "engine": col["score"],
                "scipy": expected,
                "rel_diff": abs(col["score"] - expected) / max(abs(expected), 1e-300),
                "scipy_seconds": time.perf_counter() - start,
            }
        )
    return checked


# ----------------------------------------------------------------------------- parent side


def spawn(worker: str, rows: int, args: argparse.Namespace, verify_columns: int = 0) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        worker,
        "--rows",
        str(rows),
        "--cols",
        str(args.cols),
        "--seed",
        str(args.seed),
        "--verify-columns",
        str(verify_columns),
        "--current-fraction",
        str(args.current_fraction),
    ]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    print(f"<!-- running {worker} on {rows:,} x {args.cols} ... -->", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{worker} worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt_mib(value: float) -> str:
    return "n/a" if value != value else f"{value:,.0f}"


def compare(engine: dict[str, Any], evidently: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for spec in column_specs(engine["cols"]):
        e, v = engine["columns"][spec.name], evidently["columns"][spec.name]
        diff = abs(e["score"] - v["score"])
        rows.append(
            {
                "spec": spec,
                "engine": e,
                "evidently": v,
                "same_decision": e["drifted"] == v["drifted"],
                "same_method": e["method"] == v["method"],
                "abs_diff": diff,
                "rel_diff": diff / abs(v["score"]) if v["score"] else diff,
            }
        )
    return {
        "rows": rows,
        "decisions_agree": sum(r["same_decision"] for r in rows),
        "methods_agree": sum(r["same_method"] for r in rows),
        "total": len(rows),
        "max_abs_diff": max(r["abs_diff"] for r in rows),
        "max_rel_diff": max(r["rel_diff"] for r in rows),
        "dataset_agrees": engine["dataset_drift"] == evidently["dataset_drift"]
        and engine["drifted_count"] == evidently["drifted_count"],
    }


def render(results: dict[str, Any], comparisons: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    out = [f"## Drift engine vs Evidently {results.get('evidently_version', '')} DataDriftPreset", ""]
    out.append(
        f"Synthetic data (seed {args.seed}): {args.cols} columns per frame "
        f"({sum(s.kind == 'numeric' for s in column_specs(args.cols))} numeric float64, "
        f"{sum(s.kind == 'categorical' for s in column_specs(args.cols))} categorical strings), "
        f"current rows = {args.current_fraction:g} x reference rows; "
        f"machine: {os.cpu_count()} cores. Each row below ran in its own subprocess."
    )
    out += [
        "",
        "| variant | reference rows | current rows | cols | wall time (s) | CPU time (s) | load avg before | "
        "RSS before (MiB) | peak RSS during (MiB) | engine working memory (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in results["runs"]:
        working = _fmt_mib(run.get("engine_working_mib", float("nan")))
        name = "engine `compute_drift`" if run["variant"] == "engine" else "Evidently `DataDriftPreset`"
        if len(run.get("repeat_seconds", [])) > 1:
            name += f" (median of {len(run['repeat_seconds'])} runs)"
        out.append(
            f"| {name} | {run['rows']:,} | {run['current_rows']:,} | {run['cols']} | {run['seconds']:.2f} | "
            f"{run['cpu_seconds']:.2f} | {run['load_before']:.1f} | {_fmt_mib(run['rss_before_mib'])} | "
            f"{_fmt_mib(run['peak_during_mib'])} | {working} |"
        )
    out += [
        "",
        "*Wall/CPU time*: the `compute_drift` or `Report.run` call only (data generation and imports excluded); "
        "CPU time is user + system over all threads of the process. *Load avg before*: 1-minute load average "
        "of the machine when the call started (other work on the host inflates wall time). "
        "*RSS before*: process resident memory with libraries imported and both input frames built. "
        "*Peak RSS during*: resident high-water mark over the timed call only (reset just before it via "
        "`/proc/self/clear_refs`), input data included. *Engine working memory*: tracemalloc peak of "
        "allocations made by a second, untimed `compute_drift` call (numpy buffers included).",
    ]
    repeat_seconds = results["runs"][0].get("repeat_seconds", [])
    if len(repeat_seconds) > 1:
        out += ["", "Engine wall times of all runs at full size (s): " + ", ".join(f"{t:.2f}" for t in repeat_seconds)]

    big = results["runs"][0]
    if big.get("verification"):
        out += [
            "",
            f"Exactness at {big['rows']:,} rows: engine Wasserstein scores vs "
            "`scipy.stats.wasserstein_distance(ref, cur) / max(std(ref), 0.001)` on the full columns:",
            "",
            "| column | engine | scipy | relative difference | scipy time (s) |",
            "|---|---:|---:|---:|---:|",
        ]
        for check in big["verification"]:
            out.append(
                f"| {check['column']} | {check['engine']:.10g} | {check['scipy']:.10g} | "
                f"{check['rel_diff']:.1e} | {check['scipy_seconds']:.2f} |"
            )

    if comparisons:
        out += [
            "",
            "### Agreement with Evidently on identical data",
            "",
            "| reference rows | regime | same decision | same method | dataset verdict agrees | "
            "max abs score diff | max rel score diff |",
            "|---:|---|---:|---:|---|---:|---:|",
        ]
        for label, comp in comparisons.items():
            out.append(
                f"| {comp['rows_count']:,} | {label} | {comp['decisions_agree']}/{comp['total']} | "
                f"{comp['methods_agree']}/{comp['total']} | {'yes' if comp['dataset_agrees'] else 'NO'} | "
                f"{comp['max_abs_diff']:.1e} | {comp['max_rel_diff']:.1e} |"
            )
        for label, comp in comparisons.items():
            out += [
                "",
                f"#### Per column, {comp['rows_count']:,} reference rows ({label})",
                "",
                "| column | injected change | method | engine score | Evidently score | engine drift | "
                "Evidently drift | agree |",
                "|---|---|---|---:|---:|---|---|---|",
            ]
            for row in comp["rows"]:
                e, v, spec = row["engine"], row["evidently"], row["spec"]
                method = e["method"] if row["same_method"] else f"{e['method']} / {v['method']}"
                out.append(
                    f"| {spec.name} | {spec.pattern} | {method} | {e['score']:.6g} | {v['score']:.6g} | "
                    f"{'yes' if e['drifted'] else 'no'} | {'yes' if v['drifted'] else 'no'} | "
                    f"{'yes' if row['same_decision'] else '**NO**'} |"
                )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per frame for the engine timing")
    parser.add_argument("--cols", type=int, default=50, help="columns per frame")
    parser.add_argument(
        "--compare-rows",
        type=int,
        default=100_000,
        help="rows per frame for the engine-vs-Evidently comparison (0 to skip)",
    )
    parser.add_argument(
        "--small-rows",
        type=int,
        default=800,
        help="rows per frame for the small-data (<=1000 reference rows) comparison (0 to skip)",
    )
    parser.add_argument(
        "--current-fraction",
        type=float,
        default=1.0,
        help="current rows as a fraction of reference rows (1.0: same size)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=None, help="engine threads (default: min(cores, 4))")
    parser.add_argument(
        "--verify-columns", type=int, default=3, help="Wasserstein columns re-checked with scipy at --rows"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="engine runs at --rows (fresh subprocess each); the median one is reported",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per subprocess")
    parser.add_argument("--json", type=Path, default=None, help="also write raw results here")
    parser.add_argument("--worker", choices=["engine", "evidently"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(run_worker(args)))
        return 0

    import evidently

    repeats = [
        spawn("engine", args.rows, args, verify_columns=args.verify_columns if i == 0 else 0)
        for i in range(max(1, args.repeat))
    ]
    big = sorted(repeats, key=lambda run: run["seconds"])[len(repeats) // 2]  # the median run
    big["repeat_seconds"] = [run["seconds"] for run in repeats]
    big["verification"] = repeats[0].get("verification", [])
    runs = [big]
    comparisons: dict[str, dict[str, Any]] = {}
    for rows, label in ((args.compare_rows, "Wasserstein / Jensen-Shannon"), (args.small_rows, "K-S / chi-square / Z")):
        if rows <= 0:
            continue
        engine_run = spawn("engine", rows, args)
        evidently_run = spawn("evidently", rows, args)
        runs += [engine_run, evidently_run]
        comparisons[label] = {**compare(engine_run, evidently_run), "rows_count": rows}
    results = {"runs": runs, "evidently_version": evidently.__version__}
    print(render(results, comparisons, args))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    failures = sum(c["total"] - c["decisions_agree"] for c in comparisons.values())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
