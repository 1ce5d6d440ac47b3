"""Partitioned asset checks: one result per country partition of the run (shared by the raw and table checks)."""

# No `from __future__ import annotations`: Dagster inspects the `context` annotation at definition time.

from typing import Callable, Iterator

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetKey,
    AssetRecordsFilter,
    Output,
)
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from toptracks_dagster.partitions import country_partitions

def partition_results(
    context: AssetCheckExecutionContext, evaluate: Callable[[str], AssetCheckResult]
) -> Iterator[AssetCheckResult | AssetCheckEvaluation | Output]:
    """One result per country partition of the run, for partitioned checks (preview in Dagster 1.13).

    A run for one partition gets a plain AssetCheckResult. A single-run backfill (the assets' BackfillPolicy)
    hands the check a range, and an AssetCheckResult cannot name its partition (Dagster 1.13.27 raises on
    `context.partition_key` there): emit one AssetCheckEvaluation per partition instead, which the instance
    records per partition like any other. A run without partitions checks every partition.
    """
    if context.has_partition_key:
        yield evaluate(context.partition_key)
        return
    partitions = context.partition_keys if context.has_partition_key_range else country_partitions.get_partition_keys()
    spec = context.check_specs[0]
    for partition in partitions:
        result = evaluate(partition)
        yield AssetCheckEvaluation(
            asset_key=spec.asset_key,
            check_name=spec.name,
            passed=result.passed,
            metadata=result.metadata,
            severity=result.severity,
            description=result.description,
            blocking=spec.blocking,
            partition=partition,
            target_materialization_data=_latest_materialization(context, spec.asset_key, partition),
        )
    # The check's output, so that steps waiting on this (blocking) check can start.
    yield Output(None, output_name=context.op_def.output_defs[0].name)


def _latest_materialization(
    context: AssetCheckExecutionContext, asset_key: AssetKey, partition: str
) -> AssetCheckEvaluationTargetMaterializationData | None:
    # What AssetCheckResult records for a single partition: lets the UI tell a current result from a stale one.
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=1
    ).records
    if not records:
        return None
    return AssetCheckEvaluationTargetMaterializationData(
        run_id=records[0].run_id, storage_id=records[0].storage_id, timestamp=records[0].timestamp
    )
