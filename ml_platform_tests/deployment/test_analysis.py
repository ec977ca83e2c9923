"""Counter windows, quantiles, the router log, and the verdict of one analysis (pure logic, no processes)."""

import json
import math

import pytest

from ml_platform.deployment.analysis import evaluate, step_table
from ml_platform.deployment.measurements import (
    ReadingHistory,
    RouterAttempt,
    RouterWindow,
    TrackReading,
    exact_quantile,
    histogram_quantile,
)
from ml_platform.deployment.metric_source import promql_queries, reading_from_text
from ml_platform.deployment.policy import RolloutPolicy
from ml_platform.deployment.router_log import RouterLogReader, parse_line

INF = math.inf
POLICY = RolloutPolicy(
    steps=(10,), step_pause_seconds=5, analysis_interval_seconds=1, min_requests=10, min_feedback_samples=10
)


def test_histogram_quantile_matches_promql_interpolation() -> None:
    buckets = [(0.1, 50.0), (0.5, 90.0), (1.0, 100.0), (INF, 100.0)]
    # rank 95 of 100 lies in (0.5, 1.0]: 0.5 + 0.5 * (95 - 90) / 10
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.75)
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.95, [(0.1, 0.0), (INF, 0.0)]) is None
    # rank in the +Inf bucket: the highest finite bound, as PromQL answers
    assert histogram_quantile(0.99, [(0.1, 1.0), (0.5, 2.0), (INF, 10.0)]) == 0.5
    assert exact_quantile(0.95, [float(i) for i in range(1, 101)]) == 95.0


def test_window_is_a_difference_and_survives_a_counter_reset() -> None:
    before = TrackReading(
        at=0, requests=100, errors=1, latency_buckets=((0.1, 90.0), (INF, 100.0)), feedback_correct=50
    )
    after = TrackReading(
        at=10, requests=150, errors=3, latency_buckets=((0.1, 130.0), (INF, 150.0)), feedback_correct=80
    )
    window = after.minus(before)
    assert (window.seconds, window.requests, window.errors, window.feedback_correct) == (10, 50, 2, 30)
    assert dict(window.latency_buckets) == {0.1: 40.0, INF: 50.0}
    restarted = TrackReading(at=20, requests=7)
    assert restarted.minus(after).requests == 7  # the process restarted: count from zero


def test_history_picks_the_base_of_a_sliding_window() -> None:
    history = ReadingHistory()
    for t in (0, 2, 4, 6, 8):
        history.add(TrackReading(at=t, requests=t * 10))
    history.add(TrackReading(at=9, reachable=False))  # unreachable readings are not kept
    assert history.base_for(now=8, window_seconds=5, not_before=0).at == 2
    assert history.base_for(now=8, window_seconds=50, not_before=3).at == 4
    assert history.first.at == 0


def test_reading_from_prometheus_text_sums_one_track_and_version() -> None:
    text = "\n".join(
        [
            'ml_serving_requests_total{endpoint="/predict",status="200",model_version="7",track="canary"} 40',
            'ml_serving_requests_total{endpoint="/predict",status="503",model_version="7",track="canary"} 2',
            'ml_serving_requests_total{endpoint="/feedback",status="200",model_version="7",track="canary"} 30',
            'ml_serving_requests_total{endpoint="/predict",status="200",model_version="6",track="stable"} 400',
            'ml_serving_request_duration_seconds_bucket{endpoint="/predict",le="0.1",model_version="7",'
            'track="canary"} 41',
            'ml_serving_request_duration_seconds_bucket{endpoint="/predict",le="+Inf",model_version="7",'
            'track="canary"} 42',
            'ml_serving_feedback_total{outcome="correct",model_version="7",track="canary"} 25',
            'ml_serving_feedback_total{outcome="incorrect",model_version="7",track="canary"} 5',
        ]
    )
    reading = reading_from_text([text, text], "canary", "7", at=1.0)
    assert (reading.requests, reading.errors, reading.feedback_correct, reading.feedback_incorrect) == (84, 4, 50, 10)
    assert reading.latency_buckets == ((0.1, 82.0), (INF, 84.0))
    queries = promql_queries("canary", "7", 'job="ml-serving"')
    assert queries["errors"] == (
        'sum(ml_serving_requests_total{endpoint=~"/?predict",status=~"5..",track="canary",model_version="7",'
        'job="ml-serving"})'
    )
    # Two models may share a track and a version number: one model's series only.
    assert 'model="iris",track="canary"' in promql_queries("canary", "7", model="iris")["requests"]
    other = text.replace('track="canary"', 'model="wine",track="canary"')
    assert reading_from_text([other], "canary", "7", at=1.0, model="iris").requests == 0
    assert reading_from_text([other], "canary", "7", at=1.0, model="wine").requests == 42


