"""Dagster Pipes integration for Google Cloud Functions (client, GCS reader, invocation, auth)."""

from dagster_pipes_gcf.auth import AudienceRequired, IdTokenAuth, audience_for, needs_id_token
from dagster_pipes_gcf.client import (
    PipesCloudFunctionClient,
    PipesCloudFunctionCompletedInvocation,
)
from dagster_pipes_gcf.context_injector import PipesCloudFunctionEventContextInjector
from dagster_pipes_gcf.invocation import (
    CloudFunctionError,
    CloudFunctionInvoker,
    FunctionResponse,
    InvocationPolicy,
)
from dagster_pipes_gcf.message_reader import (
    LogCoalescing,
    PipesAttemptStreams,
    PipesCloudStorageMessageReader,
    PollingPolicy,
)
from dagster_pipes_gcf.tracing import CallTrace, FunctionLocation

__all__ = [
    "AudienceRequired",
    "CallTrace",
    "CloudFunctionError",
    "CloudFunctionInvoker",
    "FunctionLocation",
    "FunctionResponse",
    "IdTokenAuth",
    "InvocationPolicy",
    "LogCoalescing",
    "PipesAttemptStreams",
    "PipesCloudFunctionClient",
    "PipesCloudFunctionCompletedInvocation",
    "PipesCloudFunctionEventContextInjector",
    "PipesCloudStorageMessageReader",
    "PollingPolicy",
    "audience_for",
    "needs_id_token",
]
