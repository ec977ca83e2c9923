"""Ingestion assets: landed files (one partition each) and the training dataset."""

import hashlib
from typing import Any

import dagster as dg

from ml_platform.resources.landing_zone import LandedFile, LandingZone
from ml_platform.spec import load_spec

landed_files = dg.DynamicPartitionsDefinition(name="landed_files")

INGESTION_GROUP = "ingestion"


def _describe_file(landed: LandedFile) -> dict[str, Any]:
    return {
        "partition_key": landed.partition_key,
        "path": str(landed.path),
        "file_name": landed.path.name,
        "sha256": landed.sha256,
        "size_bytes": landed.path.stat().st_size,
    }


@dg.asset(
    partitions_def=landed_files,
    group_name=INGESTION_GROUP,
    kinds={"csv", "pandas"},
    io_manager_key="json_io_manager",
    description=(
        "A landed data file, one dynamic partition per file (key: `<file name>@<sha256 prefix>`). "
        "Run without a partition (e.g. `dagster job execute -j training_job`) it sweeps every file "
        "waiting in incoming/. Its blocking GX check accepts or quarantines each file."
    ),
)
def raw_batch(context: dg.AssetExecutionContext, landing_zone: LandingZone) -> dg.Output[dict[str, Any]]:
    """Describe the landed file(s) this run validates; the gate check does the validation."""
    from ml_platform.resources.landing_zone import LandedFile
    from ml_platform.validation.reader import file_sha256

    spec = load_spec()
    bootstrapped = landing_zone.bootstrap(spec)
    if bootstrapped:
        context.log.info(f"fresh platform home: landed the bundled {spec.name} data as {bootstrapped}")

    if context.has_partition_key:
        path = landing_zone.locate(context.partition_key)
        files = [LandedFile(path, file_sha256(path))]
        mode = "partition"
    else:
        files = landing_zone.pending_files()
        mode = "sweep"
        new_keys = [f.partition_key for f in files]
        if new_keys:
            context.instance.add_dynamic_partitions(landed_files.name, new_keys)
    described = [_describe_file(f) for f in files]
    table = "\n".join(
        ["| partition | bytes | sha256 |", "|---|---|---|"]
        + [f"| `{d['partition_key']}` | {d['size_bytes']} | `{d['sha256'][:16]}` |" for d in described]
    )
    return dg.Output(
        {"mode": mode, "dataset": spec.name, "files": described},
        metadata={
            "mode": mode,
            "dataset": spec.name,
            "files": len(described),
            "total_bytes": sum(d["size_bytes"] for d in described),
            "landed": dg.MetadataValue.md(table if described else "_no new files in incoming/_"),
            "incoming_dir": dg.MetadataValue.path(str(landing_zone.incoming_dir)),
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

    from ml_platform.validation.reader import file_sha256

    spec = load_spec()
    files = landing_zone.accepted_files()
    if not files:
        raise dg.Failure(
            description=(
                f"no accepted data for dataset {spec.name!r} in {landing_zone.accepted_dir}: "
                "land a CSV file in incoming/ and let the batch gate accept it"
            )
        )
    hashes = [file_sha256(p) for p in files]
    data_version = _content_version(hashes)
    target = landing_zone.datasets_dir / f"{data_version[:16]}.parquet"
    frames = [pd.read_csv(p, skipinitialspace=True) for p in files]
    frames = [f.rename(columns=lambda c: str(c).strip())[spec.columns] for f in frames]
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