def test_router_log_lines_count_canary_attempts_and_their_failures() -> None:
    canary = "127.0.0.1:9002"
    retried = {
        "t": 5.0,
        "uri": "/predict",
        "addr": f"{canary}, 127.0.0.1:9001",
        "ustatus": "503, 200",
        "urt": "0.002, 0.010",
    }
    refused = {
        "t": 6.0,
        "uri": "/predict",
        "addr": f"{canary}, 127.0.0.1:9001",
        "ustatus": "502, 200",
        "urt": "0.000, 0.01",
    }
    ok = {"t": 7.0, "uri": "/predict", "addr": canary, "ustatus": "200", "urt": "0.020"}
    stable_only = {"t": 8.0, "uri": "/predict", "addr": "127.0.0.1:9001", "ustatus": "200", "urt": "0.020"}
    feedback = {"t": 9.0, "uri": "/feedback", "addr": canary, "ustatus": "200", "urt": "0.001"}
    attempts = [
        a for line in (retried, refused, ok, stable_only, feedback) for a in parse_line(json.dumps(line), canary)
    ]
    assert [(a.at, a.failed, a.seconds) for a in attempts] == [(5.0, True, 0.002), (6.0, True, 0.0), (7.0, False, 0.02)]
    window = RouterWindow.of(attempts)
    assert (window.requests, window.errors) == (3, 2)
    assert parse_line("not json", canary) == []
    # meant for the canary, answered by the stable backup without trying it (marked down): a failed attempt
    skipped = {**stable_only, "pool": "canary"}
    assert [(a.failed, a.seconds) for a in parse_line(json.dumps(skipped), canary)] == [(True, None)]
    assert parse_line(json.dumps({**stable_only, "pool": "stable"}), canary) == []


def _window(requests: float, errors: float = 0, fast: float | None = None, correct: float = 0, wrong: float = 0):
    fast = requests if fast is None else fast
    reading = TrackReading(
        at=10,
        requests=requests,
        errors=errors,
        latency_buckets=((0.1, fast), (1.0, requests), (INF, requests)),
        feedback_correct=correct,
        feedback_incorrect=wrong,
    )
    return reading.minus(TrackReading(at=0))


def _evaluate(**kwargs):
    base = {"step": 1, "weight": 10, "at": 10.0, "healthy": True, "health_detail": "ok", "router": None}
    return evaluate(POLICY, **{**base, **kwargs})


def test_a_healthy_canary_with_enough_samples_passes() -> None:
    analysis = _evaluate(window=_window(50), cumulative=_window(50, correct=40, wrong=5))
    assert analysis.verdict == "pass", analysis.reasons
    assert analysis.metric("live_accuracy").observed == pytest.approx(40 / 45)


def test_too_few_samples_is_inconclusive_not_a_pass() -> None:
    analysis = _evaluate(window=_window(5), cumulative=_window(5, correct=5))
    assert analysis.verdict == "inconclusive"
    assert any("not enough samples" in r for r in analysis.reasons)


@pytest.mark.parametrize(
    ("window", "cumulative", "failing"),
    [
        (_window(50, errors=2), _window(50, correct=50), "error_rate"),  # 4% 5xx
        (_window(50, fast=10), _window(50, correct=50), "p95_latency"),  # most requests > 100 ms, p95 ~ 1 s
        (_window(50), _window(50, correct=3, wrong=12), "live_accuracy"),  # 20% accuracy
    ],
)
def test_each_threshold_fails_the_analysis(window, cumulative, failing) -> None:
    analysis = _evaluate(window=window, cumulative=cumulative)
    assert analysis.verdict == "fail"
    assert analysis.metric(failing).verdict == "fail"


def test_errors_beyond_the_threshold_fail_even_before_the_minimum_sample() -> None:
    """2 failures out of 3 already exceed 1% of the 10 requests needed to judge: no need to wait."""
    router = RouterWindow.of(
        [RouterAttempt(1.0, True, 0.001), RouterAttempt(2.0, True, 0.001), RouterAttempt(3.0, False, 0.01)]
    )
    analysis = _evaluate(window=_window(0), cumulative=_window(0), router=router)
    assert analysis.metric("error_rate").verdict == "fail"
    assert analysis.metric("error_rate").source == "router"


