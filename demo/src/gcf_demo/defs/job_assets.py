"""The people tables written by a Cloud Run job, fanned out over tasks, through Dagster Pipes.

``people_job`` splits ``num_rows`` over ``task_count`` tasks; ``daily_people_job`` runs a
backfill of up to 366 days as one run and one execution, one task per calendar month. The
tasks run ``python -m people_lake.task``: the function's table logic, checks and metadata,
one Delta commit per task (see that module for why).

Configuration (environment): ``CLOUD_RUN_PEOPLE_JOB`` (``projects/P/locations/L/jobs/J``),
``CLOUD_RUN_JOBS_ENDPOINT`` (``host:port`` of a local stand-in; unset: Google's API),
``PIPES_BUCKET`` and ``DATA_LAKE_URI`` as for the function assets.
"""

import datetime as dt
import os

import dagster as dg
from pydantic import Field

from dagster_pipes_gcf import (
    CloudRunJobsApi,
    PipesCloudRunJobClient,
    PipesCloudRunTaskMessageReader,
    event_args,
)
from gcf_demo.defs.assets import (
    DEFAULT_ROWS,
    DEFAULT_ROWS_PER_DAY,
    MAX_DAYS_PER_RUN,
    people_asset,
)
from gcf_demo.settings import DemoSettings

LOCAL_JOB = "projects/local-project/locations/us-central1/jobs/people-job"
GROUP, RUNTIME = "cloud_run_job", "cloud-run-job"


class PeopleJob(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The Cloud Run job the people-job assets run, and the data lake root it writes to."""

    job_name: str
    data_lake_uri: str


class PeopleJobConfig(dg.Config):
    """Run configuration of ``people_job``."""

    num_rows: int = Field(default=DEFAULT_ROWS, description="Fake people, over all tasks.")
    task_count: int = Field(default=4, description="Tasks the rows are split over.")
    seed: int | None = Field(default=None, description="Seed; task i uses seed + i.")
    invalid_email_rate: float = Field(default=0.0, description="Share of malformed e-mails.")


class DailyPeopleJobConfig(dg.Config):
    """Run configuration of ``daily_people_job``: ``num_rows`` is rows per day."""

    num_rows: int = Field(default=DEFAULT_ROWS_PER_DAY, description="Fake people per day.")
    seed: int | None = Field(default=None, description="Seed for reproducible fake data.")
    invalid_email_rate: float = Field(default=0.0, description="Share of malformed e-mails.")


def months_in(start: dt.date, end: dt.date) -> int:
    """Calendar months that days ``start`` .. ``end`` touch (one task each)."""
    return (end.year - start.year) * 12 + end.month - start.month + 1


def _event(config: PeopleJobConfig | DailyPeopleJobConfig, job: PeopleJob) -> dict[str, object]:
    return {
        "dl_bucket": job.data_lake_uri,
        "num_rows": config.num_rows,
        "seed": config.seed,
        "invalid_email_rate": config.invalid_email_rate,
    }


@people_asset(
    "people_job",
    "Fake people appended to the Delta table `<data lake>/people_job` by a Cloud Run job: "
    "`num_rows` split over `task_count` tasks, one Delta commit per task; retries never "
    "write a task's share twice.",
    group=GROUP,
    runtime=RUNTIME,
)
def people_job(
    context: dg.AssetExecutionContext,
    config: PeopleJobConfig,
    pipes_job_client: PipesCloudRunJobClient,
    people_cloud_run_job: PeopleJob,
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    return pipes_job_client.run(
        context=context,
        job_name=people_cloud_run_job.job_name,
        args=event_args(_event(config, people_cloud_run_job)),
        task_count=config.task_count,
    ).get_materialize_result()


@people_asset(
    "daily_people_job",
    "Fake people per day in the Delta table `<data lake>/daily_people_job`, written by a "
    "Cloud Run job: a backfill of up to 366 days is one run and one execution, one task per "
    "calendar month, each replacing its month's days in one Delta commit.",
    group=GROUP,
    runtime=RUNTIME,
    daily_backfill=dg.BackfillPolicy.multi_run(max_partitions_per_run=MAX_DAYS_PER_RUN),
)
def daily_people_job(
    context: dg.AssetExecutionContext,
    config: DailyPeopleJobConfig,
    pipes_job_client: PipesCloudRunJobClient,
    people_cloud_run_job: PeopleJob,
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    keys = context.partition_key_range
    start, end = dt.date.fromisoformat(keys.start), dt.date.fromisoformat(keys.end)
    return pipes_job_client.run(
        context=context,
        job_name=people_cloud_run_job.job_name,
        args=event_args(_event(config, people_cloud_run_job)),
        task_count=months_in(start, end),
    ).get_materialize_result()


def build_job_resources(
    settings: DemoSettings, job_name: str, endpoint: str | None
) -> dict[str, object]:
    """The job client (a local stand-in at ``endpoint``, else Google's API) and the job."""
    return {
        "pipes_job_client": PipesCloudRunJobClient(
            message_reader=PipesCloudRunTaskMessageReader(bucket=settings.pipes_bucket),
            api=CloudRunJobsApi.local(endpoint) if endpoint else None,
        ),
        "people_cloud_run_job": PeopleJob(job_name=job_name, data_lake_uri=settings.data_lake_uri),
    }


@dg.definitions
def job_definitions() -> dg.Definitions:
    # A module with a Definitions function contributes only what it returns.
    return dg.Definitions(
        assets=[people_job, daily_people_job],
        resources=build_job_resources(
            DemoSettings.from_env(),
            os.environ.get("CLOUD_RUN_PEOPLE_JOB") or LOCAL_JOB,
            os.environ.get("CLOUD_RUN_JOBS_ENDPOINT") or None,
        ),
    )
