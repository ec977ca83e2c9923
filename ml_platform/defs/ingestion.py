"""Ingestion of one model: landed files (one partition each) through the batch gate, the training
dataset, the landing report, their checks, and the incoming-data sensor."""

import json
from typing import Any

import dagster as dg

from ml_platform.defs.model_context import ModelContext
from ml_platform.defs.resources import LandingZoneResource
from ml_platform.validation.names import stored_hash

DEFAULT_SENSOR_INTERVAL_SECONDS = 30


def _outcome_table(files: list[dict[str, Any]]) -> str:
    if not files:
        return "_no new files in incoming/_"
    lines = ["| file | status | first problem | stored at |", "|---|---|---|---|"]
    for f in files:
        problem = (f["problems"] or [""])[0].replace("|", "\\|")[:160]
        lines.append(f"| `{f['partition_key'][:90]}` | {f['status']} | {problem} | `{f['stored_path'] or ''}` |")
    return "\n".join(lines)


def _rejection_lines(files: list[dict[str, Any]], rejected: list[str]) -> list[str]:
    keys = set(rejected)
    lines = []
    for f in files:
        if f["partition_key"] in keys:
            where = f" (report: {f['report_markdown']})" if f.get("report_markdown") else ""
            lines.append(f"{f['partition_key']}: {'; '.join(f['problems'][:3])}{where}")
    return lines


def _parse_sensor_cursor(cursor: str | None) -> set[str]:
    if not cursor:
        return set()
    try:
        return set(json.loads(cursor).get("in_flight", []))
    except (json.JSONDecodeError, AttributeError):
        return set()