def test_the_router_view_catches_what_the_canary_cannot_report() -> None:
    """The canary's own metrics look perfect, but the router saw it answer slowly."""
    slow = RouterWindow.of([RouterAttempt(float(i), False, 1.2) for i in range(20)])
    analysis = _evaluate(window=_window(50), cumulative=_window(50, correct=50), router=slow)
    assert analysis.verdict == "fail"
    latency = analysis.metric("p95_latency")
    assert (latency.source, latency.observed) == ("router", 1.2)


def test_an_unhealthy_canary_fails_whatever_the_metrics() -> None:
    analysis = _evaluate(healthy=False, health_detail="process gone", window=None, cumulative=None)
    assert analysis.verdict == "fail"
    assert analysis.reasons[0] == "canary unhealthy: process gone"
    table = step_table([analysis], started_at=0.0)
    assert "NO: process gone" in table and "**fail**" in table


def test_slow_requests_beyond_the_quantile_fail_before_the_minimum_sample() -> None:
    """One request over 500 ms among the first 10 already puts their p95 over the threshold."""
    router = RouterWindow.of([RouterAttempt(1.0, False, 1.3), RouterAttempt(2.0, False, 0.01)])
    analysis = _evaluate(window=_window(0), cumulative=_window(0), router=router)
    assert analysis.metric("p95_latency").verdict == "fail"
    fast = RouterWindow.of([RouterAttempt(1.0, False, 0.01), RouterAttempt(2.0, False, 0.02)])
    assert _evaluate(window=_window(0), cumulative=_window(0), router=fast).metric("p95_latency").verdict == (
        "inconclusive"
    )
    # from the histogram: requests above the first bucket bound at or over the threshold (1.0 s here)
    assert _window(4, fast=2).slower_than(0.5) == 0.0
    assert _window(4, fast=2).slower_than(0.1) == 2.0


def test_the_router_log_is_read_incrementally(tmp_path) -> None:
    canary = "127.0.0.1:9002"
    log = tmp_path / "access.log"
    log.write_text("")
    reader = RouterLogReader(log, canary)
    line = {"t": 5.0, "uri": "/predict", "addr": canary, "ustatus": "200", "urt": "0.020"}
    feedback = {"t": 6.5, "uri": "/feedback", "addr": canary, "ustatus": "200", "urt": "0.001"}
    with open(log, "a") as handle:
        handle.write(json.dumps(line) + "\n" + json.dumps(line)[:20])  # the second line is not finished yet
    assert len(reader.read_new()) == 1
    with open(log, "a") as handle:
        handle.write(json.dumps(line)[20:] + "\n")
    assert len(reader.read_new()) == 1 and reader.read_new() == []
    contacts = RouterLogReader(log, canary)
    with open(log, "a") as handle:
        handle.write(json.dumps(feedback) + "\n")
    assert contacts.latest_contact() == 6.5  # any path counts as contact: feedback keeps a canary alive
    assert contacts.latest_contact() is None


def _exposition(requests: int, correct: int) -> str:
    return "\n".join(
        [
            'ml_serving_requests_total{endpoint="/predict",status="200",model_version="7",track="canary"} '
            f"{requests}",
            f'ml_serving_feedback_total{{outcome="correct",model_version="7",track="canary"}} {correct}',
        ]
    )


def test_one_replica_restarting_resets_only_its_share_of_the_summed_counters() -> None:
    """Two replicas scraped over real HTTP; one restarts between two readings (its counters start again)."""
    import http.server
    import threading

    from ml_platform.deployment.metric_source import MetricSource

    bodies = {"a": _exposition(1000, 400), "b": _exposition(1000, 400)}

    class Replica(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = bodies[self.path.strip("/").split("/")[0]].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Replica)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base_url = f"http://127.0.0.1:{server.server_address[1]}"
        targets = [f"{base_url}/a/metrics", f"{base_url}/b/metrics"]
        source = MetricSource()
        before = source.read("canary", "7", targets)
        bodies["a"] = _exposition(30, 10)  # replica a restarted and has answered 30 since
        bodies["b"] = _exposition(1100, 450)  # replica b answered 100 more
        after = source.read("canary", "7", targets)
    finally:
        server.shutdown()
        server.server_close()
    assert (before.requests, after.requests) == (2000, 1130)  # the sum dropped
    window = after.minus(before)
    assert (window.requests, window.feedback_correct) == (130, 60)  # not 1130: only a's share restarted
