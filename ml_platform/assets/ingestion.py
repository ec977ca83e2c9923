"""Ingestion assets: landed files (one partition each), the training dataset and the landing report."""

import hashlib
import io
from typing import Any

import dagster as dg

from ml_platform.resources.landing_zone import InvalidKeyError, LandingZone
from ml_platform.spec import load_spec

landed_files = dg.DynamicPartitionsDefinition(name="landed_files")

INGESTION_GROUP = "ingestion"


def _outcome_table(files: list[dict[str, Any]]) -> str:
    if not files:
        return "_no new files in incoming/_"
    lines = ["| file | status | first problem | stored at |", "|---|---|---|---|"]
    for f in files:
        problem = (f["problems"] or [""])[0].replace("|", "\\|")[:160]
        lines.append(f"| `{f['partition_key'][:90]}` | {f['status']} | {problem} | `{f['stored_path'] or ''}` |")
    return "\n".join(lines)


@dg.asset(
    partitions_def=landed_files,
    group_name=INGESTION_GROUP,
    kinds={"csv", "pandas"},
    io_manager_key="json_io_manager",
    description=(
        "Landed data files through the batch gate, one dynamic partition per file "
        "(key: `<file name>@<sha256>`). Each file is copied out of incoming/ without following links, "
        "validated with the GX suite generated from the spec, and moved to accepted/ or to quarantine/ "
        "with a report. Run without a partition (e.g. `dagster job execute -j training_job`) it sweeps "
        "every entry waiting in incoming/. The check `batch_passes_expectation_suite` judges the outcome."
    ),
)
def raw_batch(context: dg.AssetExecutionContext, landing_zone: LandingZone) -> dg.Output[dict[str, Any]]:
    """Copy, validate and accept or quarantine the landed file(s) of this run."""
    from ml_platform.validation.gate import FileOutcome, process

    spec = load_spec()
    bootstrapped = landing_zone.bootstrap(spec)
    if bootstrapped:
        context.log.info(f"fresh platform home: landed the bundled {spec.name} data as {bootstrapped}")
    folders = landing_zone.folders

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
        {"mode": mode, "dataset": spec.name, "files": files, "accepted": accepted, "rejected": rejected},
        metadata={
            "mode": mode,
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


def _content_version(accepted_hashes: list[str]) -> str:
    digest = hashlib.sha256()
    for file_hash in sorted(accepted_hashes):
        digest.update(file_hash.encode())
    return digest.hexdigest()


@dg.asset(
    deps=[raw_batch],
    group_name=INGESTION_GROUP,
    kinds={"pandas", "parquet"},
    io_manager_key="json_io_manager",
    description=(
        "All accepted batches combined into one Parquet file. Its data version is a hash of the "
        "accepted files' contents, so identical data always has the same version."
    ),
)
def training_dataset(context: dg.AssetExecutionContext, landing_zone: LandingZone) -> dg.Output[dict[str, Any]]:
    """Combine every accepted batch; fails clearly when nothing has been accepted yet."""
    import pandas as pd

    spec = load_spec()
    folders = landing_zone.folders
    files = folders.accepted_files()
    if not files:
        raise dg.Failure(
            description=(
                f"no accepted data for dataset {spec.name!r} in {folders.accepted_dir}: "
                "land a CSV file in incoming/ and let the batch gate accept it"
            )
        )
    hashes, frames = [], []
    for path in files:
        try:
            data = folders.read_accepted(path)  # read once, checked against the hash it was accepted with
        except (OSError, ValueError) as exc:
            raise dg.Failure(
                description=(
                    f"refusing to train on {path}: {exc}. Only files the batch gate stored may be in "
                    f"{folders.accepted_dir}; land the data again through incoming/ instead of editing it."
                )
            ) from exc
        hashes.append(hashlib.sha256(data).hexdigest())
        frame = pd.read_csv(io.BytesIO(data), skipinitialspace=True, encoding="utf-8-sig")
        frames.append(frame.rename(columns=lambda c: str(c).strip())[spec.columns])
    data_version = _content_version(hashes)
    target = landing_zone.datasets_dir / f"{data_version[:16]}.parquet"
    combined = pd.concat(frames, ignore_index=True)
    if not target.exists():
        tmp = target.with_suffix(".parquet.tmp")
        combined.to_parquet(tmp, index=False)
        tmp.replace(target)
    counts = combined[spec.target.name].value_counts().sort_index()
    balance = "\n".join(["| class | rows |", "|---|---|"] + [f"| {k} | {v} |" for k, v in counts.items()])
    context.log.info(f"training dataset {data_version[:16]}: {len(combined)} rows from {len(files)} batch(es)")
    return dg.Output(
        {
            "dataset": spec.name,
            "path": str(target),
            "data_version": data_version,
            "rows": len(combined),
            "batches": [p.name for p in files],
        },
        data_version=dg.DataVersion(data_version[:16]),
        metadata={
            "dagster/row_count": len(combined),
            "batches": len(files),
            "data_version": data_version[:16],
            "path": dg.MetadataValue.path(str(target)),
            "class_balance": dg.MetadataValue.md(balance),
        },
    )


@dg.asset(
    ins={"raw_batch": dg.AssetIn(key=raw_batch.key)},
    group_name=INGESTION_GROUP,
    kinds={"markdown"},
    io_manager_key="json_io_manager",
    description=(
        "What this run did with each landed file: accepted, or quarantined with the report's path and "
        "its problems in plain sentences. Nothing in training_job depends on it, so its check "
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