def build_ingestion_defs(model: ModelContext) -> dg.Definitions:
    """``<model>/raw_batch``, ``<model>/training_dataset``, ``<model>/landing_report``, the batch checks
    and ``<model>_incoming_data_sensor``."""
    spec = model.spec
    landed_files = model.landed_files

    @dg.asset(
        **model.asset_kwargs("raw_batch"),
        partitions_def=landed_files,
        kinds={"csv", "pandas"},
        io_manager_key="json_io_manager",
        description=(
            f"Landed {model.name} data files through the batch gate, one dynamic partition per file "
            "(key: `<file name>@<sha256>`). Each file is copied out of `data/<model>/incoming/` without "
            "following links, validated with the GX suite generated from the spec, and moved to accepted/ or "
            "to quarantine/ with a report. Run without a partition (e.g. `dagster job execute -j training_job`) "
            "it sweeps every entry waiting in incoming/. The check `batch_passes_expectation_suite` judges it."
        ),
    )
    def raw_batch(context: dg.AssetExecutionContext, landing_zone: LandingZoneResource) -> dg.Output[dict[str, Any]]:
        """Copy, validate and accept or quarantine the landed file(s) of this run."""
        from ml_platform.validation.gate import FileOutcome, process
        from ml_platform.validation.names import InvalidKeyError

        zone = landing_zone.for_model(model.name)
        bootstrapped = zone.bootstrap(spec)
        if bootstrapped:
            context.log.info(f"fresh platform home: landed the bundled {spec.name} data as {bootstrapped}")
        folders = zone.folders

        if context.has_partition_key:
            key = context.partition_key
            try:
                entries = [(folders.locate(key), key)]
            except InvalidKeyError as exc:
                raise dg.Failure(description=f"refused partition key: {exc}") from exc
            except FileNotFoundError as exc:
                raise dg.Failure(description=str(exc)) from exc
            mode = "partition"
        else:
            entries = [(f, f.partition_key) for f in folders.pending()]
            mode = "sweep"
            if entries:
                context.instance.add_dynamic_partitions(landed_files.name, [k for _, k in entries])

        outcomes: list[FileOutcome] = []
        for landed, key in entries:
            try:
                outcome = process(folders, landed, spec, key)
            except OSError as exc:  # e.g. a full disk: this file stays in incoming/, the others go on
                problem = f"the file could not be copied or stored ({exc}); it stays in incoming/"
                outcome = FileOutcome(key, landed.path.name, "failed", [problem], problem, str(landed.path))
            outcomes.append(outcome)
            if outcome.status == "accepted":
                context.log.info(f"accepted {key} -> {outcome.stored_path}")
            elif outcome.rejected or outcome.status == "failed":
                context.log.error(f"{outcome.summary} Report: {outcome.report_markdown or outcome.stored_path}")
            else:
                context.log.warning(f"{key}: {outcome.summary}")
        files = [o.to_dict() for o in outcomes]
        accepted = [o.partition_key for o in outcomes if o.status == "accepted"]
        rejected = [o.partition_key for o in outcomes if o.status not in ("accepted", "gone")]
        return dg.Output(
            {
                "mode": mode,
                "model": model.name,
                "dataset": spec.name,
                "files": files,
                "accepted": accepted,
                "rejected": rejected,
            },
            metadata={
                "mode": mode,
                "model": model.name,
                "dataset": spec.name,
                "files": len(files),
                "files_accepted": len(accepted),
                "files_rejected": len(rejected),
                "total_bytes": sum(o.size_bytes for o in outcomes),
                "landed": dg.MetadataValue.md(_outcome_table(files)),
                "incoming_dir": dg.MetadataValue.path(str(folders.incoming_dir)),
                "quarantine_dir": dg.MetadataValue.path(str(folders.quarantine_dir)),
            },
        )

    @dg.asset(
        **model.asset_kwargs("training_dataset"),
        deps=[raw_batch],
        ins={"evaluation_set": dg.AssetIn(key=model.key("evaluation_set"))},
        kinds={"pandas", "parquet"},
        io_manager_key="json_io_manager",
        description=(
            f"The accepted {model.name} rows one training run uses, as one Parquet file: the batches inside the "
            "spec's training window (`training.window`: age of the landing, at most N rows, newest first or a "
            "hash sample), minus every row of the evaluation set. Its data version hashes the evaluation-set "
            "version, the window and the rows taken from each batch, so it covers exactly the rows used; "
            "identical data always has the same version."
        ),
    )
    def training_dataset(
        context: dg.AssetExecutionContext, landing_zone: LandingZoneResource, evaluation_set: dict[str, Any]
    ) -> dg.Output[dict[str, Any]]:
        """Select the windowed rows of the accepted batches; fails clearly when there are none."""
        import numpy as np
        import pandas as pd

        from ml_platform.ml.datasets import Batch, build_training_rows, key_of_stored, read_rows, row_hashes

        zone = landing_zone.for_model(model.name)
        folders = zone.folders
        files = folders.accepted_files()
        if not files:
            raise dg.Failure(
                description=(
                    f"no accepted data for model {model.name!r} in {folders.accepted_dir}: "
                    "land a CSV file in incoming/ and let the batch gate accept it"
                )
            )
        batches = []
        for path in files:
            try:
                digest = stored_hash(path.name)
                accepted_at = path.lstat().st_mtime
            except (OSError, ValueError) as exc:
                raise dg.Failure(description=f"refusing to train on {path}: {exc}") from exc
            batches.append(Batch(path, key_of_stored(path, digest), digest, accepted_at))

        def read(batch: Batch, nrows: int | None) -> pd.DataFrame:
            try:
                data = folders.read_accepted(batch.path)  # checked against the hash it was accepted with
            except (OSError, ValueError) as exc:
                raise dg.Failure(
                    description=(
                        f"refusing to train on {batch.path}: {exc}. Only files the batch gate stored may be in "
                        f"{folders.accepted_dir}; land the data again through incoming/ instead of editing it."
                    )
                ) from exc
            return read_rows(data, spec, nrows)

        evaluation = pd.read_parquet(evaluation_set["path"])
        evaluation_hashes = np.unique(row_hashes(evaluation, spec))
        rows = build_training_rows(batches, read, spec, evaluation_hashes, evaluation_set["version"])
        combined = rows.frame
        if combined.empty:
            raise dg.Failure(
                description=(
                    f"no training rows for model {model.name!r}: the training window {rows.window} holds no "
                    f"accepted batch ({len(rows.skipped_old)} older ones left out), or every row of it is in the "
                    "evaluation set"
                )
            )
        data_version = rows.data_version
        target = zone.datasets_dir / f"{data_version[:16]}.parquet"
        if not target.exists():
            tmp = target.with_suffix(".parquet.tmp")
            combined.to_parquet(tmp, index=False)
            tmp.replace(target)
        counts = combined[spec.target.name].value_counts().sort_index()
        balance = "\n".join(["| class | rows |", "|---|---|"] + [f"| {k} | {v} |" for k, v in counts.items()])
        used = "\n".join(
            ["| batch | rows used |", "|---|---|"] + [f"| `{u['key'][:100]}` | {u['rows']} |" for u in rows.used]
        )
        context.log.info(
            f"training dataset {data_version[:16]}: {len(combined)} rows from {len(rows.used)} batch(es) "
            f"(window {rows.window}; {rows.excluded_evaluation_rows} evaluation rows excluded; "
            f"{len(rows.skipped_old)} batch(es) older than the window)"
        )
        return dg.Output(
            {
                "model": model.name,
                "dataset": spec.name,
                "path": str(target),
                "data_version": data_version,
                "rows": len(combined),
                "batches": rows.used,
                "window": rows.window,
                "evaluation_set_version": evaluation_set["version"],
                "evaluation_set_path": evaluation_set["path"],
                "excluded_evaluation_rows": rows.excluded_evaluation_rows,
            },
            data_version=dg.DataVersion(data_version[:16]),
            metadata={
                "dagster/row_count": len(combined),
                "batches": len(rows.used),
                "batches_outside_window": len(rows.skipped_old),
                "excluded_evaluation_rows": rows.excluded_evaluation_rows,
                "evaluation_set_version": evaluation_set["version"][:16],
                "data_version": data_version[:16],
                "window": dg.MetadataValue.json(rows.window),
                "path": dg.MetadataValue.path(str(target)),
                "class_balance": dg.MetadataValue.md(balance),
                "batches_used": dg.MetadataValue.md(used),
            },
        )

    @dg.asset(
        **model.asset_kwargs("landing_report"),
        ins={"raw_batch": dg.AssetIn(key=raw_batch.key)},
        kinds={"markdown"},
        io_manager_key="json_io_manager",
        description=(
            "What this run did with each landed file: accepted, or quarantined with the report's path and "
            "its problems in plain sentences. Nothing in the training job depends on it, so its check "
            "`every_landed_file_accepted` fails the run (non-zero exit) without stopping training on the "
            "files that were accepted."
        ),
    )
    def landing_report(context: dg.AssetExecutionContext, raw_batch: dict[str, Any]) -> dg.Output[dict[str, Any]]:
        """Summarise the batch gate's decisions of this run for reviewers (UI and CI logs)."""
        files = raw_batch.get("files", [])
        rejected = [f for f in files if f["partition_key"] in set(raw_batch.get("rejected", []))]
        lines = []
        for f in rejected:
            lines.append(f"#### `{f['file_name'][:200]}` ({f['status']})")
            lines += [f"- {p}" for p in f["problems"]]
            if f.get("report_markdown"):
                lines.append(f"- report: `{f['report_markdown']}` (JSON: `{f['report_json']}`)")
            lines.append("")
        for f in rejected:
            context.log.error(f"rejected {f['partition_key']}: {'; '.join(f['problems'][:3])}")
        summary = {
            "model": model.name,
            "dataset": raw_batch.get("dataset"),
            "accepted": raw_batch.get("accepted", []),
            "rejected": [
                {
                    "partition_key": f["partition_key"],
                    "status": f["status"],
                    "problems": f["problems"],
                    "report_json": f.get("report_json"),
                    "report_markdown": f.get("report_markdown"),
                }
                for f in rejected
            ],
        }
        return dg.Output(
            summary,
            metadata={
                "files_accepted": len(summary["accepted"]),
                "files_rejected": len(rejected),
                "rejected": dg.MetadataValue.md("\n".join(lines) if lines else "_every landed file was accepted_"),
                "files": dg.MetadataValue.md(_outcome_table(files)),
            },
        )

    @dg.asset_check(
        asset=raw_batch,
        blocking=True,
        description=(
            "Every landed file of the run passed the Great Expectations suite generated from the dataset "
            "spec (columns, types, ranges, nulls, class set, number of classes, row count). ERROR (stops "
            "training) when no file was accepted; WARN when some files were quarantined but others were "
            "accepted, so the accepted ones still train."
        ),
    )
    def batch_passes_expectation_suite(
        context: dg.AssetCheckExecutionContext, raw_batch: dict[str, Any], landing_zone: LandingZoneResource
    ) -> dg.AssetCheckResult:
        """Judge the gate's decisions recorded by ``raw_batch`` for this run."""
        files = [f for f in raw_batch["files"] if f["status"] != "gone"]
        accepted = raw_batch.get("accepted", [])
        rejected = raw_batch.get("rejected", [])
        lines = _rejection_lines(files, rejected)
        if rejected and not accepted:
            severity = dg.AssetCheckSeverity.ERROR
            summary = f"all {len(rejected)} file(s) rejected, nothing new to train on: " + " | ".join(lines)
        elif rejected:
            severity = dg.AssetCheckSeverity.WARN
            summary = (
                f"{len(rejected)} of {len(files)} file(s) rejected; the {len(accepted)} accepted file(s) train: "
                + " | ".join(lines)
            )
        else:
            severity = dg.AssetCheckSeverity.ERROR
            summary = f"{len(accepted)} file(s) accepted" if accepted else "no new files to validate"
        for line in lines:
            context.log.error(f"rejected {line}")
        reports = [
            f"- `{f['partition_key'][:120]}` **{f['status']}**: "
            + "; ".join(f["problems"][:5])
            + (f" — report `{f['report_markdown']}`" if f.get("report_markdown") else "")
            for f in files
        ]
        return dg.AssetCheckResult(
            passed=not rejected,
            severity=severity,
            description=summary[:2000],
            metadata={
                "files_checked": len(files),
                "files_accepted": len(accepted),
                "files_rejected": len(rejected),
                "failing_row_count": sum(int(f.get("failing_rows") or 0) for f in files),
                "rejected_files": dg.MetadataValue.json([f for f in files if f["partition_key"] in set(rejected)]),
                "quarantine_dir": dg.MetadataValue.path(str(landing_zone.for_model(model.name).quarantine_dir)),
                "report": dg.MetadataValue.md("\n".join(reports) or "_nothing to validate_"),
            },
        )

    @dg.asset_check(
        asset=landing_report,
        blocking=True,
        description=(
            "Every file the run picked up was accepted. Fails with ERROR severity when any was quarantined, "
            "so the run (and `dagster job execute`) fails and names the files and their reports, while the "
            "accepted files have still been trained on (nothing downstream depends on this check)."
        ),
    )
    def every_landed_file_accepted(landing_report: dict[str, Any]) -> dg.AssetCheckResult:
        """Fail the run when any landed file of it was rejected."""
        rejected = landing_report.get("rejected", [])
        lines = [
            f"{r['partition_key']}: {'; '.join(r['problems'][:3])}"
            + (f" (report: {r['report_markdown']})" if r.get("report_markdown") else "")
            for r in rejected
        ]
        return dg.AssetCheckResult(
            passed=not rejected,
            severity=dg.AssetCheckSeverity.ERROR,
            description=(f"{len(rejected)} file(s) rejected: " + " | ".join(lines))[:2000]
            if rejected
            else f"all {len(landing_report.get('accepted', []))} landed file(s) accepted",
            metadata={
                "files_rejected": len(rejected),
                "files_accepted": len(landing_report.get("accepted", [])),
                "rejected": dg.MetadataValue.md("\n".join(f"- {line}" for line in lines) or "_none_"),
            },
        )

    training_job_name = model.job_name("training_job")

    @dg.sensor(
        name=model.sensor_name("incoming_data_sensor"),
        job_name=training_job_name,
        minimum_interval_seconds=DEFAULT_SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        tags=model.tags,
        description=(
            f"Watches `data/{model.name}/incoming/`. Each new, settled file becomes a `{landed_files.name}` "
            f"partition and one `{training_job_name}` run (run key = partition key, so a file is never "
            "processed twice). The cursor remembers files already requested but not yet moved out of incoming/."
        ),
    )
    def incoming_data_sensor(context: dg.SensorEvaluationContext, landing_zone: LandingZoneResource) -> dg.SensorResult:
        """Request a partitioned training run of this model for every file that landed since the last tick."""
        zone = landing_zone.for_model(model.name)
        bootstrapped = zone.bootstrap(spec)
        if bootstrapped:
            context.log.info(f"fresh platform home: landed bundled data {bootstrapped.name}")
        pending = zone.pending_files()
        seen = _parse_sensor_cursor(context.cursor)
        new = [f for f in pending if f.partition_key not in seen]
        keys = [f.partition_key for f in new]
        # Only files still in incoming/ need remembering: processed files have moved out of it.
        in_flight = sorted({f.partition_key for f in pending} & (seen | set(keys)))
        cursor = json.dumps({"in_flight": in_flight})
        if not keys:
            return dg.SensorResult(skip_reason=f"no new files in {zone.incoming_dir}", cursor=cursor)
        context.log.info(f"requesting {training_job_name} runs for {keys}")
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(run_key=key, partition_key=key, tags={**model.tags, "ml_platform/landed_file": key})
                for key in keys
            ],
            dynamic_partitions_requests=[landed_files.build_add_request(keys)],
            cursor=cursor,
        )

    return dg.Definitions(
        assets=[raw_batch, training_dataset, landing_report],
        asset_checks=[batch_passes_expectation_suite, every_landed_file_accepted],
        sensors=[incoming_data_sensor],
    )
