"""The in-memory GCS fake refuses the calls google-cloud-storage refuses."""

import pytest
from google.api_core import exceptions as gexc

from devstack.fake_gcs import FakeClient


@pytest.fixture
def gcs() -> FakeClient:
    fake = FakeClient()
    fake.create_bucket("b")
    return fake


def test_a_misspelled_keyword_is_a_type_error_as_in_the_real_library(gcs: FakeClient) -> None:
    blob = gcs.bucket("b").blob("k")
    with pytest.raises(TypeError):
        blob.upload_from_string("x", if_generation_matches=0)
    with pytest.raises(TypeError):
        blob.download_as_text(timeout_s=5)
    with pytest.raises(TypeError):
        list(gcs.list_blobs(bucket="b", prefix="k"))
    with pytest.raises(TypeError):
        gcs.bucket("b", None, None, "one too many")
    assert gcs.objects["b"] == {}


def test_real_keywords_and_positions_work(gcs: FakeClient) -> None:
    blob = gcs.bucket(bucket_name="b").blob(blob_name="k")
    blob.upload_from_string("x", "text/plain", if_generation_match=0, timeout=5, retry=None)
    with pytest.raises(gexc.PreconditionFailed):
        blob.upload_from_string(data="y", if_generation_match=0)

    assert blob.exists(timeout=5) and blob.download_as_text(retry=None, timeout=5) == "x"
    assert [b.name for b in gcs.list_blobs(gcs.bucket("b"), 1, prefix="k")] == ["k"]
    assert [b.name for b in gcs.list_blobs("b", max_results=1)] == ["k"]
