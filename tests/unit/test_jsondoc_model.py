"""Unit tests of the jsondoc model: equality, the model store, validators, the
malformed-request catalogue and strategies (no sockets)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance.checks import jsondoc_model as m

# -- json_equal ------------------------------------------------------------------------------

@pytest.mark.parametrize(("a", "b"), [
    (1, 1.0), (0, -0.0), (2 ** 53, float(2 ** 53)), (True, True), (None, None), ("é", "é"),
    ([1, [2.0]], [1.0, [2]]), ({"a": 1, "b": [True]}, {"b": [True], "a": 1.0}), ({}, {}),
])
def test_json_equal(a: m.Json, b: m.Json) -> None:
    assert m.json_equal(a, b) and m.json_equal(b, a)


@pytest.mark.parametrize(("a", "b"), [
    (True, 1), (False, 0), (1.0, True), (None, 0), (None, False), ("1", 1), ([1], [1, 1]),
    ({"a": 1}, {"a": 1, "b": None}), ({"a": 1}, {"b": 1}), ([], {}), (2 ** 53 + 1, float(2 ** 53)),
    ("a", "A"), (0.1, 0.1000000000000001),
])
def test_json_unequal(a: m.Json, b: m.Json) -> None:
    assert not m.json_equal(a, b) and not m.json_equal(b, a)


@given(m.json_values)
def test_json_equal_reflexive_and_survives_the_wire(v: m.Json) -> None:
    assert m.json_equal(v, v)
    assert m.json_equal(json.loads(json.dumps(v, ensure_ascii=False)), v)


def test_matches() -> None:
    doc = {"_id": "x", "a": 1, "b": {"c": [1, 2]}, "t": True}
    assert m.matches(doc, {})
    assert m.matches(doc, {"a": 1.0, "b": {"c": [1.0, 2]}})
    assert not m.matches(doc, {"t": 1})
    assert not m.matches(doc, {"a": True})
    assert not m.matches(doc, {"missing": None})
    assert not m.matches(doc, {"b": {"c": [1, 2], "d": 1}})


def test_depth() -> None:
    assert m.depth(1) == 0
    assert m.depth({}) == 1
    assert m.depth({"a": [1, {"b": []}]}) == 4


# -- requests ------------------------------------------------------------------------------

def test_builders_and_encoding() -> None:
    assert m.ping() == {"op": "ping"}
    assert m.ping(None) == {"op": "ping", "id": None}
    assert m.find("c") == {"op": "find", "coll": "c"}
    assert m.count("c", {"a": 1}, id=3) == {"op": "count", "coll": "c", "filter": {"a": 1},
                                            "id": 3}
    line = m.encode(m.insert("c", {"s": "é😀"}), ascii=True)
    assert line.endswith(b"\n") and b"\n" not in line[:-1] and line.isascii()
    assert b"\\ud83d\\ude00" in line
    raw = m.encode(m.insert("c", {"s": "é"}), ascii=False, spaced=True)
    assert "é".encode() in raw and b", " in raw
    with pytest.raises(ValueError):
        m.encode(m.insert("c", {"x": float("nan")}))


def test_valid_coll() -> None:
    assert m.valid_coll("a") and m.valid_coll("A.b-c_9") and m.valid_coll("x" * 64)
    for bad in ("", "x" * 65, "a b", "a/b", "é", 5, None):
        assert not m.valid_coll(bad)


def test_padded_ping_and_nested_insert() -> None:
    line = m.padded_ping(1000, 7)
    assert len(line) == 1000 and json.loads(line) == {"op": "ping", "id": 7}
    for d in (2, 3, 64, 65):
        for arrays in (False, True):
            obj = json.loads(m.nested_insert("c", d, arrays=arrays))
            assert m.depth(obj) == d
            assert m.classify(m.nested_insert("c", d, arrays=arrays))[0] == (
                None if d <= 64 else "bad_json")
    assert m.classify(m.nested_insert("c", 100000, arrays=True))[0] == "bad_json"


# -- responses ----------------------------------------------------------------------------

def test_parse_response() -> None:
    obj, problem = m.parse_response(b'{ "id" : 1 , "ok" : true }\r')
    assert problem is None and obj == {"ok": True, "id": 1}
    for bad in (b"\xff", b"[1]", b'{"ok":1}', b'{"ok":NaN}', b"{", b'{"id":1}'):
        obj, problem = m.parse_response(bad)
        assert obj is None and problem


def test_check_id() -> None:
    assert m.check_id({"op": "ping"}, {"ok": True}) is None
    assert m.check_id({"op": "ping", "id": None}, {"ok": True, "id": None}) is None
    assert m.check_id({"op": "ping", "id": None}, {"ok": True})
    assert m.check_id({"op": "ping", "id": 1}, {"ok": True, "id": 1.0}) is None
    assert m.check_id({"op": "ping", "id": 1}, {"ok": True, "id": True})
    assert m.check_id({"op": "ping", "id": {"a": [1]}}, {"ok": True, "id": {"a": [1]}}) is None


def test_check_error() -> None:
    assert m.check_error({"ok": False, "error": "bad_json", "message": "x"}, "bad_json") is None
    assert m.check_error({"ok": False, "error": "too_large", "message": ""}, None) is None
    assert m.check_error({"ok": False, "error": "bad_json", "message": "x"}, "bad_request")
    assert m.check_error({"ok": False, "error": "bad_json"}, "bad_json")
    assert m.check_error({"ok": True}, "bad_json")
    assert m.check_error({"ok": False, "error": "oops", "message": "x"}, None)


# -- the model store -----------------------------------------------------------------------

def test_model_store_scenario() -> None:
    s = m.ModelStore()
    assert s.apply(m.ping(5), {"ok": True, "id": 5}) is None
    assert s.apply(m.ping(5), {"ok": True}) is not None
    assert s.apply(m.insert("c", {"a": 1}), {"ok": True, "_id": "s1"}) is None
    assert s.apply(m.insert("c", {"a": 1.0, "_id": "k"}), {"ok": True, "_id": "k"}) is None
    assert s.apply(m.insert("c", {"a": True, "_id": 9}), {"ok": True, "_id": "s2"}) is None
    # duplicate string _id, also against a server-assigned one
    assert s.apply(m.insert("c", {"_id": "k"}),
                   {"ok": False, "error": "duplicate_id", "message": "dup"}) is None
    assert s.apply(m.insert("c", {"_id": "s1"}), {"ok": True, "_id": "s1"}) is not None
    # an assigned id that is already used, or not a string
    assert s.apply(m.insert("c", {}), {"ok": True, "_id": "k"}) is not None
    assert s.apply(m.insert("c", {}), {"ok": True, "_id": 3}) is not None
    assert [d["_id"] for d in s.docs("c")] == ["s1", "k", "s2"]
    assert s.docs("c")[2] == {"a": True, "_id": "s2"}
    want = [{"a": 1, "_id": "s1"}, {"a": 1.0, "_id": "k"}]
    assert s.apply(m.find("c", {"a": 1}), {"ok": True, "docs": want}) is None
    assert s.apply(m.find("c", {"a": 1}), {"ok": True, "docs": want[::-1]}) is not None
    assert s.apply(m.find("c", {"a": 1}), {"ok": True, "docs": want[:1]}) is not None
    assert s.apply(m.find("nope"), {"ok": True, "docs": []}) is None
    assert s.apply(m.count("c", {"a": True}), {"ok": True, "count": 1}) is None
    assert s.apply(m.count("c"), {"ok": True, "count": 3.0}) is None
    assert s.apply(m.count("c"), {"ok": True, "count": True}) is not None
    assert s.apply(m.delete("c", {"a": 1}), {"ok": True, "deleted": 1}) is not None
    assert s.apply(m.delete("c", {"a": 1}), {"ok": True, "deleted": 2}) is None
    assert [d["_id"] for d in s.docs("c")] == ["s2"]
    # a deleted id may be assigned again
    assert s.apply(m.insert("c", {}), {"ok": True, "_id": "s1"}) is None
    assert s.apply(m.delete("c", {}), {"ok": True, "deleted": 2}) is None
    assert s.docs("c") == []


def test_model_store_copies_docs() -> None:
    s = m.ModelStore()
    doc: dict[str, m.Json] = {"a": [1]}
    assert s.apply(m.insert("c", doc), {"ok": True, "_id": "x"}) is None
    doc["a"].append(2)
    assert s.docs("c") == [{"a": [1], "_id": "x"}]


# -- malformed requests and the oracle ---------------------------------------------------------

def test_classify_valid_requests() -> None:
    for req in (m.ping(), m.ping({"x": None}), m.insert("c", {}), m.find("c"),
                m.find("c", {"a": 1}), m.count("c", {}), m.delete("c", {}, id="d")):
        code, rid = m.classify(m.encode(req)[:-1])
        assert code is None and rid == req.get("id", m.MISSING)
    # duplicate names: the last one wins (a valid ping)
    assert m.classify(b'{"op":"drop","op":"ping"}')[0] is None


def test_catalogue_agrees_with_the_oracle() -> None:
    cat = m.malformed_catalogue("seed")
    assert len({c.kind for c in cat}) == len(cat)
    for c in cat:
        assert b"\n" not in c.line and not m.is_blank(c.line), c.kind
        code, rid = m.classify(c.line)
        assert code == c.code, c.kind
        assert (rid is m.MISSING) == (c.id is m.MISSING) and m.json_equal(rid, c.id) or \
            rid is c.id is m.MISSING, c.kind
    assert {c.code for c in cat} == {"bad_json", "bad_request", "unknown_op"}


@settings(max_examples=300)
@given(st.data())
def test_malformed_lines_agree_with_the_oracle(data: st.DataObject) -> None:
    mal = data.draw(m.malformed_lines("seed"))
    assert b"\n" not in mal.line and not m.is_blank(mal.line)
    code, rid = m.classify(mal.line)
    assert code == mal.code, mal
    if rid is m.MISSING:
        assert mal.id is m.MISSING
    else:
        assert m.json_equal(rid, mal.id)


@given(m.documents(st.one_of(st.just(m.MISSING), st.sampled_from(["k1", "k2"]), st.integers())))
def test_documents_are_valid_insert_payloads(doc: dict[str, m.Json]) -> None:
    line = m.encode(m.insert("c", doc), ascii=False)[:-1]
    assert m.classify(line) == (None, m.MISSING)
    assert "\x00" not in line.decode()


@given(st.data(), st.lists(m.documents(), min_size=1, max_size=4))
def test_filters_from_docs(data: st.DataObject, docs: list[dict[str, m.Json]]) -> None:
    flt = m.filter_from(data, docs)
    assert isinstance(flt, dict)
    assert m.classify(m.encode(m.find("c", flt))[:-1])[0] is None


def test_twist_traps() -> None:
    assert m.twist(1) == [1, 1.0, True]
    assert m.twist(True) == [True, 1]
    assert m.twist(2.0) == [2.0, 2]
    assert m.twist([1, 2]) == [[1, 2], [True, 2]]


def test_is_blank() -> None:
    assert m.is_blank(b"") and m.is_blank(b" \t\r ")
    assert not m.is_blank(b" x ") and not m.is_blank(b"\x0b")


def test_trim() -> None:
    assert m.trim(b"abc") == "b'abc'"
    long = m.trim(b"x" * 1000, 50)
    assert len(long) < 80 and "1000 bytes" in long
