"""`[client.options]` in a target file: the client's options as INTERFACE.md shows them."""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.target import CLIENT_OPTIONS, TargetFileError, from_mapping


def _target(client_options: dict[str, list[str]]) -> dict[str, object]:
    return {"profile": "hello", "server": {"argv": ["./srv", "{port}"]},
            "client": {"argv": ["./cli", "{host}", "{port}"], "options": client_options}}


def test_client_options_are_parsed_and_filled() -> None:
    t = from_mapping(_target({"linger": ["--linger", "{seconds}"], "debug": []}), base_dir=Path("/"))
    assert t.client is not None and t.client.supports("linger") and t.client.supports("debug")
    argv = t.command(t.client, port=7, options={"linger": {"seconds": 0}})
    assert argv[-2:] == ["--linger", "0"]


@pytest.mark.parametrize("option", ["reuseaddr", "backlog", "oobinline", "broadcast"])
def test_server_only_options_are_refused_for_a_client(option: str) -> None:
    assert option not in CLIENT_OPTIONS
    with pytest.raises(TargetFileError, match="do not apply to a client|do\\(es\\) not apply"):
        from_mapping(_target({option: []}), base_dir=Path("/"))


def test_client_option_placeholders_are_checked() -> None:
    with pytest.raises(TargetFileError, match="placeholder"):
        from_mapping(_target({"linger": ["--linger", "{bytes}"]}), base_dir=Path("/"))
