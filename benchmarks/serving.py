"""Serving benchmark: our LitServe service vs a plain Starlette peer, a FastAPI server and ``mlflow models serve``.

Run (from the repository root, with the project venv)::

    .venv/bin/python benchmarks/serving.py                 # fresh temp MLflow store, iris forest
    .venv/bin/python benchmarks/serving.py --duration 20 --workers 2 --max-batch-size 64

All servers serve the same registered model version on 127.0.0.1, one at a
time, and face the same load generator (wrk, one thread, when installed; else aiohttp in its own process):

- single-row requests from ``--concurrency`` (32) connections for ``--duration``
  seconds: requests/s, p50, p99;
- 1,000-row requests from ``--batch-concurrency`` connections: rows/s;
- in-process ``predict`` of the same model (ONNX and sklearn) as the ceiling.

The plain peer (``benchmarks/plain_peer.py``: Starlette + uvicorn + onnxruntime
+ orjson, one process, no batching) serves the version's ``model.onnx``. For
every server the benchmark reads ``/proc`` over each measured window: CPU
seconds per process of the server's process tree (and of the load generator)
per request, the tree's summed RSS idle and its peak under load, and PSS.

It prints a markdown table and the command that produced it. This is a
benchmark, not a test: numbers depend on the machine and what else runs on it.
``--baseline-server`` is an internal mode that runs the FastAPI baseline (the
predecessor's approach: one process, sklearn ``predict`` on a DataFrame).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on sys.path, and this file would shadow the serving package.
sys.path[:] = [str(REPO_ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

MODEL_NAME = "iris-random-forest"
ROW = [5.8, 2.7, 5.1, 1.9]
BATCH_ROWS = 1000


# --- the FastAPI baseline (internal mode) ------------------------------------------------------


def run_baseline_server(model_dir: str, port: int) -> None:
    """A single uvicorn process holding the sklearn model: what the platform's predecessor ran."""
    import mlflow.sklearn
    import pandas as pd
    import uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel

    from serving.registry import ModelBundle, load_bundle_spec

    spec = load_bundle_spec(ModelBundle(MODEL_NAME, "0", model_dir, False))
    model = mlflow.sklearn.load_model(model_dir)
    columns = spec.feature_names
    app = FastAPI()

    class PredictRequest(BaseModel):
        features: list[list[float]]

    def predict(request: PredictRequest) -> dict[str, Any]:
        frame = pd.DataFrame(request.features, columns=columns)
        return {
            "predictions": model.predict(frame).tolist(),
            "probabilities": model.predict_proba(frame).tolist(),
        }

    predict.__annotations__["request"] = PredictRequest  # a local class: resolve the postponed annotation
    app.post("/predict")(predict)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --- the load generator (runs in its own process) ----------------------------------------------


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    rows_per_request: int
    percentiles: dict[float, float] | None = None  # wrk reports percentiles, not every latency

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def rows_per_second(self) -> float:
        return self.requests * self.rows_per_request / self.seconds

    def percentile(self, q: float) -> float:
        if self.percentiles is not None:
            return self.percentiles.get(q, float("nan"))
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def _load(
    url: str, body: bytes, concurrency: int, duration: float, warmup: float, mark: Callable[[str], None]
) -> dict[str, Any]:
    import aiohttp

    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    latencies: list[float] = []
    errors = 0
    measuring = False
    stop_at = time.perf_counter() + warmup + duration

    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def client() -> None:
            nonlocal errors
            while (now := time.perf_counter()) < stop_at:
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        ok = response.status == 200
                except (TimeoutError, aiohttp.ClientError):
                    ok = False
                if measuring:
                    if ok:
                        latencies.append((time.perf_counter() - now) * 1000)
                    else:
                        errors += 1

        tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        mark("start")
        measuring = True
        started = time.perf_counter()
        await asyncio.gather(*tasks)
        seconds = time.perf_counter() - started
        mark("end")
    return {"requests": len(latencies), "errors": errors, "seconds": seconds, "latencies_ms": latencies}


