"""Where a canary rollout keeps its progress, so a rollout whose run died can be finished by the next one.

A rollout (:mod:`.rollout`) writes a :class:`RolloutRecord` before each action
that changes what serves traffic, and clears it once the rollout reached a
decision and carried it out. Every action is idempotent given the record
(Argo Rollouts / Flagger style: the controller reconciles from the persisted
status, not from its memory), so whichever run reads the record next can
carry on from the recorded phase. The resume rule (docs/canary.md):

=================  ==============================================================
phase              what the next run does
=================  ==============================================================
``pending``        nothing reached users yet: the canary is retired and the rollout
                   starts again from the smoke test (``attempts`` counts restarts;
                   past ``max_attempts`` it is rolled back instead)
``progressing``    resumes the recorded step at the recorded weight with the
                   recorded counters (failures, errors, held analyses) and live
                   accuracy baseline; a step whose pause already elapsed needs one
                   more passing analysis; past the progress ``deadline``: rolled back
``promoting``      the decision stands: ``champion`` -> version, stable swaps, the
                   canary is retired, tags written (each step idempotent)
``rolling_back``   the decision stands: the canary is retired, ``champion`` is put back
                   to the recorded one, the version is tagged rejected
=================  ==============================================================

Stores (one per backend, :func:`store_for`): :class:`FileRolloutStateStore`
keeps ``<home>/deployments/<model>/rollout.json`` beside the local
deployment's ``state.json``; the Kubernetes backend keeps the same JSON in a
ConfigMap next to its Deployments. Plain Python: no Dagster.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from ml_platform.catalog import MODEL_NAME_PATTERN
from ml_platform.deployment.state import LockHolder

SCHEMA_VERSION = 1
RECORD_FILE = "rollout.json"

PENDING = "pending"  # rollout started, canary starting / smoke test: no traffic yet
PROGRESSING = "progressing"  # the canary takes ``weight`` percent at step ``step``
PROMOTING = "promoting"  # decided: promote (carried out idempotently)
ROLLING_BACK = "rolling_back"  # decided: roll back (carried out idempotently)
PHASES = (PENDING, PROGRESSING, PROMOTING, ROLLING_BACK)


class RolloutStateError(RuntimeError):
    """The rollout state cannot be read or written (corrupt record, unreachable store)."""


@dataclass
class RolloutRecord:
    """One model's rollout in progress, as persisted after every change. JSON-serialisable.

    ``model`` is the platform model name (catalog instance), ``registered_name`` the MLflow model;
    ``champion`` / ``previous_champion`` are the aliases when the rollout began (what a rollback
    restores). ``step`` is 1-based (0 before traffic); ``weights`` the policy's steps. ``analyses``
    holds a compact history (one dict per analysis). ``deadline`` (epoch seconds) is the progress
    deadline: a rollout not decided by then is rolled back. ``owner`` is the process driving it
    (pid, host, start token, as :class:`~.state.LockHolder`); ``run_id`` its Dagster run.
    """

    model: str
    version: str
    phase: str = PENDING
    registered_name: str = ""
    champion: str | None = None
    previous_champion: str | None = None
    step: int = 0
    weight: int = 0
    weights: list[int] = field(default_factory=list)
    step_started_at: float | None = None
    traffic_at: float | None = None
    failures: int = 0
    errors: int = 0  # consecutive analyses whose measurements could not be taken (Error phase)
    held: int = 0  # analyses past the step's pause that did not pass (inconclusive)
    analyses: list[dict[str, Any]] = field(default_factory=list)
    canary_baseline: dict[str, Any] | None = None  # first canary counters: live accuracy survives a resume
    stable_baseline: dict[str, Any] | None = None  # the same for stable (accuracy relative to stable)
    deadline: float | None = None
    decision: str = ""
    reason: str = ""
    run_id: str = ""
    owner: dict[str, Any] | None = None
    attempts: int = 1
    started_at: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    schema: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not MODEL_NAME_PATTERN.match(str(self.model)):
            raise RolloutStateError(f"rollout record: bad model name {self.model!r}")
        if self.phase not in PHASES:
            raise RolloutStateError(f"rollout record: unknown phase {self.phase!r}; known: {list(PHASES)}")
        self.version = str(self.version)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RolloutRecord:
        if not isinstance(raw, dict):
            raise RolloutStateError("rollout record: not a JSON object")
        if int(raw.get("schema", SCHEMA_VERSION)) > SCHEMA_VERSION:
            raise RolloutStateError(f"rollout record: schema {raw.get('schema')} is newer than this platform's")
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in raw.items() if k in known})
        except TypeError as exc:
            raise RolloutStateError(f"rollout record: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> RolloutRecord:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise RolloutStateError(f"rollout record is not JSON: {exc}") from exc
        return cls.from_dict(raw)

    # -- ownership --------------------------------------------------------------------------

    def claim(self, run_id: str, operation: str) -> None:
        """This process (and Dagster run) drives the rollout from now on."""
        self.owner = json.loads(LockHolder.me(operation).dump())
        self.run_id = run_id

    def owner_holder(self) -> LockHolder | None:
        return LockHolder.parse(json.dumps(self.owner)) if self.owner else None

    def owner_alive(self) -> bool | None:
        """False when the driving process is gone; None when unknown (another host, or no owner)."""
        holder = self.owner_holder()
        return holder.alive() if holder is not None else None

    def orphaned(self, stale_after_seconds: float, now: float | None = None) -> bool:
        """Nobody drives this rollout: its owner process is gone, or (other host) it was not updated for
        ``stale_after_seconds``."""
        alive = self.owner_alive()
        if alive is not None:
            return not alive
        return ((time.time() if now is None else now) - self.updated) > stale_after_seconds

    def describe(self) -> str:
        where = f"step {self.step} at {self.weight}%" if self.phase == PROGRESSING else self.phase
        return f"{self.model} v{self.version}: {where} (run {self.run_id or '-'}, attempt {self.attempts})"


class RolloutStateStore(Protocol):
    """Where one backend persists rollout records (one per model). Implementations must make
    ``save`` atomic (a reader sees the old record or the new one, never half of one)."""

    def load(self, model: str) -> RolloutRecord | None:
        """The model's record, or None when no rollout is in progress. Raises RolloutStateError when unreadable."""
        ...

    def save(self, record: RolloutRecord) -> None:
        """Persist ``record`` (sets ``record.updated``)."""
        ...

    def clear(self, model: str) -> None:
        """No rollout of ``model`` is in progress any more (no error when there was none)."""
        ...


