"""Rollout webhooks: an HTTP POST with a JSON body; a 2xx answer allows the rollout to go on, anything else refuses.

``pre_rollout`` is called before the canary starts (nothing deployed yet),
``confirm_promotion`` after the last step passed and before ``champion`` moves
(Flagger's ``pre-rollout`` / ``confirm-promotion`` hooks). The body names the
model, version, champion, hook and (for confirm-promotion) the analyses; the
header ``X-ML-Platform-Hook`` names the hook. An unreachable hook refuses too:
a gate that cannot be asked does not open.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ml_platform.deployment.policy import Webhook

HOOK_HEADER = "X-ML-Platform-Hook"


@dataclass(frozen=True)
class HookAnswer:
    """What a webhook said."""

    hook: str
    allowed: bool
    detail: str
    status: int | None = None


def call_webhook(hook: str, webhook: Webhook, payload: dict[str, Any]) -> HookAnswer:
    """POST ``payload`` to the hook; allowed only on a 2xx answer."""
    import httpx

    headers = {HOOK_HEADER: hook, **dict(webhook.headers)}
    try:
        response = httpx.post(
            webhook.url, json={"hook": hook, **payload}, headers=headers, timeout=webhook.timeout_seconds
        )
    except httpx.HTTPError as exc:
        return HookAnswer(hook, False, f"{hook} webhook {webhook.url} unreachable: {exc!r}"[:300])
    body = response.text.strip().replace("\n", " ")[:200]
    allowed = 200 <= response.status_code < 300
    verb = "allowed" if allowed else "refused"
    return HookAnswer(
        hook, allowed, f"{hook} webhook {verb} (HTTP {response.status_code}): {body}", response.status_code
    )
