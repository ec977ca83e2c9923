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
