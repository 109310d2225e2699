"""Context injection through the HTTP request body."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import PipesContextInjector
from dagster_pipes import PipesContextData, PipesDefaultContextLoader, PipesParams


class PipesCloudFunctionEventContextInjector(PipesContextInjector):
    """Embeds the Pipes context inline in the request body, no storage round trip needed
    (the function reads it with ``PipesMappingParamsLoader(body)``)."""

    @contextmanager
    def inject_context(self, context_data: PipesContextData) -> Iterator[PipesParams]:
        yield {PipesDefaultContextLoader.DIRECT_KEY: context_data}

    def no_messages_debug_text(self) -> str:
        return "Attempted to inject context inline in the Cloud Function's HTTP request body."
