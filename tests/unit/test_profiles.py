"""The profiles as values: round-trip answers are told apart from partial and wrong
ones without a server (the checks that use them run against real servers)."""

from __future__ import annotations

import pytest

from conformance.checks.profiles import PROFILES
from conformance.evidence import Violation


def test_end_of_service_rule() -> None:
    assert [p.name for p in PROFILES.values() if p.one_shot] == ["hello"]
    assert PROFILES["hello"].probe == b""  # the hello client only reads


def test_echo_answer() -> None:
    echo = PROFILES["echo"]
    sent = echo.request(7)
    assert echo.take_answer(sent[:-1], 7, sent) == (False, sent[:-1])
    assert echo.take_answer(sent + b"next", 7, sent) == (True, b"next")
    with pytest.raises(Violation, match="got back"):
        echo.take_answer(sent.upper(), 7, sent)


def test_jsondoc_answer() -> None:
    doc = PROFILES["jsondoc"]
    sent = doc.request(3)
    assert doc.take_answer(b'{"ok":true,"id":3}', 3, sent) == (False, b'{"ok":true,"id":3}')
    assert doc.take_answer(b'{"ok":true,"id":3}\nrest', 3, sent) == (True, b"rest")
    for wrong in (b'{"ok":true,"id":4}\n', b'{"ok":false,"id":3}\n', b"not json\n"):
        with pytest.raises(Violation, match="round trip 3"):
            doc.take_answer(wrong, 3, sent)


@pytest.mark.parametrize("name", ["echo", "jsondoc"])
def test_flood_and_partial(name: str) -> None:
    p = PROFILES[name]
    assert abs(len(p.flood(1 << 20)) - (1 << 20)) < 64
    assert not p.partial().endswith(b"\n")  # half a request: never a whole one
