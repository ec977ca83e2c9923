"""Code-location load time (every model of the catalog): ``import ml_platform; ml_platform.defs`` vs ``import dagster``.

Each measurement is a fresh interpreter (what `dagster dev`, every run worker and
`dagster job execute` pay). Runs are interleaved so machine noise hits both alike;
the result is the ratio of medians (goal: at most 1.5x).

    .venv/bin/python benchmarks/load_time.py --repeats 15
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = {
    "import dagster": "import dagster",
    "import ml_platform; ml_platform.defs": "import ml_platform; ml_platform.defs",
}
HEAVY_MODULES = ("great_expectations", "evidently", "mlflow", "sklearn", "onnxruntime", "skl2onnx", "dagster_mlflow")


def time_snippet(code: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DAGSTER_DISABLE_TELEMETRY": "true"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO_ROOT)
    return time.perf_counter() - started


def heavy_modules_loaded() -> list[str]:
    probe = (
        f"import sys, ml_platform; ml_platform.defs; print(','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", probe], check=True, env=env, capture_output=True, text=True)
    return [m for m in out.stdout.strip().split(",") if m]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    for code in SNIPPETS.values():  # warm the OS file cache and bytecode caches
        time_snippet(code)
    samples: dict[str, list[float]] = {label: [] for label in SNIPPETS}
    for _ in range(args.repeats):
        for label, code in SNIPPETS.items():
            samples[label].append(time_snippet(code))
    baseline = statistics.median(samples["import dagster"])
    print("| what | median (s) | min (s) | max (s) | ratio to `import dagster` |\n|---|---|---|---|---|")
    for label, values in samples.items():
        median = statistics.median(values)
        print(f"| `{label}` | {median:.3f} | {min(values):.3f} | {max(values):.3f} | {median / baseline:.2f}x |")
    print(f"\nheavy modules imported by loading the code location: {heavy_modules_loaded() or 'none'}")
    sys.path.insert(0, str(REPO_ROOT))
    from ml_platform.catalog import model_names

    print(f"models: {', '.join(model_names())}")
    print(f"repeats: {args.repeats}, python {sys.version.split()[0]}, {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
