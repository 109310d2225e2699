"""What each people asset declares: the function and the job assets share everything but
their group, runtime tag and partitioning (a refactoring of the decorators keeps all of it)."""

import dagster as dg
import pytest

from gcf_demo.defs.assets import CHECKS, cloud_function_pipes_asset, daily_people
from gcf_demo.defs.job_assets import daily_people_job, people_job

SHARED_TAGS = {"domain": "people", "data": "synthetic"}
DAILY = {"partitioning": "daily"}

EXPECTED = [
    (cloud_function_pipes_asset, "cloud_function", {"runtime": "cloud-function"}),
    (daily_people, "cloud_function", {"runtime": "cloud-function", **DAILY}),
    (people_job, "cloud_run_job", {"runtime": "cloud-run-job"}),
    (daily_people_job, "cloud_run_job", {"runtime": "cloud-run-job", **DAILY}),
]


@pytest.mark.parametrize(
    ("asset", "group", "tags"), EXPECTED, ids=[a.key.to_user_string() for a, *_ in EXPECTED]
)
def test_every_people_asset_declares_the_shared_spec(
    asset: dg.AssetsDefinition, group: str, tags: dict[str, str]
) -> None:
    spec = next(iter(asset.specs))
    name = asset.key.to_user_string()
    assert spec.kinds == {"gcp", "delta"}
    assert spec.owners == ["team:data-platform"]
    user_tags = {k: v for k, v in spec.tags.items() if not k.startswith("dagster/")}
    assert user_tags == {**SHARED_TAGS, **tags}
    assert spec.code_version == "people-3"
    assert spec.group_name == group
    assert spec.metadata == {}
    assert spec.description
    assert asset.op.pool == "people_function"
    checks = {(c.asset_key.to_user_string(), c.name, c.description) for c in asset.check_specs}
    assert checks == {(name, check, text) for check, text in CHECKS.items()}


@pytest.mark.parametrize("asset", [daily_people, daily_people_job], ids=lambda a: a.key.path[0])
def test_the_daily_assets_run_a_years_backfill_in_one_run(asset: dg.AssetsDefinition) -> None:
    partitions = asset.partitions_def
    assert isinstance(partitions, dg.DailyPartitionsDefinition)
    assert partitions.start.date().isoformat() == "2024-01-01" and partitions.end_offset == 1
    assert asset.backfill_policy == dg.BackfillPolicy.multi_run(max_partitions_per_run=366)


@pytest.mark.parametrize(
    "asset", [cloud_function_pipes_asset, people_job], ids=lambda a: a.key.path[0]
)
def test_the_unpartitioned_assets_have_no_backfill_policy(asset: dg.AssetsDefinition) -> None:
    assert asset.partitions_def is None and asset.backfill_policy is None
