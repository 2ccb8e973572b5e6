"""Remote JSON with bounds: depth counted before parsing, every failure one ValueError."""

from __future__ import annotations

import json

import pytest

from natkit.signal import wire


@pytest.mark.parametrize(
    ("text", "deep"),
    [
        (b'{"type": "offer", "sdp": "v=0"}', False),
        (b"[" * 16 + b"]" * 16, False),
        (b"[" * 17 + b"]" * 17, True),
        (b"[" * 100_000, True),  # unterminated: still bounded, still a verdict
        (b'{"a": "' + b"[" * 100 + b'"}', False),  # brackets inside a string do not nest
        (b'{"a": "\\"' + b"[" * 100 + b'"}', False),  # an escaped quote does not end it
        (b'{"a": "\\\\"' + b", " + b"[" * 20 + b"]" * 20 + b"}", True),  # but \\ does
        (b'[{"a": [{"b": ' * 5 + b"1" + b"}]}]" * 5, True),  # 20 levels, arrays and objects
    ],
)
def test_too_deep_counts_nesting_outside_strings(text: bytes, deep: bool) -> None:
    assert wire.too_deep(text) is deep


def test_loads_refuses_deep_nesting_before_json_recurses() -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(RecursionError):
        json.loads(body)  # why the bound exists
    with pytest.raises(ValueError, match="nested deeper than 16"):
        wire.loads(body)


@pytest.mark.parametrize(
    "body",
    [b"not json", b"\xff\xfe\x00", b'{"n": ' + b"1" * 5000 + b"}", b"", b'{"a": 1,}'],
)
def test_loads_turns_every_decoding_problem_into_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError, match="not JSON"):
        wire.loads(body)


def test_loads_returns_ordinary_bodies() -> None:
    assert wire.loads(b'{"type": "offer", "sdp": "v=0\\r\\n"}') == {
        "type": "offer",
        "sdp": "v=0\r\n",
    }
