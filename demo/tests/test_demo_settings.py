"""The one rule ``just dd`` and ``just cloud-smoke`` both apply to the settings: a deployed
function writes its Pipes messages to real GCS, so the emulator variable must not be set."""

import pytest

from gcf_demo.settings import DemoSettings

DEPLOYED = "https://people-abc123-ew.a.run.app"
EMULATOR = "http://127.0.0.1:9023"


def settings(function_url: str) -> DemoSettings:
    return DemoSettings(function_url=function_url, pipes_bucket="b", data_lake_uri="gs://l")


def test_a_deployed_function_with_the_emulator_set_is_a_mismatch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", EMULATOR)
    problem = settings(DEPLOYED).emulator_mismatch()
    assert problem is not None
    assert f"CLOUD_FUNCTION_URL ({DEPLOYED}) is a deployed function" in problem
    assert f"STORAGE_EMULATOR_HOST={EMULATOR} is set" in problem


@pytest.mark.parametrize(
    ("function_url", "emulator"),
    [(DEPLOYED, None), ("http://127.0.0.1:8080", EMULATOR), ("http://127.0.0.1:8080", None)],
)
def test_a_local_function_or_no_emulator_is_no_mismatch(
    function_url: str, emulator: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if emulator is None:
        monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    else:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    assert settings(function_url).emulator_mismatch() is None