class FileRolloutStateStore:
    """Records as ``<deployments_dir>/<model>/rollout.json``: written to a temporary file, fsynced, renamed."""

    def __init__(self, deployments_dir: Path) -> None:
        self.root = Path(deployments_dir)

    def path(self, model: str) -> Path:
        if not MODEL_NAME_PATTERN.match(str(model)):
            raise RolloutStateError(f"bad model name {model!r}")
        return self.root / model / RECORD_FILE

    def load(self, model: str) -> RolloutRecord | None:
        try:
            text = self.path(model).read_text()
        except FileNotFoundError:
            return None
        return RolloutRecord.from_json(text)

    def save(self, record: RolloutRecord) -> None:
        record.updated = time.time()
        path = self.path(record.model)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{RECORD_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(record.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def clear(self, model: str) -> None:
        self.path(model).unlink(missing_ok=True)

    def describe(self) -> str:
        return f"files {self.root}/<model>/{RECORD_FILE}"


def store_for(backend: Any) -> RolloutStateStore:
    """The backend's rollout-state store: ``backend.rollout_state_store()`` when it has one, else a
    :class:`FileRolloutStateStore` on its deployments folder (local backend) or the platform home's."""
    method = getattr(backend, "rollout_state_store", None)
    if callable(method):
        store: RolloutStateStore = method()
        return store
    root = getattr(backend, "root", None)
    if root is None:  # a backend without its own store: the platform home (durable only where the home is)
        from ml_platform import settings

        root = settings.platform_paths().deployments_root
    return FileRolloutStateStore(Path(root))
