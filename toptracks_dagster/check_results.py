"""Asset checks evaluated inside the asset's own step (`check_specs`), one evaluation per partition.

An asset computes a `CheckOutcome` per (check, partition) from data it already holds; `emit_check_results` turns
them into one `AssetCheckEvaluation` per partition (an AssetCheckResult cannot name its partition) and the check
outputs that let the step finish.
"""

# No `from __future__ import annotations`: Dagster inspects annotations of decorated functions.

import functools
from dataclasses import dataclass, field
from typing import Any, Iterator

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    Output,
)

SAMPLE_SIZE = 10  # offending entries kept for a check's metadata; the counts always cover all of them


@dataclass
class Sample:
    """How many entries a check found, and the first SAMPLE_SIZE of them for its metadata."""

    count: int = 0
    first: list = field(default_factory=list)

    def add(self, entry: Any) -> None:
        self.count += 1
        if len(self.first) < SAMPLE_SIZE:
            self.first.append(entry)


@dataclass
class CheckOutcome:
    name: str
    passed: bool
    severity: AssetCheckSeverity = AssetCheckSeverity.ERROR
    description: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def check_spec(asset: str, name: str, description: str, partitions_def=None, blocking: bool = False) -> AssetCheckSpec:
    return AssetCheckSpec(
        name=name, asset=asset, description=description, blocking=blocking, partitions_def=partitions_def
    )


def emit_check_results(
    context: AssetExecutionContext, outcomes: dict[str | None, list[CheckOutcome]]
) -> Iterator[AssetCheckEvaluation | Output]:
    """Yield every outcome (keyed by partition), then the check outputs. Call after the asset's materializations,
    so each evaluation names the materialization it is about."""
    specs = {spec.name: spec for spec in context.assets_def.check_specs}
    # One lookup per (asset, partition): each is a query of the instance.
    target = functools.cache(lambda asset_key, partition: target_materialization(context, asset_key, partition))
    for partition, results in outcomes.items():
        for outcome in results:
            spec = specs[outcome.name]
            yield AssetCheckEvaluation(
                asset_key=spec.asset_key,
                check_name=spec.name,
                passed=outcome.passed,
                severity=outcome.severity,
                description=outcome.description,
                metadata=outcome.metadata,
                blocking=spec.blocking,
                partition=partition,
                target_materialization_data=target(spec.asset_key, partition),
            )
    for output_name in context.assets_def.check_specs_by_output_name:
        yield Output(None, output_name=output_name)


def target_materialization(context: AssetExecutionContext, asset_key: AssetKey, partition: str | None):
    """The materialization a result is about, so the UI can tell a current result from a stale one. Dagster 1.13
    has no public constructor for it: this is the one place that imports it."""
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationTargetMaterializationData,
    )

    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition] if partition else None), limit=1
    ).records
    if not records:
        return None
    return AssetCheckEvaluationTargetMaterializationData(
        run_id=records[0].run_id, storage_id=records[0].storage_id, timestamp=records[0].timestamp
    )


def failed_blocking(outcomes: list[CheckOutcome], specs: list[AssetCheckSpec]) -> list[CheckOutcome]:
    blocking = {spec.name for spec in specs if spec.blocking}
    return [o for o in outcomes if o.name in blocking and not o.passed and o.severity == AssetCheckSeverity.ERROR]
