"""Dagster Pipes integration for Google Cloud Functions and Cloud Run Jobs (clients, GCS
readers, invocation, auth)."""

from dagster_pipes_gcf.auth import AudienceRequired, IdTokenAuth, needs_id_token
from dagster_pipes_gcf.client import (
    PipesCloudFunctionClient,
    PipesCloudFunctionCompletedInvocation,
)
from dagster_pipes_gcf.cloud_run_job import (
    CloudRunJobsApi,
    JobPolicy,
    PipesCloudRunJobClient,
    event_args,
)
from dagster_pipes_gcf.component import CloudFunctionComponent
from dagster_pipes_gcf.context_injector import PipesCloudFunctionEventContextInjector
from dagster_pipes_gcf.invocation import (
    CloudFunctionError,
    CloudFunctionInvoker,
    FunctionResponse,
    InvocationPolicy,
)
from dagster_pipes_gcf.message_reader import (
    LogCoalescing,
    PipesCloudStorageMessageReader,
    PipesSharedLocationReader,
    PollingPolicy,
)
from dagster_pipes_gcf.task_messages import PipesCloudRunTaskMessageReader
from dagster_pipes_gcf.tracing import CallTrace, FunctionLocation

__all__ = [
    "AudienceRequired",
    "CallTrace",
    "CloudFunctionComponent",
    "CloudFunctionError",
    "CloudFunctionInvoker",
    "CloudRunJobsApi",
    "FunctionLocation",
    "FunctionResponse",
    "IdTokenAuth",
    "InvocationPolicy",
    "JobPolicy",
    "LogCoalescing",
    "PipesCloudFunctionClient",
    "PipesCloudFunctionCompletedInvocation",
    "PipesCloudFunctionEventContextInjector",
    "PipesCloudRunJobClient",
    "PipesCloudRunTaskMessageReader",
    "PipesCloudStorageMessageReader",
    "PipesSharedLocationReader",
    "PollingPolicy",
    "event_args",
    "needs_id_token",
]
