"""The private LitServe 0.2.19 and uvicorn members the serving code overrides or calls.

A dependency upgrade that renames or reshapes one of them fails here, by name, instead of silently
bypassing supervision, drain or the HTTP limits (see serving/server.py, serving/http.py, serving/transport.py).
"""

from __future__ import annotations

import inspect

import litserve as ls
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.http import ServingHttpProtocol


def params(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_litserver_hooks_keep_their_shapes():
    server = ls.LitServer
    assert params(server._init_manager) == ["self", "num_api_servers"]
    assert params(server._start_server)[:6] == [
        "self",
        "port",
        "num_uvicorn_servers",
        "log_level",
        "sockets",
        "uvicorn_worker_type",
    ]
    assert params(server._start_worker_monitoring) == ["self", "manager", "uvicorn_workers"]
    assert params(server._perform_graceful_shutdown) == ["self", "manager", "uvicorn_workers", "shutdown_reason"]
    assert params(server._register_internal_endpoints) == ["self"]
    assert params(server._register_api_endpoints) == ["self", "lit_api", "request_type", "response_type"]


def test_litserver_run_waits_on_the_shutdown_event_then_shuts_down_through_our_hooks():
    source = inspect.getsource(ls.LitServer.run)
    order = [
        "self._init_manager(",
        "self.launch_inference_worker(",
        "self._start_server(",
        "self._start_worker_monitoring(",
        "self._shutdown_event.wait()",
        "self._perform_graceful_shutdown(",
    ]
    positions = [source.index(call) for call in order]
    assert positions == sorted(positions)
    assert "sockets = [config.bind_socket()]" in source  # bound in the main process: we close its copy
    # the attributes our _init_manager sets in place of LitServe's
    init = inspect.getsource(ls.LitServer._init_manager)
    for name in ("transport_config.manager", "workers_setup_status", "litapi_request_queues", "_transport"):
        assert name in init


def test_each_api_server_process_knows_its_response_queue_id_and_sends_it_with_each_request():
    """Several API servers (API_SERVERS): each writes its own request pipe, picked by the request's first item.

    LitServe forks API server ``i`` right after setting ``self.app.response_queue_id = i`` (so the child
    keeps ``i``), and every request it submits starts with that id.
    """
    start = inspect.getsource(ls.LitServer._start_server)
    assert "for response_queue_id in range(num_uvicorn_servers):" in start
    assert "self.app.response_queue_id = response_queue_id" in start
    assert start.index("self.app.response_queue_id = response_queue_id") < start.index("w.start()")
    assert 'ctx = mp.get_context("fork")' in start
    submit = inspect.getsource(ls.server.BaseRequestHandler._submit_request)
    assert "response_queue_id = self.server.app.response_queue_id" in submit
    assert "request_queue.put((response_queue_id, uid, time.monotonic(), payload))" in submit
    run = inspect.getsource(ls.LitServer.run)
    assert "manager = self._init_manager(num_api_servers)" in run
    assert "port, num_api_servers, log_level, sockets, api_server_worker_type" in run  # _start_server's arguments


def test_prometheus_merge_reads_the_counter_files_for_the_live_accuracy_of_all_processes():
    from prometheus_client.multiprocess import MultiProcessCollector

    assert params(MultiProcessCollector.merge) == ["files", "accumulate"]
    assert isinstance(inspect.getattr_static(MultiProcessCollector, "merge"), staticmethod)


def test_uvicorn_protocol_hooks_and_config_accept_our_class():
    for name in (
        "connection_made",
        "connection_lost",
        "data_received",
        "on_message_begin",
        "on_url",
        "on_header",
        "on_headers_complete",
        "on_body",
        "on_message_complete",
        "send_400_response",
        "shutdown",
    ):
        assert callable(getattr(HttpToolsProtocol, name)), name
    assert "self.send_400_response(" in inspect.getsource(HttpToolsProtocol.data_received)
    assert "keep_alive" in inspect.getsource(HttpToolsProtocol.on_headers_complete)
    assert "connection.shutdown()" in inspect.getsource(uvicorn.Server.shutdown)

    protocol = ServingHttpProtocol.configured(header_timeout=2.0, max_header_bytes=1000)
    config = uvicorn.Config(app=lambda *a: None, http=protocol, timeout_keep_alive=3)
    config.load()
    assert config.http_protocol_class is protocol
    assert issubclass(protocol, HttpToolsProtocol) and protocol.header_timeout == 2.0


def test_uvicorn_members_the_direct_predict_path_relies_on():
    """serving.http holds back a POST /predict's ASGI task and may answer it itself (serving.direct)."""
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    assert params(HttpToolsProtocol._start_asgi_task) == ["self", "cycle", "app"]
    headers_complete = inspect.getsource(HttpToolsProtocol.on_headers_complete)
    assert "self._start_asgi_task(self.cycle, app)" in headers_complete  # the hook we defer
    assert "self.pipeline.appendleft((self.cycle, app))" in headers_complete  # pipelined: started later, not held
    assert "self.expect_100_continue" in inspect.getsource(HttpToolsProtocol.on_message_begin)
    assert "self.cycle.more_body = False" in inspect.getsource(HttpToolsProtocol.on_message_complete)
    assert "self.cycle.body += body" in inspect.getsource(HttpToolsProtocol.on_body)
    complete = inspect.getsource(HttpToolsProtocol.on_response_complete)
    assert "self.pipeline.pop()" in complete and "timeout_keep_alive_handler" in complete
    cycle_init = params(RequestResponseCycle.__init__)
    for name in ("scope", "default_headers", "keep_alive", "on_response"):
        assert name in cycle_init, name
    cycle_source = inspect.getsource(RequestResponseCycle)
    for attribute in ("self.body = bytearray()", "self.response_started = ", "self.response_complete = "):
        assert attribute in cycle_source, attribute


def test_prometheus_histogram_members_the_pending_counts_flush_into():
    """serving.metrics.PendingHistogram adds bucket counts and sums to a histogram child's values directly."""
    from prometheus_client import CollectorRegistry, Histogram

    histogram = Histogram("contract_seconds", "x", ["a"], buckets=(0.1, 1.0), registry=CollectorRegistry())
    child = histogram.labels("x")
    assert [float(b) for b in child._upper_bounds] == [0.1, 1.0, float("inf")]
    assert len(child._buckets) == 3 and all(callable(b.inc) for b in child._buckets)
    assert callable(child._sum.inc)
    observe = inspect.getsource(Histogram.observe)
    assert "self._sum.inc(amount)" in observe and "self._buckets[i].inc(1)" in observe
