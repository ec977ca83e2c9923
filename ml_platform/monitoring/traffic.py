"""Traffic classes of prediction requests: the platform's own smoke and probe traffic is marked.

The smoke test of a rollout (and any probe the platform sends) carries the header
``X-ML-Platform-Traffic: smoke``; serving writes ``"traffic": "smoke"`` on those prediction-log
lines (the field is absent on production traffic, keeping lines small), and
:func:`ml_platform.monitoring.logs.read_day` leaves them out of production windows and drift by
default, counting them (``smoke_lines``) so hidden traffic stays visible.

Only the exact value ``smoke`` is recognised; any other value of the header is ignored (the request
counts as production traffic), so a client cannot write arbitrary text into the log through it.
"""

from __future__ import annotations

TRAFFIC_HEADER = "X-ML-Platform-Traffic"
TRAFFIC_FIELD = "traffic"
SMOKE = "smoke"


def traffic_class(header_value: str | None) -> str | None:
    """``"smoke"`` for the platform's own requests, None (production) for anything else."""
    if header_value is not None and header_value.strip().lower() == SMOKE:
        return SMOKE
    return None
