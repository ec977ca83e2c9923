"""``training_job`` on a 5 M-row iris-shaped landing: wall time and peak RSS of the whole process tree.

A fresh platform home is first trained on the bundled iris data (as a real platform would be), then
one CSV of ``--rows`` iris-shaped rows (the iris rows with seeded Gaussian noise, clipped to the
spec's ranges, labels kept) is landed in ``data/iris/incoming/`` and ``dagster job execute -m
ml_platform -j training_job`` is timed on it. The peak RSS is the maximum, sampled every 0.1 s from
/proc, of the sum over the ``dagster`` process and all its descendants (the run worker, the serving
smoke test). Target with the default training window: at most 3 minutes and 2 GB.

    PYTHONPATH=. .venv/bin/python benchmarks/training.py --rows 5000000
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PAGE = os.sysconf("SC_PAGE_SIZE")


def write_landing(path: Path, rows: int, seed: int = 7) -> int:
    """Write ``rows`` iris-shaped rows to ``path`` (CSV, in chunks); return its size in bytes."""
    import numpy as np
    import pandas as pd

    base = pd.read_csv(REPO_ROOT / "ml_platform/data/iris.csv")
    features = base.columns[:-1]
    rng = np.random.default_rng(seed)
    chunk = 500_000
    with path.open("w") as handle:
        handle.write(",".join(base.columns) + "\n")
        written = 0
        while written < rows:
            n = min(chunk, rows - written)
            picks = base.iloc[rng.integers(0, len(base), n)].reset_index(drop=True)
            noisy = picks[features].to_numpy() + rng.normal(0, 0.15, (n, len(features)))
            frame = pd.DataFrame(np.clip(noisy, 0.0, 10.0).round(2), columns=features)
            frame["target"] = picks["target"].to_numpy()
            frame.to_csv(handle, header=False, index=False)
            written += n
    return path.stat().st_size


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and every descendant (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields[21]) * PAGE
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


STEP_EVENT = re.compile(r"^(\S+ \S+) \+0000 - dagster - \w+ - \S+ - \S+ - \d+ - (\S+) - STEP_(START|SUCCESS|FAILURE)")


def step_table(log: Path, samples: list[tuple[float, int]]) -> str:
    """Seconds and peak process-tree RSS of every step of the run (from the log's step events)."""
    import datetime

    starts: dict[str, float] = {}
    rows = ["| step | seconds | peak RSS (MiB) |", "|---|---|---|"]
    for line in log.read_text(errors="replace").splitlines():
        match = STEP_EVENT.match(line)
        if not match:
            continue
        when = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.UTC).timestamp()
        step, event = match.group(2), match.group(3)
        if event == "START":
            starts[step] = when
            continue
        began = starts.pop(step, when)
        peak = max((rss for t, rss in samples if began - 1 <= t <= when + 1), default=0)
        rows.append(f"| {step} | {when - began:.0f} | {peak / 2**20:.0f} |")
    return "\n".join(rows)


def timed_job(env: dict[str, str], log: Path, samples: list[tuple[float, int]] | None = None) -> tuple[float, int, int]:
    """Run ``training_job``; return (wall seconds, peak process-tree RSS bytes, exit code)."""
    peak = 0
    samples = [] if samples is None else samples
    command = [sys.executable, "-m", "dagster", "job", "execute", "-m", "ml_platform", "-j", "training_job"]
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                rss = tree_rss(process.pid)
                samples.append((time.time(), rss))
                peak = max(peak, rss)
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = process.wait()
        done.set()
        sampler.join()
    return time.perf_counter() - started, peak, code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the platform home (printed)")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="ml_platform_bench_training_"))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "ML_PLATFORM_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "GX_ANALYTICS_ENABLED": "False",
        "DAGSTER_DISABLE_TELEMETRY": "true",
    }
    (home / "dagster").mkdir(parents=True)
    try:
        wall, peak, code = timed_job(env, home / "first_run.log")
        print(f"first run (bundled iris, fresh home): {wall:.1f} s, peak RSS {peak / 2**20:.0f} MiB, exit {code}")
        incoming = home / "data/iris/incoming"
        landing = incoming / "big.csv.part"
        size = write_landing(landing, args.rows)
        final = incoming / "big.csv"
        landing.rename(final)
        old = time.time() - 60
        os.utime(final, (old, old))
        load = os.getloadavg()
        samples: list[tuple[float, int]] = []
        wall, peak, code = timed_job(env, home / "big_run.log", samples)
        print(step_table(home / "big_run.log", samples))
        print(
            f"| {args.rows:,} rows ({size / 2**20:.0f} MiB) | {wall:.1f} s | {peak / 2**20:.0f} MiB | exit {code} | "
            f"load {load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end |"
        )
        if code != 0:
            print(f"run failed; log: {home / 'big_run.log'}")
            return code
    finally:
        if args.keep:
            print(f"platform home kept: {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
