"""Rollout state on Kubernetes: one ConfigMap per model, beside its Deployments, updated optimistically.

``ConfigMap/<model>-rollout-state`` (namespace of the deployment, label
``ml-platform/model: <model>``) holds the :class:`~.rollout_state.RolloutRecord` as
JSON under ``data["rollout.json"]``. It survives the Dagster run that wrote it (and
its pod), so the next sensor tick can resume or roll back a rollout whose run died.

Every write is checked against the ``resourceVersion`` this store last saw (a
``PUT`` with ``metadata.resourceVersion``; a first write is a ``POST``), so two
writers never silently overwrite each other. On a 409 the store re-reads the
ConfigMap and:

- re-applies the record when the stored one belongs to the same run (``run_id``):
  the other write was ours (a retried request that had reached the server) or
  touched only metadata (someone labelled the ConfigMap);
- refuses with :class:`RolloutStateConflict` when another run wrote a record
  meanwhile (or took this very rollout over, finished and cleared it): that run
  drives the rollout now, and this one must re-``load`` and decide again instead
  of clobbering its progress or resurrecting a finished rollout.

``clear`` empties the record (kept as ``last-rollout.json`` for inspection), with the
same ``resourceVersion`` check, so a record another run wrote after our last read is
not cleared by mistake. The deployer needs ``get``, ``create`` and ``update`` on
ConfigMaps, never ``delete``.
"""

from __future__ import annotations

from typing import Any

from ml_platform.catalog import MODEL_NAME_PATTERN
from ml_platform.deployment.kubernetes import MODEL_LABEL, KubeApi, _describe, api_error_code, object_prefix
from ml_platform.deployment.rollout_state import RolloutRecord, RolloutStateError

RECORD_KEY = "rollout.json"
LAST_KEY = "last-rollout.json"  # the record a clear() retired, for inspection
NAME_SUFFIX = "rollout-state"
APP_LABEL = {"app.kubernetes.io/name": "ml-platform-rollout-state", "app.kubernetes.io/part-of": "ml-platform"}


class RolloutStateConflict(RolloutStateError):
    """Another run wrote the rollout record since this store last read it."""


def configmap_name(model: str) -> str:
    """``iris`` -> ``iris-rollout-state`` (the model's object prefix, as its overlay names objects)."""
    if not MODEL_NAME_PATTERN.match(str(model)):
        raise RolloutStateError(f"bad model name {model!r}")
    return f"{object_prefix(model)}{NAME_SUFFIX}"


