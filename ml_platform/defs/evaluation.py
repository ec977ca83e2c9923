"""The evaluation set of one model: curated rows no model trains on, the ground every model gate stands on.

``<model>/evaluation_set`` lives in ``data/<model>/evaluation/`` (``incoming/``, ``accepted/``,
``quarantine/``, like the training landing zone). It is seeded once, from a documented holdout of
the data accepted when it is first built (:mod:`ml_platform.ml.datasets`), and grows only by files
landed into ``data/<model>/evaluation/incoming/``, each gated by the same GX suite as training data.
Its data version is the hash of its accepted files' contents.
"""

from typing import Any

import dagster as dg

from ml_platform.defs.model_context import ModelContext
from ml_platform.defs.resources import LandingZoneResource

EVALUATION_FOLDER = "evaluation"
SEED_FILE_NAME = "seed.csv"


def _class_table(counts: dict[str, int]) -> str:
    return "\n".join(["| class | rows |", "|---|---|"] + [f"| {k} | {v} |" for k, v in counts.items()])


def build_evaluation_defs(model: ModelContext) -> dg.Definitions:
    """``<model>/evaluation_set`` (downstream of ``raw_batch``: its seed is the first accepted data)."""
    spec = model.spec

    @dg.asset(
        **model.asset_kwargs("evaluation_set"),
        deps=[model.key("raw_batch")],
        kinds={"pandas", "parquet"},
        io_manager_key="json_io_manager",
        description=(
            f"Curated {model.name} rows that no model trains on; every model gate scores the candidate and the "
            f"champion on them. Seeded once from a deterministic holdout of the first accepted data (the "
            f"{spec.evaluation.holdout_percent:g}% of rows with the smallest row hash, at most "
            f"{spec.evaluation.max_seed_rows}); extended by landing CSV files into "
            f"`data/{model.name}/evaluation/incoming/` (gated by the same GX suite as training data). "
            "Data version: hash of its files' contents. `training_dataset` drops every row whose hash is in it."
        ),
    )
    def evaluation_set(
        context: dg.AssetExecutionContext, landing_zone: LandingZoneResource
    ) -> dg.Output[dict[str, Any]]:
        """Gate newly landed evaluation files, seed the set on first use, and write it as Parquet."""
        import hashlib

        import pandas as pd

        from ml_platform.ml.datasets import content_version, read_rows, select_seed
        from ml_platform.ml.training import class_label
        from ml_platform.validation.gate import process
        from ml_platform.validation.landing import LandingFolders
        from ml_platform.validation.names import partition_key_for, stored_name

        zone = landing_zone.for_model(model.name)
        folders = LandingFolders(zone.data_dir / EVALUATION_FOLDER, zone.settle_seconds)
        landed = []
        for entry in folders.pending():
            outcome = process(folders, entry, spec)
            landed.append(outcome)
            if outcome.status == "accepted":
                context.log.info(f"evaluation data accepted: {outcome.partition_key}")
            else:
                context.log.error(f"evaluation data refused: {outcome.summary}")

        seeded_from: list[str] = []
        if not folders.accepted_files():
            training_files = zone.folders.accepted_files()
            if not training_files:
                raise dg.Failure(
                    description=(
                        f"no accepted data for model {model.name!r} to seed its evaluation set from: land a CSV "
                        f"file in {zone.incoming_dir} (or evaluation rows in {folders.incoming_dir})"
                    )
                )
            frames = []
            for path in training_files:
                try:
                    frames.append(read_rows(zone.folders.read_accepted(path), spec))
                except (OSError, ValueError) as exc:
                    raise dg.Failure(description=f"refusing to seed the evaluation set from {path}: {exc}") from exc
                seeded_from.append(path.name)
            seed = select_seed(pd.concat(frames, ignore_index=True), spec)
            data = seed.to_csv(index=False).encode()
            digest = hashlib.sha256(data).hexdigest()
            target = folders.accepted_dir / stored_name(partition_key_for(SEED_FILE_NAME, digest))
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(target)
            context.log.info(f"seeded the evaluation set with {len(seed)} rows held out of {seeded_from}")

        hashes, frames = [], []
        files = folders.accepted_files()
        for path in files:
            try:
                data = folders.read_accepted(path)
            except (OSError, ValueError) as exc:
                raise dg.Failure(
                    description=f"refusing to evaluate on {path}: {exc}; land evaluation data through "
                    f"{folders.incoming_dir} instead of editing it"
                ) from exc
            hashes.append(hashlib.sha256(data).hexdigest())
            frames.append(read_rows(data, spec))
        version = content_version(hashes)
        combined = pd.concat(frames, ignore_index=True)
        sets_dir = folders.data_dir / "sets"
        sets_dir.mkdir(parents=True, exist_ok=True)
        target = sets_dir / f"{version[:16]}.parquet"
        if not target.exists():
            tmp = target.with_suffix(".parquet.tmp")
            combined.to_parquet(tmp, index=False)
            tmp.replace(target)
        counts = {
            class_label(spec, k): int(v) for k, v in combined[spec.target.name].value_counts().sort_index().items()
        }
        refused = [o for o in landed if o.status != "accepted"]
        return dg.Output(
            {
                "model": model.name,
                "path": str(target),
                "version": version,
                "rows": len(combined),
                "files": [p.name for p in files],
                "class_counts": counts,
            },
            data_version=dg.DataVersion(version[:16]),
            metadata={
                "dagster/row_count": len(combined),
                "evaluation_set_version": version[:16],
                "files": len(files),
                "seeded_now_from": ", ".join(seeded_from) or "not seeded in this run",
                "landed_accepted": len(landed) - len(refused),
                "landed_refused": dg.MetadataValue.md(
                    "\n".join(f"- {o.summary} (report: {o.report_markdown})" for o in refused) or "_none_"
                ),
                "class_balance": dg.MetadataValue.md(_class_table(counts)),
                "incoming_dir": dg.MetadataValue.path(str(folders.incoming_dir)),
                "path": dg.MetadataValue.path(str(target)),
            },
        )

    @dg.asset_check(
        asset=evaluation_set,
        description=(
            "Every class of the spec has rows in the evaluation set. WARN only: a thin evaluation set still "
            "judges, but less (the per-class recall floor cannot speak for a class without rows)."
        ),
    )
    def evaluation_set_covers_every_class(evaluation_set: dict[str, Any]) -> dg.AssetCheckResult:
        """Warn when a class has no evaluation rows."""
        from ml_platform.ml.training import class_label

        counts = evaluation_set.get("class_counts", {})
        missing = [class_label(spec, c) for c in spec.target.classes if counts.get(class_label(spec, c), 0) == 0]
        return dg.AssetCheckResult(
            passed=not missing,
            severity=dg.AssetCheckSeverity.WARN,
            description=(
                f"no evaluation rows for class(es) {missing}: land labelled rows of them into "
                f"data/{model.name}/evaluation/incoming/"
                if missing
                else f"{evaluation_set.get('rows')} rows covering all {len(spec.target.classes)} classes"
            ),
            metadata={"rows": evaluation_set.get("rows", 0), "classes_missing": ", ".join(missing) or "none"},
        )

    return dg.Definitions(assets=[evaluation_set], asset_checks=[evaluation_set_covers_every_class])
