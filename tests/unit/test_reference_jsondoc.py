"""Unit tests of the reference JSONDOC protocol and stores (reference_impl/jsondoc).

No sockets here: framing, strict parsing, dispatch and both store backends are
driven directly.  The socket drivers are tested in test_reference_jsondoc_server.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference_impl.jsondoc import protocol as proto
from reference_impl.jsondoc import store as store_mod
from reference_impl.jsondoc.protocol import (
    MAX_DEPTH,
    MAX_LINE,
    TOO_LARGE_RESPONSE,
    BadJson,
    ConnState,
    LineBuffer,
    ServerConnection,
    dispatch,
    exceeds_depth,
    parse_json,
    respond,
)
from reference_impl.jsondoc.store import (
    DuplicateIdError,
    MemoryStore,
    SqliteStore,
    Store,
    StoreError,
    json_equal,
    matches,
)

ROOT = Path(__file__).resolve().parents[2]


def ask(store: Store, request: object | bytes) -> dict[str, Any]:
    """The decoded response to one request (an object, or a raw line)."""
    line = request if isinstance(request, bytes) else json.dumps(request).encode()
    out = respond(store, line)
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    decoded: dict[str, Any] = json.loads(out)
    return decoded


def error_code(response: dict[str, Any]) -> str | None:
    if response.get("ok") is True:
        return None
    assert response["ok"] is False and isinstance(response["message"], str), response
    code: str = response["error"]
    return code


# =========================================================================== framing


def test_lines_split_at_newlines_in_one_chunk() -> None:
    buf = LineBuffer()
    assert buf.feed(b'{"a":1}\n{"b":2}\n{"c"') == [b'{"a":1}', b'{"b":2}']
    assert buf.buffered == 4
    assert buf.feed(b":3}\n") == [b'{"c":3}']
    assert buf.buffered == 0


def test_lines_byte_by_byte() -> None:
    stream = b'{"op":"ping","id":1}\n \n{"op":"ping","id":2}\r\n'
    buf = LineBuffer()
    got = [line for i in range(len(stream)) for line in buf.feed(stream[i : i + 1])]
    assert got == [b'{"op":"ping","id":1}', b'{"op":"ping","id":2}\r']


@given(st.lists(st.integers(0, 200), max_size=12))
def test_lines_any_segmentation(cuts: list[int]) -> None:
    lines = [b'{"op":"ping","id":%d}' % i for i in range(8)]
    stream = b"\n".join(lines) + b"\n\t \r\n\n"
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    buf = LineBuffer()
    got: list[bytes] = []
    for a, b in zip(points, points[1:], strict=False):
        got += buf.feed(stream[a:b])
    assert got == lines and buf.buffered == 0


@pytest.mark.parametrize("blank", [b"", b" ", b"\t", b"\r", b" \t\r  \t"])
def test_blank_lines_are_dropped(blank: bytes) -> None:
    assert LineBuffer().feed(blank + b"\n") == []
    assert LineBuffer().feed(b"x\n" + blank + b"\ny\n") == [b"x", b"y"]


def test_other_whitespace_is_not_blank() -> None:
    # Only spaces, tabs and CR make a blank line; the JSON parser judges the rest.
    assert LineBuffer().feed(b"\x0c\n") == [b"\x0c"]


def test_limit_is_exact_for_terminated_lines() -> None:
    buf = LineBuffer()
    ok = b"x" * MAX_LINE
    assert buf.feed(ok + b"\n") == [ok] and not buf.too_large
    buf = LineBuffer()
    assert buf.feed(b"y\n" + b"x" * (MAX_LINE + 1) + b"\nz\n") == [b"y"]
    assert buf.too_large and buf.buffered == 0
    assert buf.feed(b"more\n") == []  # everything after the overflow is discarded


def test_limit_is_exact_for_the_unterminated_line() -> None:
    buf = LineBuffer()
    assert buf.feed(b"x" * MAX_LINE) == [] and not buf.too_large
    assert buf.feed(b"\n") == [b"x" * MAX_LINE]
    buf = LineBuffer()
    assert buf.feed(b"x" * MAX_LINE) == []
    assert buf.feed(b"x") == [] and buf.too_large  # as soon as it exceeds, before any \n
    assert buf.buffered == 0


def test_limit_counts_a_carriage_return() -> None:
    buf = LineBuffer()
    assert buf.feed(b"x" * MAX_LINE + b"\r\n") == [] and buf.too_large


def test_memory_stays_bounded_while_a_line_trickles_in() -> None:
    buf = LineBuffer(limit=1000)
    peak = 0
    for _ in range(300):
        buf.feed(b"0123456789")
        peak = max(peak, buf.buffered)
    assert buf.too_large and peak <= 1000 and buf.buffered == 0


def test_eof_returns_the_unterminated_line() -> None:
    buf = LineBuffer()
    assert buf.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert buf.feed_eof() == [b'{"b"']
    with pytest.raises(RuntimeError):
        buf.feed(b"x")
    buf = LineBuffer()
    buf.feed(b"  \t")
    assert buf.feed_eof() == []


# =========================================================================== parsing


@pytest.mark.parametrize(
    "line",
    [
        b"NaN",
        b'{"a":NaN}',
        b'{"a":Infinity}',
        b'{"a":-Infinity}',
        b'{"a":1,}',
        b"[1,]",
        b"{'a':1}",
        b'{"a":1}//c',
        b'{"a":/*c*/1}',
        b'{"a":01}',
        b'{"a":-01}',
        b'{"a":.5}',
        b'{"a":1.}',
        b'{"a":+1}',
        b'{"a":"\x01"}',
        b'{"a":"\t"}',
        b'{"a":"\\x41"}',
        b'{"a":"\xff"}',
        b'{"a":"\x80"}',
        b'{"a":"\xe2\x82"}',
        b'{"a":"\xc0\xaf"}',
        b'{"a":"\xe0\x80\x80"}',
        b'{"a":"\xed\xa0\x80"}',
        b'{"a":"\xf4\x90\x80\x80"}',
        b'{"a":"\\ud800"}',
        b'{"a":"\\udc00"}',
        b'{"a":"\\ud800\\u0041"}',
        b'{"a":["\\udfff"]}',
        b'{"\\ud800":1}',
        b'{"a":1e400}',
        b'{"a":-1e400}',
        b'{"a":[1.8e308]}',
        b'{"a":' + b"9" * 309 + b"}",
        b'{"a":-' + b"1" * 310 + b"}",
        b'{"a":' + b"1" * 5000 + b"}",
        b'{"a":1} x',
        b'{"a":1}{"b":2}',
        b"\xef\xbb\xbf{}",
        b'{"a":1',
        b'{"a":"b',
        b"{",
        b"}",
        b"hello",
        b"\x0c{}",
        b"",
    ],
)
def test_strictness_bad_json(line: bytes) -> None:
    with pytest.raises(BadJson):
        parse_json(line)
    response = ask(MemoryStore(), line)
    assert error_code(response) == "bad_json" and "id" not in response


@pytest.mark.parametrize(
    ("line", "value"),
    [
        (b'{"a":1,"a":2}', {"a": 2}),  # duplicate names: the last one wins
        (b'{"a":"\\ud83d\\ude00"}', {"a": "\U0001f600"}),  # a valid surrogate pair
        (b'{"a":"\xf0\x9f\x98\x80"}', {"a": "\U0001f600"}),
        (b'{"a":1e-400}', {"a": 0.0}),  # underflow is not overflow
        (b'{"a":1.7976931348623157e308}', {"a": 1.7976931348623157e308}),
        (b'{"a":' + b"1" * 309 + b"}", {"a": int("1" * 309)}),
        (b'{"a":-0}', {"a": 0}),
        (b'{"a":9007199254740993}', {"a": 9007199254740993}),
        (b' \t{"a":[]}\r', {"a": []}),
        (b'{"a":"\\u0000\x7f"}', {"a": "\x00\x7f"}),
        (b'"\\\\ud800"', "\\ud800"),  # an escaped backslash, not a surrogate escape
        (b"[1,2]", [1, 2]),
    ],
)
def test_strictness_accepted(line: bytes, value: object) -> None:
    assert parse_json(line) == value


def _nested(depth: int, arrays: bool) -> bytes:
    """A request-like object nested exactly ``depth`` levels (the object is 1)."""
    inner = depth - 1
    body = ("[" * inner + "1" + "]" * inner) if arrays else ('{"a":' * inner + "1" + "}" * inner)
    return f'{{"op":"ping","x":{body}}}'.encode()


@pytest.mark.parametrize("arrays", [False, True])
def test_depth_64_is_accepted(arrays: bool) -> None:
    line = _nested(MAX_DEPTH, arrays)
    assert not exceeds_depth(line)
    assert ask(MemoryStore(), line) == {"ok": True}


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 100_000])
@pytest.mark.parametrize("arrays", [False, True])
def test_deeper_is_bad_json_without_recursion_error(depth: int, arrays: bool) -> None:
    line = _nested(depth, arrays)
    assert exceeds_depth(line)
    assert error_code(ask(MemoryStore(), line)) == "bad_json"


@pytest.mark.parametrize(
    "line",
    [b"[" * 100_000, b"{" * 100_000, b"]" * 100 + b"[" * 100, b'{"a":' * 100_000],
)
def test_unbalanced_deep_input_is_bad_json(line: bytes) -> None:
    assert error_code(ask(MemoryStore(), line)) == "bad_json"


def test_brackets_inside_strings_do_not_count() -> None:
    text = "[" * 200 + '\\"' + "{" * 200
    line = json.dumps({"op": "ping", "s": text, "t": ["]]]", "\\"]}).encode()
    assert not exceeds_depth(line)
    assert ask(MemoryStore(), line) == {"ok": True}


def test_adversarial_unterminated_strings_stay_linear() -> None:
    # Many escaped quotes and no closing one: a naive string regex goes quadratic.
    line = b"[" * 70 + b'"' + b'\\"' * 300_000
    assert exceeds_depth(line)  # unbalanced, and it returns (no timing asserted)


def _depth_model(line: bytes) -> int | None:
    """Nesting depth of a bracket text, or None if it does not balance."""
    depth = peak = 0
    for c in line:
        depth += 1 if c in b"[{" else -1
        if depth < 0:
            return None
        peak = max(peak, depth)
    return peak if depth == 0 else None


@settings(max_examples=300)
@given(st.lists(st.sampled_from([b"[", b"]", b"{", b"}"]), max_size=300), st.integers(1, 70))
def test_exceeds_depth_matches_a_counter(tokens: list[bytes], limit: int) -> None:
    line = b"".join(tokens)
    depth = _depth_model(line)
    if depth is not None:
        assert exceeds_depth(line, limit) == (depth > limit)
    else:  # unbalanced: whatever the depth check says, the line is bad_json, no crash
        with pytest.raises(BadJson):
            parse_json(line)


def _nest(children: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.lists(children, max_size=4) | st.dictionaries(
        st.text(max_size=4), children, max_size=4
    )


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8"), max_size=8),
    _nest,
    max_leaves=20,
)


@given(_JSON_VALUES)
def test_parse_round_trips_what_json_dumps_writes(value: object) -> None:
    for ensure_ascii in (True, False):
        line = json.dumps({"v": value}, ensure_ascii=ensure_ascii).encode()
        assert json_equal(parse_json(line), {"v": value})


# =========================================================================== dispatch

IDS = [None, True, 0, -1.5, "x", "", [1, {"a": None}], {"k": [2]}]


@pytest.mark.parametrize("rid", IDS)
def test_id_is_echoed_on_success_and_on_errors(rid: object) -> None:
    st_ = MemoryStore()
    assert ask(st_, {"op": "ping", "id": rid}) == {"ok": True, "id": rid}
    cases: list[tuple[dict[str, object], str | None]] = [
        ({"op": "nope"}, "unknown_op"),
        ({}, "bad_request"),
        ({"op": 3}, "bad_request"),
        ({"op": "insert", "coll": "", "doc": {}}, "bad_request"),
        ({"op": "insert", "coll": "c", "doc": {"_id": "a"}}, None),
        ({"op": "insert", "coll": "c", "doc": {"_id": "a"}}, "duplicate_id"),
    ]
    for request, code in cases:
        response = ask(st_, {**request, "id": rid})
        assert error_code(response) == code and response["id"] == rid, (request, response)


def test_responses_without_id_have_none() -> None:
    st_ = MemoryStore()
    for request in [{"op": "ping"}, {"op": "nope"}, [1], "ping", 3, None]:
        assert "id" not in ask(st_, request)


@pytest.mark.parametrize(
    "request_",
    [
        [{"op": "ping"}],
        "ping",
        42,
        None,
        {"coll": "c", "filter": {}},
        {"op": None},
        {"op": ["ping"]},
        {"op": "count"},
        {"op": "insert", "coll": "", "doc": {}},
        {"op": "insert", "coll": "c" * 65, "doc": {}},
        {"op": "insert", "coll": "a b", "doc": {}},
        {"op": "find", "coll": "a/b"},
        {"op": "count", "coll": "caf\u00e9"},
        {"op": "count", "coll": "abc\n"},
        {"op": "insert", "coll": 5, "doc": {}},
        {"op": "count", "coll": None},
        {"op": "insert", "coll": "c"},
        {"op": "insert", "coll": "c", "doc": [{"a": 1}]},
        {"op": "insert", "coll": "c", "doc": "x"},
        {"op": "insert", "coll": "c", "doc": None},
        {"op": "find", "coll": "c", "filter": []},
        {"op": "find", "coll": "c", "filter": None},
        {"op": "count", "coll": "c", "filter": "a"},
        {"op": "delete", "coll": "c", "filter": 1},
        {"op": "delete", "coll": "c", "filter": None},
        {"op": "delete", "coll": "c"},
    ],
)
def test_bad_request_changes_nothing(request_: object) -> None:
    st_ = MemoryStore()
    st_.insert("c", {"_id": "keep"})
    assert error_code(ask(st_, request_)) == "bad_request"
    assert st_.find("c", {}) == [{"_id": "keep"}]


@pytest.mark.parametrize("op", ["drop", "PING", "", "ping ", "Insert"])
def test_unknown_op(op: str) -> None:
    assert error_code(ask(MemoryStore(), {"op": op, "coll": "c"})) == "unknown_op"


@pytest.mark.parametrize("coll", ["a", "A-Z_0.9", "x" * 64, ".", "-", "_"])
def test_valid_collection_names(coll: str) -> None:
    st_ = MemoryStore()
    assert ask(st_, {"op": "insert", "coll": coll, "doc": {"_id": "d"}})["_id"] == "d"
    assert ask(st_, {"op": "count", "coll": coll}) == {"ok": True, "count": 1}


def test_ping_ignores_other_members() -> None:
    assert ask(MemoryStore(), {"op": "ping", "coll": 5, "doc": None}) == {"ok": True}


def test_every_error_code_is_reachable() -> None:
    st_ = MemoryStore()
    seen = {
        error_code(ask(st_, b"{")),
        error_code(ask(st_, b"[]")),
        error_code(ask(st_, {"op": "x"})),
        error_code(ask(st_, {"op": "insert", "coll": "c", "doc": {"_id": "1"}})),
        error_code(ask(st_, {"op": "insert", "coll": "c", "doc": {"_id": "1"}})),
        error_code(json.loads(TOO_LARGE_RESPONSE)),
    }
    assert seen == {None, *proto.ERROR_CODES}


def test_dispatch_takes_decoded_requests() -> None:
    assert dispatch(MemoryStore(), {"op": "ping", "id": 5}) == {"ok": True, "id": 5}
    assert dispatch(MemoryStore(), ["op"])["error"] == "bad_request"


def test_response_lines_are_compact_ascii_json() -> None:
    st_ = MemoryStore()
    respond(st_, json.dumps({"op": "insert", "coll": "c", "doc": {"s": "é\U0001f600"}}).encode())
    out = respond(st_, b'{"op":"find","coll":"c","id":1}')
    assert out.isascii() and b" " not in out and out.endswith(b"}\n")
    docs = json.loads(out)["docs"]
    assert docs[0]["s"] == "é\U0001f600"


# =========================================================================== stores


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    st_: Store = (
        MemoryStore() if request.param == "memory" else SqliteStore(str(tmp_path / "db.sqlite"))
    )
    try:
        yield st_
    finally:
        st_.close()


def test_insert_ids(store: Store) -> None:
    assert store.insert("c", {"_id": "given", "a": 1}) == "given"
    assert store.insert("c", {"_id": "", "a": 1}) == ""  # an empty string is a string id
    with pytest.raises(DuplicateIdError):
        store.insert("c", {"_id": "given", "a": 2})
    bad_ids: list[object] = [1, None, [], {}]
    assigned = {store.insert("c", {"_id": bad, "n": i}) for i, bad in enumerate(bad_ids)}
    assigned.add(store.insert("c", {"n": 9}))
    assert len(assigned) == 5 and all(isinstance(i, str) and i for i in assigned)
    docs = store.find("c", {})
    assert [d["_id"] for d in docs[:2]] == ["given", ""]
    assert {d["_id"] for d in docs[2:]} == assigned  # non-string _id replaced
    assert store.find("c", {"_id": "given"}) == [{"_id": "given", "a": 1}]
    assert store.insert("other", {"_id": "given"}) == "given"  # unique per collection


def test_assigned_ids_never_clash_with_existing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.insert("c", {"_id": "taken"})
    draws = iter(["taken", "taken", "fresh"])
    monkeypatch.setattr(store_mod, "new_id", lambda: next(draws))
    assert store.insert("c", {"a": 1}) == "fresh"
    assert store.count("c", {}) == 2


def test_find_keeps_insertion_order(store: Store) -> None:
    for i in range(20):
        store.insert("c", {"_id": f"k{19 - i}", "i": i, "even": i % 2 == 0})
    assert [d["i"] for d in store.find("c", {})] == list(range(20))
    assert [d["i"] for d in store.find("c", {"even": True})] == list(range(0, 20, 2))
    assert store.delete("c", {"_id": "k19"}) == 1
    store.insert("c", {"_id": "k19", "i": 99})  # re-inserted: now the newest
    assert [d["i"] for d in store.find("c", {})][-2:] == [19, 99]


def test_filter_semantics(store: Store) -> None:
    docs: list[dict[str, Any]] = [
        {"_id": "int", "v": 1},
        {"_id": "float", "v": 1.0},
        {"_id": "true", "v": True},
        {"_id": "str", "v": "1"},
        {"_id": "null", "v": None},
        {"_id": "arr", "v": [1, [2.0]]},
        {"_id": "obj", "v": {"a": 1, "b": [True]}},
        {"_id": "none"},
    ]
    for d in docs:
        store.insert("f", d)

    def ids(flt: dict[str, Any]) -> list[str]:
        return [d["_id"] for d in store.find("f", flt)]

    assert ids({"v": 1}) == ["int", "float"]
    assert ids({"v": 1.0}) == ["int", "float"]
    assert ids({"v": True}) == ["true"]  # true != 1
    assert ids({"v": "1"}) == ["str"]
    assert ids({"v": None}) == ["null"]  # a missing member is not null
    assert ids({"v": [1.0, [2]]}) == ["arr"]
    assert ids({"v": [1]}) == []
    assert ids({"v": {"b": [True], "a": 1.0}}) == ["obj"]
    assert ids({"v": {"a": 1}}) == []
    assert ids({"v": 1, "_id": "float"}) == ["float"]
    assert ids({"_id": 1}) == []  # stored ids are strings
    assert ids({"missing": None}) == []
    assert len(ids({})) == len(docs)
    assert store.count("f", {"v": 1}) == 2 and store.count("f", {}) == len(docs)
    assert store.find("nothing", {}) == [] and store.count("nothing", {}) == 0


def test_delete(store: Store) -> None:
    for i in range(10):
        store.insert("d", {"_id": str(i), "odd": i % 2 == 1})
    assert store.delete("d", {"odd": True}) == 5
    assert [d["_id"] for d in store.find("d", {})] == ["0", "2", "4", "6", "8"]
    assert store.delete("d", {"odd": 1}) == 0
    assert store.delete("d", {"_id": "4"}) == 1 and store.delete("d", {"_id": "4"}) == 0
    assert store.delete("d", {}) == 4 and store.count("d", {}) == 0
    assert store.delete("none", {}) == 0


def test_concurrent_inserts_are_all_stored(store: Store) -> None:
    ids: list[list[str]] = [[] for _ in range(8)]

    def run(k: int) -> None:
        for i in range(50):
            ids[k].append(store.insert("many", {"k": k, "i": i}))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    flat = [i for per in ids for i in per]
    assert len(flat) == 400 and len(set(flat)) == 400
    assert store.count("many", {}) == 400


def test_closed_store_raises(store: Store) -> None:
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError):
        store.insert("c", {})
    with pytest.raises(StoreError):
        store.find("c", {})


def test_sqlite_store_persists(tmp_path: Path) -> None:
    path = str(tmp_path / "p.db")
    first = SqliteStore(path)
    first.insert("c", {"_id": "a", "x": [1, 2.5, "s", None, True], "big": 2**53})
    first.insert("c", {"_id": "b"})
    first.delete("c", {"_id": "b"})
    first.close()
    again = SqliteStore(path)
    try:
        assert again.find("c", {}) == [{"_id": "a", "x": [1, 2.5, "s", None, True], "big": 2**53}]
        with pytest.raises(DuplicateIdError):
            again.insert("c", {"_id": "a"})
    finally:
        again.close()


def test_sqlite_store_uses_wal_and_full_sync(tmp_path: Path) -> None:
    import sqlite3

    path = str(tmp_path / "w.db")
    st_ = SqliteStore(path)
    try:
        db = st_._db
        assert db is not None
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        st_.insert("c", {"_id": "x"})
        assert not db.in_transaction  # committed before insert() returned
    finally:
        st_.close()
    with sqlite3.connect(path) as other:
        assert other.execute("SELECT count(*) FROM docs").fetchone()[0] == 1
    other.close()


def test_sqlite_store_refuses_a_bad_path(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        SqliteStore(str(tmp_path / "missing-dir" / "x.db"))
    not_db = tmp_path / "junk.db"
    not_db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError):
        SqliteStore(str(not_db))


_FILTER_VALUES = st.sampled_from([0, 1, 1.0, True, False, None, "", "a", [], [1], {}, {"k": 1}])
_OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("insert"),
            st.sampled_from(["c", "d"]),
            st.dictionaries(
                st.sampled_from(["a", "b", "_id"]),
                _FILTER_VALUES | st.sampled_from(["k1", "k2"]),
                max_size=3,
            ),
        ),
        st.tuples(
            st.sampled_from(["find", "count", "delete"]),
            st.sampled_from(["c", "d"]),
            st.dictionaries(st.sampled_from(["a", "b", "_id"]), _FILTER_VALUES, max_size=2),
        ),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(_OPS)
def test_backends_agree(ops: list[tuple[str, str, dict[str, Any]]]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        mem, sql = MemoryStore(), SqliteStore(f"{d}/m.db")
        try:
            for op, coll, arg in ops:
                results: list[object] = []
                for st_ in (mem, sql):
                    if op == "insert":
                        try:
                            doc_id = st_.insert(coll, dict(arg))
                            results.append(("ok", doc_id if isinstance(arg.get("_id"), str) else 1))
                        except DuplicateIdError:
                            results.append(("dup", None))
                    elif op == "find":
                        docs = st_.find(coll, arg)
                        results.append([{k: v for k, v in x.items() if k != "_id"} for x in docs])
                    elif op == "count":
                        results.append(st_.count(coll, arg))
                    else:
                        results.append(st_.delete(coll, arg))
                assert json_equal(results[0], results[1]) or results[0] == results[1], (op, arg)
        finally:
            mem.close()
            sql.close()


def test_json_equal_and_matches() -> None:
    assert (
        json_equal(1, 1.0) and json_equal(-0.0, 0) and json_equal([1, {"a": 2}], [1.0, {"a": 2.0}])
    )
    assert not json_equal(True, 1) and not json_equal(0, False) and not json_equal(None, False)
    assert not json_equal(2**53 + 1, float(2**53))  # exact, as the suite's model compares
    assert not json_equal({"a": 1}, {"a": 1, "b": 2}) and not json_equal([], {})
    assert matches({"a": 1, "b": 2}, {}) and matches({"a": 1, "b": 2}, {"b": 2.0})
    assert not matches({"a": 1}, {"a": 1, "b": None})


# =========================================================================== connection


def test_connection_answers_in_order_and_ends_at_eof() -> None:
    conn = ServerConnection(MemoryStore())
    out = conn.receive_data(b'{"op":"ping","id":1}\n\n{"op":"ping","id":2}\n{"op":"pi')
    assert [json.loads(x)["id"] for x in out.splitlines()] == [1, 2]
    assert conn.state is ConnState.OPEN and conn.buffered == len(b'{"op":"pi')
    assert conn.receive_data(b'ng","id":3}') == b""
    assert conn.receive_data(b"") == b'{"ok":true,"id":3}\n'  # the last line, at EOF
    assert conn.state is ConnState.EOF and conn.requests == 3
    with pytest.raises(RuntimeError):
        conn.receive_data(b"x")


def test_connection_too_large_after_the_earlier_answers() -> None:
    conn = ServerConnection(MemoryStore(), limit=100)
    out = conn.receive_data(b'{"op":"ping","id":1}\n' + b" " * 101 + b'\n{"op":"ping"}\n')
    assert out == b'{"ok":true,"id":1}\n' + TOO_LARGE_RESPONSE
    assert conn.state is ConnState.TOO_LARGE
    assert json.loads(TOO_LARGE_RESPONSE)["error"] == "too_large"


def test_connection_store_failure_keeps_earlier_acks() -> None:
    class Failing(MemoryStore):
        def insert(self, coll: str, doc: dict[str, Any]) -> str:
            if doc.get("fail"):
                raise StoreError("disk full")
            return super().insert(coll, doc)

    conn = ServerConnection(Failing())
    out = conn.receive_data(
        b'{"op":"insert","coll":"c","doc":{"_id":"a"}}\n'
        b'{"op":"insert","coll":"c","doc":{"fail":1}}\n{"op":"ping"}\n'
    )
    assert out == b'{"ok":true,"_id":"a"}\n'
    assert conn.state is ConnState.FAILED and conn.failure == "disk full"


# =========================================================================== hygiene


def test_protocol_and_store_are_sans_io() -> None:
    for name in ("protocol.py", "store.py"):
        text = (ROOT / "reference_impl/jsondoc" / name).read_text()
        assert "import socket" not in text and "import select" not in text


def test_reference_imports_only_the_standard_library_and_sqlite_lazily() -> None:
    code = (
        "import sys, reference_impl.jsondoc.server, reference_impl.jsondoc.client\n"
        "std = sys.stdlib_module_names\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] not in std\n"
        "             and m.split('.')[0] not in ('reference_impl', '__main__'))\n"
        "print(' '.join(bad) or '-', 'sqlite3' in sys.modules)\n"
    )
    res = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["-", "False"]