class ConfigMapRolloutStateStore:
    """:class:`~.rollout_state.RolloutStateStore` on ConfigMaps, through the deployer's :class:`.KubeApi`."""

    def __init__(self, api: KubeApi, *, conflict_attempts: int = 3) -> None:
        self.api = api
        self.conflict_attempts = conflict_attempts
        self._seen: dict[str, str] = {}  # model -> resourceVersion last read or written

    # -- raw ConfigMap access -----------------------------------------------------------------

    def _read(self, model: str) -> tuple[RolloutRecord | None, str | None]:
        """The stored record and the ConfigMap's resourceVersion; (None, None) when there is no ConfigMap."""
        record, _, version = self._read_all(model)
        return record, version

    def _read_all(self, model: str) -> tuple[RolloutRecord | None, RolloutRecord | None, str | None]:
        """(record in progress, last cleared record, resourceVersion)."""
        from lightkube.resources.core_v1 import ConfigMap

        name = configmap_name(model)
        try:
            obj = self.api.client.get(ConfigMap, name, namespace=self.api.namespace)
        except Exception as exc:
            if api_error_code(exc) == 404:
                return None, None, None
            raise RolloutStateError(f"GET ConfigMap/{name}: {_describe(exc)}") from exc
        version = obj.metadata.resourceVersion if obj.metadata else None
        found: list[RolloutRecord | None] = []
        for key in (RECORD_KEY, LAST_KEY):
            text = (obj.data or {}).get(key)
            record = RolloutRecord.from_json(text) if text else None
            if record is not None and record.model != model:
                raise RolloutStateError(f"ConfigMap/{name} holds the record of {record.model!r}, not {model!r}")
            found.append(record)
        return found[0], found[1], version

    def _body(self, record: RolloutRecord, resource_version: str | None) -> Any:
        from lightkube.models.meta_v1 import ObjectMeta
        from lightkube.resources.core_v1 import ConfigMap

        return ConfigMap(
            metadata=ObjectMeta(
                name=configmap_name(record.model),
                namespace=self.api.namespace,
                labels={**APP_LABEL, MODEL_LABEL: record.model},
                resourceVersion=resource_version,
            ),
            data={RECORD_KEY: record.to_json()},
        )

    # -- the store ----------------------------------------------------------------------------

    def load(self, model: str) -> RolloutRecord | None:
        record, version = self._read(model)
        if version is not None:
            self._seen[model] = version
        else:
            self._seen.pop(model, None)
        return record

    def save(self, record: RolloutRecord) -> None:
        import time

        record.updated = time.time()
        model = record.model
        for _ in range(self.conflict_attempts):
            version = self._seen.get(model)
            body = self._body(record, version)
            try:
                if version is None:
                    saved = self.api.client.create(body, namespace=self.api.namespace)
                else:
                    saved = self.api.client.replace(body, namespace=self.api.namespace)
            except Exception as exc:
                code = api_error_code(exc)
                if code not in (404, 409):
                    raise RolloutStateError(f"save rollout record of {model}: {_describe(exc)}") from exc
                # 409: written since we read (or already exists); 404: deleted since we read. Re-read, decide.
                stored, last, current = self._read_all(model)
                if stored is not None and stored.run_id != record.run_id:
                    raise RolloutStateConflict(
                        f"rollout record of {model} was written by run {stored.run_id or '-'} "
                        f"({stored.describe()}) since run {record.run_id or '-'} read it; load it again"
                    ) from exc
                if (
                    stored is None
                    and last is not None
                    and last.started_at == record.started_at
                    and last.run_id != record.run_id
                ):
                    raise RolloutStateConflict(
                        f"the rollout of {model} v{record.version} was finished and cleared by run "
                        f"{last.run_id or '-'} since run {record.run_id or '-'} read it; not written again"
                    ) from exc
                if current is None:
                    self._seen.pop(model, None)
                else:
                    self._seen[model] = current
                continue
            self._seen[model] = saved.metadata.resourceVersion
            return
        raise RolloutStateConflict(f"rollout record of {model}: still conflicting after {self.conflict_attempts} tries")

    def clear(self, model: str) -> None:
        """No rollout in progress: the record moves to ``last-rollout.json`` (kept for inspection), checked
        against the resourceVersion last seen like ``save`` (a record another run wrote since is not cleared)."""
        from lightkube.models.meta_v1 import ObjectMeta
        from lightkube.resources.core_v1 import ConfigMap

        if model not in self._seen:
            self.load(model)
        for _ in range(self.conflict_attempts):
            version = self._seen.get(model)
            if version is None:
                return  # no ConfigMap: nothing in progress
            stored, _ = self._read(model)
            data = {LAST_KEY: stored.to_json()} if stored is not None else {}
            name = configmap_name(model)
            body = ConfigMap(
                metadata=ObjectMeta(
                    name=name,
                    namespace=self.api.namespace,
                    resourceVersion=version,
                    labels={**APP_LABEL, MODEL_LABEL: model},
                ),
                data=data,
            )
            try:
                saved = self.api.client.replace(body, namespace=self.api.namespace)
            except Exception as exc:
                code = api_error_code(exc)
                if code == 404:
                    self._seen.pop(model, None)
                    return
                if code != 409:
                    raise RolloutStateError(f"clear rollout record of {model}: {_describe(exc)}") from exc
                raise RolloutStateConflict(
                    f"rollout record of {model} changed since it was read; not cleared (load it again)"
                ) from exc
            self._seen[model] = saved.metadata.resourceVersion
            return

    def describe(self) -> str:
        return f"ConfigMaps <model>-{NAME_SUFFIX} in namespace {self.api.namespace}"
