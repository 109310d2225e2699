"""The token stand-ins answer real google-auth as Google does; the GCS front refuses a write
made with a read-only token, as GCS does (fake-gcs-server behind it)."""

from collections.abc import Iterator
from pathlib import Path

import google.auth
import pytest
import requests
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exceptions
from google.auth import impersonated_credentials
from google.auth.transport.requests import Request
from google.cloud import storage

from devstack.gcs_xml_adapter import Upstream
from devstack.iam_credentials import (
    CLOUD_PLATFORM,
    IAM_SCOPES,
    STORAGE_READ_ONLY,
    STORAGE_READ_WRITE,
    ScopedGcs,
    TokenService,
)
from devstack.net import free_port
from devstack.services import emulator_command, running

ACCOUNT = "orchestrator@p.iam.gserviceaccount.com"
CALLER = "developer@p.iam.gserviceaccount.com"
BUCKET = "scoped-bucket"


@pytest.fixture
def tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenService]:
    service = TokenService(caller=CALLER, token_creators={ACCOUNT: frozenset({CALLER})})
    with service.serving():
        adc = service.write_adc_file(tmp_path / "adc.json")
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
        yield service


def impersonated(
    tokens: TokenService, account: str, scope: str
) -> impersonated_credentials.Credentials:
    source, _ = google.auth.default(scopes=[CLOUD_PLATFORM])
    return impersonated_credentials.Credentials(  # type: ignore[no-untyped-call]
        source_credentials=source,
        target_principal=account,
        target_scopes=[scope],
        iam_endpoint_override=tokens.access_token_url(account),
    )


def test_impersonation_mints_a_token_of_the_account_with_the_scopes_asked_for(
    tokens: TokenService,
) -> None:
    credentials = impersonated(tokens, ACCOUNT, STORAGE_READ_ONLY)
    credentials.refresh(Request())  # type: ignore[no-untyped-call]

    minted = tokens.token(credentials.token)
    assert minted is not None
    assert (minted.principal, minted.scopes) == (ACCOUNT, (STORAGE_READ_ONLY,))
    caller = tokens.minted[0]  # the caller's own token, which authorised the call
    assert caller.principal == CALLER and not IAM_SCOPES.isdisjoint(caller.scopes)
    assert credentials.expiry is not None


def test_a_caller_without_token_creator_on_the_account_is_refused(tokens: TokenService) -> None:
    credentials = impersonated(tokens, "other@p.iam.gserviceaccount.com", STORAGE_READ_ONLY)
    with pytest.raises(auth_exceptions.RefreshError, match=r"iam\.serviceAccounts\.getAccessToken"):
        credentials.refresh(Request())  # type: ignore[no-untyped-call]
    assert [token.principal for token in tokens.minted] == [CALLER]


@pytest.fixture
def gcs(tokens: TokenService, tmp_path: Path) -> Iterator[ScopedGcs]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running("GCS emulator", emulator_command(port, url, tmp_path / "data"), port):
        Upstream.from_url(url).create_bucket(BUCKET)
        with ScopedGcs(f"http://127.0.0.1:{port}", tokens).serving() as front:
            yield front


def client_with(tokens: TokenService, gcs: ScopedGcs, scope: str) -> storage.Client:
    credentials = impersonated(tokens, ACCOUNT, scope)
    return storage.Client(
        credentials=credentials, project=None, client_options={"api_endpoint": gcs.url}
    )


def test_a_read_only_token_reads_but_its_write_is_refused_with_403(
    tokens: TokenService, gcs: ScopedGcs
) -> None:
    writer = client_with(tokens, gcs, STORAGE_READ_WRITE).bucket(BUCKET)
    writer.blob("p/1.json").upload_from_string("{}", retry=None)
    reader = client_with(tokens, gcs, STORAGE_READ_ONLY).bucket(BUCKET)

    assert reader.blob("p/1.json").download_as_text(retry=None) == "{}"
    with pytest.raises(gexc.Forbidden, match="Provided scope"):
        reader.blob("p/cancel").upload_from_string("{}", retry=None)
    assert not writer.blob("p/cancel").exists(retry=None), "a refused write must not land"
    objects = [r for r in gcs.seen if "/o" in r.path]  # (the client also reads the bucket)
    assert [(r.method, r.principal, r.status) for r in objects] == [
        ("POST", ACCOUNT, 200),  # the read-write upload
        ("GET", ACCOUNT, 200),  # the read-only download
        ("POST", ACCOUNT, 403),  # the read-only upload
        ("GET", ACCOUNT, 404),  # it did not land
    ]


def test_a_request_without_a_known_token_is_unauthenticated(gcs: ScopedGcs) -> None:
    url = f"{gcs.url}/storage/v1/b/{BUCKET}/o"
    for headers in ({}, {"Authorization": "Bearer forged"}):
        answer = requests.get(url, headers=headers, timeout=10)
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["message"] == "Invalid Credentials"
    assert [(r.principal, r.status) for r in gcs.seen] == [(None, 401), (None, 401)]


def test_a_caller_token_without_an_iam_scope_cannot_impersonate(tokens: TokenService) -> None:
    storage_only = tokens._mint(CALLER, [STORAGE_READ_ONLY])
    answer = requests.post(
        tokens.access_token_url(ACCOUNT),
        json={"scope": [STORAGE_READ_ONLY]},
        headers={"Authorization": f"Bearer {storage_only.value}"},
        timeout=10,
    )
    assert answer.status_code == 403 and "SCOPE_INSUFFICIENT" in answer.text