def _load_process(url: str, body: bytes, concurrency: int, duration: float, warmup: float, out: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out.send(asyncio.run(_load(url, body, concurrency, duration, warmup, out.send)))


WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * WRK_UNITS[match.group(2)]


def generate_load_wrk(
    url: str,
    body: bytes,
    rows: int,
    concurrency: int,
    duration: float,
    warmup: float,
    on_mark: Callable[[str, int], None] | None = None,
) -> LoadResult:
    """Closed-loop load with wrk (one thread: it needs far less CPU than any Python client), after a warm-up run."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = [==[{body.decode()}]==]\n"
        )
    base = ["wrk", "-t1", f"-c{concurrency}", "--latency", "-s", script.name]
    try:
        if warmup > 0:
            subprocess.run([*base, f"-d{max(1, round(warmup))}s", url], check=True, capture_output=True)
        process = subprocess.Popen([*base, f"-d{max(1, round(duration))}s", url], stdout=subprocess.PIPE, text=True)
        if on_mark is not None:
            on_mark("start", process.pid)
        assert process.stdout is not None
        output = process.stdout.read()
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: its CPU is still readable
        if on_mark is not None:
            on_mark("end", process.pid)
        process.wait()
    finally:
        os.unlink(script.name)
    total = int(re.search(r"(\d+) requests in ([\d.]+)(\w+)", output).group(1))  # type: ignore[union-attr]
    timing = re.search(r"requests in ([\d.]+\w+)", output)
    seconds = _wrk_ms(timing.group(1)) / 1000 if timing else duration
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = int(non_2xx.group(1)) if non_2xx else 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    percentiles = {float(q): _wrk_ms(v) for q, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", output, re.M)}
    return LoadResult(total - (int(non_2xx.group(1)) if non_2xx else 0), errors, seconds, [], rows, percentiles)


def generate_load(
    url: str,
    body: bytes,
    rows: int,
    concurrency: int,
    duration: float,
    warmup: float,
    on_mark: Callable[[str, int], None] | None = None,
) -> LoadResult:
    """Closed-loop load from ``concurrency`` connections, in a separate process.

    ``on_mark("start" | "end", load_pid)`` is called when the measured window opens and closes.
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_load_process, args=(url, body, concurrency, duration, warmup, child))
    process.start()
    while isinstance(message := parent.recv(), str):
        if on_mark is not None:
            on_mark(message, process.pid or 0)
    process.join()
    return LoadResult(rows_per_request=rows, **message)


# --- servers -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering {url}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready within {timeout}s")


