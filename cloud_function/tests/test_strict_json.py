"""Strict JSON: what Python's json module accepts beyond JSON is refused, naming the field."""

from __future__ import annotations

import pytest

from gcf_pipes.errors import RequestError
from gcf_pipes.strict_json import StrictJSONError, loads_strict, quoted, refuse_lone_surrogates


def test_json_loads_as_usual() -> None:
    assert loads_strict('{"a": [1, 2.5, "\\ud83d\\ude00", null, true]}') == {
        "a": [1, 2.5, "\U0001f600", None, True]
    }


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"a": 1, "a": 2}', "the key 'a' appears twice in one object"),
        ('[{"x": {"b": 1, "b": 1}}]', "the key 'b' appears twice in one object"),
        ('{"a": NaN}', "NaN is not a JSON value"),
        ("[Infinity]", "Infinity is not a JSON value"),
        ("-Infinity", "-Infinity is not a JSON value"),
        ("[" * 100_000 + "]" * 100_000, "it is nested too deeply"),
        ("9" * 5000, "it is not valid JSON"),
        ("{'a': 1}", "it is not valid JSON"),
    ],
)
def test_what_is_not_strict_json_is_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(StrictJSONError) as refused:
        loads_strict(text)
    assert refused.value.reason == reason


def test_a_repeated_key_is_quoted_only_so_far() -> None:
    key = "k" * 10_000
    with pytest.raises(StrictJSONError) as refused:
        loads_strict(f'{{"{key}": 1, "{key}": 2}}')
    assert len(refused.value.reason) < 120
    assert quoted(key) == repr("k" * 64) + "..."


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"dl_bucket": "\\ud800"}', "dl_bucket"),
        ('{"a": 1, "nested": {"x": ["\\udfff"]}}', "nested"),
        ('{"\\udc00": 1}', "body"),
        ('"\\ud800"', "body"),
    ],
)
def test_a_lone_surrogate_names_the_top_level_field(text: str, field: str) -> None:
    with pytest.raises(RequestError) as refused:
        refuse_lone_surrogates(loads_strict(text), "body")
    assert refused.value.field == field
    assert refused.value.status == 400


def test_a_lone_surrogate_in_a_param_is_named_under_the_param() -> None:
    with pytest.raises(RequestError) as refused:
        refuse_lone_surrogates({"data": {"run_id": "\ud800"}}, "DAGSTER_PIPES_CONTEXT")
    assert refused.value.field == "DAGSTER_PIPES_CONTEXT.data"


def test_surrogate_pairs_are_text() -> None:
    refuse_lone_surrogates(loads_strict('{"a": "\\ud83d\\ude00"}'), "body")