@contextmanager
def server(command: list[str], env: dict[str, str], health_url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        try:
            wait_ready(health_url, process)
        except RuntimeError:
            print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                process.wait(60)
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# --- process tree: CPU and memory from /proc -------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    cpu: tuple[float, float]  # user, system seconds
    rss: int  # bytes


def proc_stat(pid: int) -> ProcStat | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # fields[0] is field 3 (state) of proc(5)
    return ProcStat(
        pid, int(fields[1]), (int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS), int(fields[21]) * PAGE_SIZE
    )


def process_tree(root: int) -> dict[int, ProcStat]:
    """``root`` and all its descendants."""
    children: dict[int, list[ProcStat]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (stat := proc_stat(int(entry.name))) is not None:
            children.setdefault(stat.ppid, []).append(stat)
    tree, frontier = {}, [root]
    if (top := proc_stat(root)) is not None:
        tree[root] = top
    while frontier:
        for child in children.get(frontier.pop(), []):
            tree[child.pid] = child
            frontier.append(child.pid)
    return tree


def pss(pid: int) -> int:
    """Proportional set size in bytes (shared pages split between the processes sharing them); 0 if gone."""
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def listening_sockets() -> dict[int, str]:
    """Socket inode -> role, for listening TCP sockets ("API server") and multiprocessing manager listeners."""
    roles: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    roles[int(fields[9])] = "API server"
    with suppress(OSError):
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 8 and int(fields[3], 16) & 0x10000 and "listener-" in fields[7]:
                roles[int(fields[6])] = "multiprocessing manager"
    return roles


def describe(pid: int, root: int, sockets: dict[int, str]) -> str:
    """A role name for a process of a server's tree: from its command line and the sockets it listens on."""
    if pid == root:
        return "main"
    with suppress(OSError):
        if "resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            return "resource tracker"
    with suppress(OSError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with suppress(OSError):
                target = os.readlink(fd.path)
                if target.startswith("socket:[") and (role := sockets.get(int(target[8:-1]))):
                    return role
    return "inference worker"


@dataclass
class Memory:
    rss: int  # sum of RSS over the tree, bytes
    pss: int  # sum of PSS over the tree, bytes
    processes: int


def tree_memory(root: int) -> Memory:
    tree = process_tree(root)
    return Memory(sum(s.rss for s in tree.values()), sum(pss(pid) for pid in tree), len(tree))


@dataclass
class Usage:
    """CPU seconds per process of the server's tree (and of the load generator) over the measured window."""

    cpu: dict[str, tuple[float, float]]  # role -> (user, system) seconds
    loadgen_cpu: float
    rss_peak: int  # highest sum of RSS over the tree seen while measuring
    memory_end: Memory  # RSS and PSS at the end of the window (still under load)


class TreeMonitor:
    """CPU deltas of every process of a tree between two marks, and its summed RSS sampled in between."""

    def __init__(self, root: int, interval: float = 0.2) -> None:
        self.root = root
        self.interval = interval
        self.before: dict[int, ProcStat] = {}
        self.loadgen_before = 0.0
        self.rss_peak = 0
        self.usage: Usage | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.rss_peak = max(self.rss_peak, sum(s.rss for s in process_tree(self.root).values()))

    def mark(self, what: str, loadgen: int) -> None:
        stat = proc_stat(loadgen)
        loadgen_cpu = sum(stat.cpu) if stat else 0.0
        if what == "start":
            self.before = process_tree(self.root)
            self.loadgen_before = loadgen_cpu
            self.rss_peak = sum(s.rss for s in self.before.values())
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
            return
        after = process_tree(self.root)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        memory = Memory(sum(s.rss for s in after.values()), sum(pss(pid) for pid in after), len(after))
        cpu: dict[str, tuple[float, float]] = {}
        sockets = listening_sockets()
        for pid, stat in sorted(after.items()):
            start = self.before.get(pid)
            user, system = (stat.cpu[0] - start.cpu[0], stat.cpu[1] - start.cpu[1]) if start else stat.cpu
            role = base = describe(pid, self.root, sockets)
            count = 1
            while role in cpu:
                count += 1
                role = f"{base} {count}"
            cpu[role] = (user, system)
        self.usage = Usage(cpu, loadgen_cpu - self.loadgen_before, max(self.rss_peak, memory.rss), memory)


# --- in-process ceiling --------------------------------------------------------------------------


def rows_per_second(fn: Callable[[], Any], rows: int, seconds: float, windows: int = 5) -> float:
    """Median rows/s over ``windows`` equal slices of ``seconds`` (one noisy slice does not move it)."""
    fn()
    rates = []
    for _ in range(windows):
        calls, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds / windows:
            fn()
            calls += 1
        rates.append(calls * rows / elapsed)
    return statistics.median(rates)


def in_process_ceiling(model_dir: str, seconds: float) -> dict[str, float]:
    """Rows/s of the model itself: ONNX (one thread, as a worker runs it) and sklearn; medians of 5 slices."""
    import mlflow.sklearn
    import numpy as np
    import onnxruntime as ort
    import pandas as pd

    from serving.registry import ModelBundle, load_bundle_spec

    spec = load_bundle_spec(ModelBundle(MODEL_NAME, "0", model_dir, True))
    batch = np.tile(np.asarray(ROW, dtype=np.float32), (BATCH_ROWS, 1))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(Path(model_dir) / "extra_files" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    model = mlflow.sklearn.load_model(model_dir)
    frame = pd.DataFrame(batch.astype(np.float64), columns=spec.feature_names)
    one, one_frame = batch[:1], frame.iloc[:1]

    def sk(x: Any) -> Callable[[], Any]:
        return lambda: (model.predict(x), model.predict_proba(x))

    return {
        "onnx_1": rows_per_second(lambda: session.run(None, {"input": one}), 1, seconds),
        "onnx_1000": rows_per_second(lambda: session.run(None, {"input": batch}), BATCH_ROWS, seconds),
        "sklearn_1": rows_per_second(sk(one_frame), 1, seconds),
        "sklearn_1000": rows_per_second(sk(frame), BATCH_ROWS, seconds),
    }


# --- model store -------------------------------------------------------------------------------------


def register_iris(root: Path) -> tuple[str, str]:
    """A fresh sqlite store with the iris forest registered by ml_platform (verified ONNX graph)."""
    import mlflow
    import pandas as pd

    from ml_platform.ml.registry import log_and_register_model
    from ml_platform.ml.training import evaluate_model, fit_model, split_dataset
    from ml_platform.spec import load_spec

    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.create_experiment("serving-benchmark", artifact_location=(root / "artifacts").as_uri())
    mlflow.set_experiment("serving-benchmark")
    spec = load_spec("iris")
    split = split_dataset(pd.read_csv(spec.bootstrap_path()), spec)
    model = fit_model(split, spec)
    with mlflow.start_run() as run:
        registered, export = log_and_register_model(
            model,
            spec,
            split.x_train,
            run_id=run.info.run_id,
            data_version="benchmark",
            metrics=evaluate_model(model, split, spec).flat_metrics(),
            extra_tags={},
        )
    if not export.verified:
        raise RuntimeError(f"ONNX export failed: {export.reason}")
    # Serving loads only validated versions: record the blocking gates as passed, as training_job's checks do.
    from mlflow import MlflowClient

    from ml_platform.ml.gates import record_gate
    from ml_platform.ml.registry import BLOCKING_MODEL_GATES, mark_validated

    client = MlflowClient(tracking_uri)
    for gate in BLOCKING_MODEL_GATES:
        record_gate(client, MODEL_NAME, str(registered.version), gate, True, "benchmark: not gated")
    mark_validated(client, MODEL_NAME, str(registered.version))
    return tracking_uri, registered.version


# --- the benchmark -------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    single: LoadResult | None
    batch: LoadResult | None
    idle: Memory | None = None
    single_usage: Usage | None = None
    batch_usage: Usage | None = None


def measure(
    name: str, url: str, single_body: bytes, batch_body: bytes, args: argparse.Namespace, root: int | None = None
) -> Row:
    """Both load cases against one server; with ``root`` (the server's pid), its tree's CPU and memory too."""
    idle = None
    if root is not None:
        time.sleep(2.0)  # let start-up settle before the idle reading
        idle = tree_memory(root)
        print(f"    idle: {idle.processes} processes, RSS {idle.rss / MIB:,.0f} MiB", file=sys.stderr)
    usages: list[Usage | None] = []
    results: list[LoadResult] = []
    for rows, body, concurrency in (
        (1, single_body, args.concurrency),
        (BATCH_ROWS, batch_body, args.batch_concurrency),
    ):
        what = "single rows" if rows == 1 else f"{BATCH_ROWS}-row batches"
        print(f"  {name}: {what} x{concurrency} for {args.duration}s ...", file=sys.stderr)
        monitor = TreeMonitor(root) if root is not None else None
        load = generate_load_wrk if args.loadgen == "wrk" else generate_load
        result = load(url, body, rows, concurrency, args.duration, args.warmup, monitor.mark if monitor else None)
        print(f"    {result.requests} ok, {result.errors} errors", file=sys.stderr)
        results.append(result)
        usages.append(monitor.usage if monitor else None)
    return Row(name, results[0], results[1], idle, usages[0], usages[1])


def fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def report(rows: list[Row], ceiling: dict[str, float], args: argparse.Namespace) -> str:
    lines = [
        f"| server | single-row req/s (x{args.concurrency}) | p50 ms | p99 ms | errors | "
        f"{BATCH_ROWS}-row rows/s (x{args.batch_concurrency}) | batch p50 ms | batch errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        s, b = row.single, row.batch
        lines.append(
            f"| {row.name} | {fmt(s.rps) if s else '-'} | {fmt(s.percentile(50), 1) if s else '-'} | "
            f"{fmt(s.percentile(99), 1) if s else '-'} | {s.errors if s else '-'} | "
            f"{fmt(b.rows_per_second) if b else '-'} | {fmt(b.percentile(50), 1) if b else '-'} | "
            f"{b.errors if b else '-'} |"
        )
    lines += [
        f"| in-process ONNX (1 thread) | {fmt(ceiling['onnx_1'])} rows/s | | | | {fmt(ceiling['onnx_1000'])} | | |",
        f"| in-process sklearn | {fmt(ceiling['sklearn_1'])} rows/s | | | | {fmt(ceiling['sklearn_1000'])} | | |",
    ]
    ours = next((r for r in rows if r.name.startswith("ml_platform")), None)
    base = next((r for r in rows if r.name.startswith("FastAPI")), None)
    if ours and ours.single and ours.batch:
        lines.append("")
        if base and base.single and base.single.requests:
            ratio = ours.single.rps / base.single.rps
            lines.append(f"- single-row throughput vs FastAPI baseline: **{ratio:.1f}x** (target >= 10x)")
        lines.append(f"- single-row p99: **{ours.single.percentile(99):.1f} ms** (target <= 100 ms)")
        share = ours.batch.rows_per_second / ceiling["onnx_1000"]
        lines.append(f"- {BATCH_ROWS}-row throughput vs in-process ONNX predict: **{share:.2f}x** (target >= 0.5x)")
    peer = next((r for r in rows if r.name.startswith("plain")), None)
    if ours and peer and ours.single and peer.single and ours.batch and peer.batch:
        lines.append(
            f"- single-row throughput vs the plain peer: **{ours.single.rps / peer.single.rps:.2f}x** "
            f"(target >= 1.0x); p99 {ours.single.percentile(99):.1f} ms vs {peer.single.percentile(99):.1f} ms "
            "(target <= peer + 5 ms)"
        )
        lines.append(
            f"- {BATCH_ROWS}-row throughput vs the plain peer: "
            f"**{ours.batch.rows_per_second / peer.batch.rows_per_second:.2f}x** (target >= 1.3x)"
        )
    if any(r.single_usage or r.batch_usage for r in rows):
        lines += ["", cost_report(rows, ours, peer)]
    return "\n".join(lines)


def cpu_ms(usage: Usage, requests: int) -> float:
    return sum(u + s for u, s in usage.cpu.values()) * 1000 / max(requests, 1)


def cost_report(rows: list[Row], ours: Row | None, peer: Row | None) -> str:
    """CPU per request per process of each server's tree, and the tree's summed RSS idle and under load."""
    lines = [
        "| server | case | req/s | p50 ms | p99 ms | rows/s | server CPU ms/request | load generator CPU ms/request "
        "| RSS idle MiB | RSS under load MiB (peak) | PSS under load MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    details = []
    for row in rows:
        for case, result, usage in (("single", row.single, row.single_usage), ("batch", row.batch, row.batch_usage)):
            if result is None or usage is None:
                continue
            label = "1 row" if case == "single" else f"{BATCH_ROWS} rows"
            n = max(result.requests, 1)
            lines.append(
                f"| {row.name} | {label} | {fmt(result.rps)} | {fmt(result.percentile(50), 1)} | "
                f"{fmt(result.percentile(99), 1)} | {fmt(result.rows_per_second)} | {cpu_ms(usage, n):.3f} | "
                f"{usage.loadgen_cpu * 1000 / n:.3f} | {fmt(row.idle.rss / MIB) if row.idle else '-'} | "
                f"{fmt(usage.rss_peak / MIB)} | {fmt(usage.memory_end.pss / MIB)} |"
            )
            parts = [
                f"{role} {(u + s) * 1000 / n:.3f} (user {u * 1000 / n:.3f} + sys {s * 1000 / n:.3f})"
                for role, (u, s) in usage.cpu.items()
                if (u + s) * 1000 / n >= 0.0005
            ]
            details.append(f"- {row.name}, {label}: CPU ms per request by process: " + "; ".join(parts))
    lines += ["", *details]
    if ours and peer:
        lines.append("")
        for case, attr in (("single", "single"), ("batch", "batch")):
            o, p = getattr(ours, attr), getattr(peer, attr)
            ou, pu = getattr(ours, f"{attr}_usage"), getattr(peer, f"{attr}_usage")
            if o and p and ou and pu and p.requests:
                p50, p99 = o.percentile(50) / p.percentile(50), o.percentile(99) / p.percentile(99)
                cpu = cpu_ms(ou, o.requests) / cpu_ms(pu, p.requests)
                lines.append(
                    f"- ours / peer, {case}: req/s {o.rps / p.rps:.2f}x, p50 {p50:.2f}x, p99 {p99:.2f}x, "
                    f"CPU per request {cpu:.2f}x, RSS under load {ou.rss_peak / pu.rss_peak:.2f}x"
                )
        if ours.idle and peer.idle:
            lines.append(
                f"- ours / peer, idle: RSS {ours.idle.rss / peer.idle.rss:.2f}x "
                f"({ours.idle.processes} processes vs {peer.idle.processes}), PSS {ours.idle.pss / peer.idle.pss:.2f}x "
                f"({fmt(ours.idle.pss / MIB)} vs {fmt(peer.idle.pss / MIB)} MiB)"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of measured load per scenario")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load first")
    parser.add_argument("--concurrency", type=int, default=32, help="connections for single-row requests")
    parser.add_argument("--batch-concurrency", type=int, default=8, help="connections for 1,000-row requests")
    parser.add_argument("--workers", type=int, default=None, help="WORKERS for our service (default: its own)")
    parser.add_argument("--api-servers", type=int, default=None, help="API_SERVERS for our service (default: its own)")
    parser.add_argument("--max-batch-size", type=int, default=None, help="MAX_BATCH_SIZE for our service")
    parser.add_argument("--batch-timeout", type=float, default=None, help="BATCH_TIMEOUT for our service")
    parser.add_argument("--only", default="ours,peer,fastapi,mlflow", help="comma-separated subset of servers")
    parser.add_argument(
        "--loadgen",
        choices=("wrk", "aiohttp"),
        default="wrk" if shutil.which("wrk") else "aiohttp",
        help="load generator (default: wrk when installed: apt-get install wrk)",
    )
    parser.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_server:
        run_baseline_server(args.model_dir, args.port)
        return 0

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    command = "python benchmarks/serving.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load_before = os.getloadavg()[0]
    only = set(args.only.split(","))
    workdir = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    try:
        print(f"registering the iris model in {workdir} ...", file=sys.stderr)
        tracking_uri, version = register_iris(workdir)
        import mlflow.artifacts

        model_uri = f"models:/{MODEL_NAME}/{version}"
        model_dir = mlflow.artifacts.download_artifacts(model_uri, dst_path=str(workdir / "model"))
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": tracking_uri,
            "PYTHONPATH": str(REPO_ROOT),
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            "ML_PLATFORM_HOME": str(workdir / "home"),
        }
        ours_env = {**env, "PREDICTION_LOG_DIR": str(workdir / "predictions"), "LOG_LEVEL": "warning"}
        for value, name in (
            (args.workers, "WORKERS"),
            (args.api_servers, "API_SERVERS"),
            (args.max_batch_size, "MAX_BATCH_SIZE"),
            (args.batch_timeout, "BATCH_TIMEOUT"),
        ):
            if value is not None:
                ours_env[name] = str(value)

        def features(n: int) -> bytes:
            return json.dumps({"features": [ROW] * n}).encode()

        def dataframe_split(n: int) -> bytes:
            columns = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
            return json.dumps({"dataframe_split": {"columns": columns, "data": [ROW] * n}}).encode()

        from ml_platform.ml.training import class_label
        from serving.registry import ModelBundle, load_bundle_spec

        spec = load_bundle_spec(ModelBundle(MODEL_NAME, version, model_dir, True))
        classes = sorted(spec.target.classes)  # the ONNX probability columns: sklearn's sorted classes_
        peer_config = json.dumps(
            {"features": spec.feature_names, "classes": classes, "labels": [class_label(spec, c) for c in classes]}
        )
        onnx_path = str(Path(model_dir) / "extra_files" / "model.onnx")

        port = free_port()
        candidates = [  # key, name, command, environment, health path, predict path, body builder
            ("fastapi", "FastAPI + uvicorn, sklearn (baseline)",
             [sys.executable, __file__, "--baseline-server", "--model-dir", model_dir, "--port", str(port)],
             env, "/health", "/predict", features),
            ("mlflow", "mlflow models serve",
             [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
              "--host", "127.0.0.1", "--port", str(port)],
             env, "/ping", "/invocations", dataframe_split),
            ("peer", "plain Starlette + uvicorn + ONNX, 1 process",
             [sys.executable, str(REPO_ROOT / "benchmarks" / "plain_peer.py"), "--onnx", onnx_path,
              "--config", peer_config, "--port", str(port)],
             env, "/health", "/predict", features),
            ("ours", "ml_platform serving (LitServe, ONNX)",
             [sys.executable, "-m", "serving", "--model-uri", model_uri, "--port", str(port)],
             ours_env, "/health", "/predict", features),
        ]  # fmt: skip
        rows: list[Row] = []
        for key, name, cmd, server_env, health, path, body in candidates:
            if key not in only:
                continue
            base = f"http://127.0.0.1:{port}"
            with server(cmd, server_env, base + health, workdir / f"{key}.log") as process:
                rows.append(measure(name, base + path, body(1), body(BATCH_ROWS), args, process.pid))

        print("measuring in-process predict ...", file=sys.stderr)
        ceiling = in_process_ceiling(model_dir, min(args.duration, 5.0))
        print(
            f"\n{report(rows, ceiling, args)}\n\nCommand: `{command.strip()}` on {os.cpu_count()} CPUs "
            f"(load average before: {load_before:.1f})"
        )
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
