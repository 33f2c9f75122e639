"""The jsondoc protocol as a model: what a correct server answers, without sockets.

Pure code shared by the JSON-* checks and unit-tested on its own:
  * `json_equal`: JSON equality as the contract defines it (numbers by value, 1 == 1.0,
    but true is not 1);
  * request builders and the wire encoding of a request line;
  * response parsing and validators (they return a problem text, or None when fine);
  * `ModelStore`: an in-memory store that judges each response of a valid request and
    then applies it;
  * a catalogue of malformed requests with the error each must get, and hypothesis
    strategies for JSON values, documents, filters and malformed lines.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

Json = Any          # None | bool | int | float | str | list[Json] | dict[str, Json]
Request = dict[str, Any]

LINE_LIMIT = 1048576          # bytes, newline excluded (contract)
MAX_DEPTH = 64                # top-level object = 1
COLL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
ERROR_CODES = ("bad_json", "bad_request", "unknown_op", "duplicate_id", "too_large")
MAX_SAFE_INT = 2 ** 53


class _Missing:
    """Marks an absent member (a request without "id" differs from "id": null)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def trim(data: bytes | str, limit: int = 300) -> str:
    """`data` shown for evidence, cut to about `limit` characters."""
    text = repr(data)
    return text if len(text) <= limit else f"{text[:limit]}…({len(data)} bytes)"


# -- JSON equality ------------------------------------------------------------------------

def _is_number(v: Json) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def json_equal(a: Json, b: Json) -> bool:
    """The contract's JSON equality: numbers by numeric value (1 == 1.0, exactly:
    Python compares int and float without rounding), true/false are not numbers,
    strings exact, arrays elementwise, objects by key set and values."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if _is_number(a) or _is_number(b):
        return _is_number(a) and _is_number(b) and a == b
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return False


def matches(doc: dict[str, Json], flt: dict[str, Json]) -> bool:
    """A document matches a filter when every filter member is in it, JSON-equal."""
    return all(k in doc and json_equal(doc[k], v) for k, v in flt.items())


def depth(v: Json) -> int:
    """Nesting depth: a scalar is 0, every object/array adds 1."""
    if isinstance(v, dict):
        return 1 + max((depth(x) for x in v.values()), default=0)
    if isinstance(v, list):
        return 1 + max((depth(x) for x in v), default=0)
    return 0


# -- requests -----------------------------------------------------------------------------

def _request(op: str, id: Json, **members: Json) -> Request:
    req: Request = {"op": op}
    req.update({k: v for k, v in members.items() if v is not MISSING})
    if id is not MISSING:
        req["id"] = id
    return req


def ping(id: Json = MISSING) -> Request:
    return _request("ping", id)


def insert(coll: str, doc: dict[str, Json], id: Json = MISSING) -> Request:
    return _request("insert", id, coll=coll, doc=doc)


def find(coll: str, filter: dict[str, Json] | Any = MISSING, id: Json = MISSING) -> Request:
    return _request("find", id, coll=coll, filter=filter)


def count(coll: str, filter: dict[str, Json] | Any = MISSING, id: Json = MISSING) -> Request:
    return _request("count", id, coll=coll, filter=filter)


def delete(coll: str, filter: dict[str, Json], id: Json = MISSING) -> Request:
    return _request("delete", id, coll=coll, filter=filter)


def encode(req: Request, *, ascii: bool = True, spaced: bool = False) -> bytes:
    """One request line: strict JSON (no NaN), UTF-8, `\\n`-terminated.  `ascii`
    escapes non-ASCII as \\uXXXX (surrogate pairs beyond the BMP); `spaced` puts
    blanks after separators (both legal; the server must accept either)."""
    seps = (", ", ": ") if spaced else (",", ":")
    text = json.dumps(req, separators=seps, ensure_ascii=ascii, allow_nan=False)
    return text.encode("utf-8") + b"\n"


def valid_coll(name: Json) -> bool:
    return (isinstance(name, str) and 1 <= len(name) <= 64
            and all(c in COLL_CHARS for c in name))


# -- responses ----------------------------------------------------------------------------

def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_response(line: bytes) -> tuple[dict[str, Json] | None, str | None]:
    """A response line (without its newline) as an object, or the problem with it.
    Spacing and key order are free; it must be strict UTF-8 JSON, an object, with a
    boolean "ok"."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"response line is not UTF-8 ({e.reason} at byte {e.start}): {trim(line)}"
    try:
        obj = json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError) as e:
        return None, f"response line is not JSON ({e}): {trim(line)}"
    if not isinstance(obj, dict):
        return None, f"response is not a JSON object: {trim(line)}"
    if not isinstance(obj.get("ok"), bool):
        return None, f'response has no boolean "ok": {trim(line)}'
    return obj, None


def show(v: Json) -> str:
    return trim(json.dumps(v, separators=(",", ":"), ensure_ascii=False), 200)


def check_id(req: Json, resp: dict[str, Json]) -> str | None:
    """The response carries the request's "id" (any JSON value, null included)."""
    if not isinstance(req, dict) or "id" not in req:
        return None
    if "id" not in resp:
        return f'the request had "id":{show(req["id"])} but the response has no "id"'
    if not json_equal(resp["id"], req["id"]):
        return f'the request had "id":{show(req["id"])} but the response has "id":{show(resp["id"])}'
    return None


def check_error(resp: dict[str, Json], code: str | None) -> str | None:
    """An error response: ok false, "error" the code (any known code when `code` is
    None), "message" a string."""
    if resp.get("ok") is not False:
        want = f'"error":"{code}"' if code else "an error"
        return f'expected {{"ok":false,{want},...}}, saw {show(resp)}'
    err = resp.get("error")
    if code is not None and err != code:
        return f'expected "error":"{code}", saw {show(resp)}'
    if code is None and err not in ERROR_CODES:
        return f'expected "error" to be one of {", ".join(ERROR_CODES)}, saw {show(resp)}'
    if not isinstance(resp.get("message"), str):
        return f'error response without a "message" string: {show(resp)}'
    return None


def check_ok(resp: dict[str, Json]) -> str | None:
    if resp.get("ok") is not True:
        return f'expected "ok":true, saw {show(resp)}'
    return None


def count_value(v: Json) -> int | None:
    """A count member as a non-negative integer (2.0 is 2; true is not 1)."""
    if _is_number(v) and float(v).is_integer() and v >= 0:
        return int(v)
    return None


# -- the model store ------------------------------------------------------------------------

class ModelStore:
    """What a correct server holds: documents per collection, in insertion order,
    each with its string `_id`."""

    def __init__(self) -> None:
        self.colls: dict[str, list[dict[str, Json]]] = {}

    def docs(self, coll: str) -> list[dict[str, Json]]:
        return self.colls.get(coll, [])

    def ids(self, coll: str) -> set[str]:
        return {d["_id"] for d in self.docs(coll)}

    def matching(self, coll: str, flt: dict[str, Json] | None) -> list[dict[str, Json]]:
        return [d for d in self.docs(coll) if matches(d, flt or {})]

    def apply(self, req: Request, resp: dict[str, Json]) -> str | None:
        """Judge the response to a valid request `req`, then apply `req` (as the
        server must have).  Returns the problem, or None."""
        problem = check_id(req, resp)
        if problem:
            return problem
        op = req["op"]
        if op == "ping":
            return check_ok(resp)
        if op == "insert":
            return self._insert(req["coll"], req["doc"], resp)
        flt = req.get("filter")
        if op == "find":
            return self._find(req["coll"], flt, resp)
        if op == "count":
            want = len(self.matching(req["coll"], flt))
            got = count_value(resp.get("count")) if resp.get("ok") is True else None
            if got != want:
                return f'expected {{"ok":true,"count":{want}}}, saw {show(resp)}'
            return None
        if op == "delete":
            gone = self.matching(req["coll"], flt)
            got = count_value(resp.get("deleted")) if resp.get("ok") is True else None
            if got != len(gone):
                return f'expected {{"ok":true,"deleted":{len(gone)}}}, saw {show(resp)}'
            self.colls[req["coll"]] = [d for d in self.docs(req["coll"])
                                       if not matches(d, flt or {})]
            return None
        raise ValueError(f"the model applies valid requests only, not op {op!r}")

    def _insert(self, coll: str, doc: dict[str, Json], resp: dict[str, Json]) -> str | None:
        given = doc.get("_id")
        existing = self.ids(coll)
        if isinstance(given, str) and given in existing:
            return check_error(resp, "duplicate_id")
        if resp.get("ok") is not True:
            return f'expected {{"ok":true,"_id":...}}, saw {show(resp)}'
        got = resp.get("_id")
        if isinstance(given, str):
            if got != given:
                return f'the doc has "_id":{show(given)}; expected it back, saw {show(resp)}'
        elif not isinstance(got, str):
            return f'expected a server-assigned string "_id", saw {show(resp)}'
        elif got in existing:
            return f'the server assigned "_id":{show(got)}, already used in {coll!r}'
        stored = copy.deepcopy(doc)
        stored["_id"] = got
        self.colls.setdefault(coll, []).append(stored)
        return None

    def _find(self, coll: str, flt: dict[str, Json] | None, resp: dict[str, Json]) -> str | None:
        want = self.matching(coll, flt)
        docs = resp.get("docs")
        if resp.get("ok") is not True or not isinstance(docs, list):
            return f'expected {{"ok":true,"docs":[{len(want)} doc(s)]}}, saw {show(resp)}'
        return compare_docs(want, docs)


def compare_docs(want: list[dict[str, Json]], got: list[Json]) -> str | None:
    """`got` holds exactly the documents `want`, in that order (JSON equality)."""
    for i, (w, g) in enumerate(zip(want, got, strict=False)):
        if not json_equal(w, g):
            return f"docs[{i}]: expected {show(w)}, saw {show(g)}"
    if len(got) != len(want):
        extra = got[len(want):] or want[len(got):]
        what = "more" if len(got) > len(want) else "fewer"
        return (f"expected {len(want)} doc(s), saw {len(got)} ({what}; first difference "
                f"{show(extra[0])})")
    return None


# -- the request oracle ----------------------------------------------------------------------

def _lone_surrogate(v: Json) -> bool:
    # Python's json joins escaped surrogate pairs; what is left alone stays a surrogate.
    if isinstance(v, str):
        return any("\ud800" <= c <= "\udfff" for c in v)
    if isinstance(v, list):
        return any(_lone_surrogate(x) for x in v)
    if isinstance(v, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(x) for k, x in v.items())
    return False


def _overflow(v: Json) -> bool:
    if isinstance(v, float):
        return v in (float("inf"), float("-inf"))
    if isinstance(v, list):
        return any(_overflow(x) for x in v)
    if isinstance(v, dict):
        return any(_overflow(x) for x in v.values())
    return False


def classify(line: bytes) -> tuple[str | None, Json]:
    """The error code the contract gives a request line (None: a valid request), and
    the id its response must carry (MISSING: none).  The suite's own oracle: the
    malformed catalogue and strategies are unit-tested against it."""
    try:
        obj = json.loads(line.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "bad_json", MISSING
    if _lone_surrogate(obj) or _overflow(obj) or depth(obj) > MAX_DEPTH:
        return "bad_json", MISSING
    if not isinstance(obj, dict):
        return "bad_request", MISSING
    rid = _id_of(obj)
    op = obj.get("op")
    if not isinstance(op, str):
        return "bad_request", rid
    if op not in ("ping", "insert", "find", "count", "delete"):
        return "unknown_op", rid
    if op == "ping":
        return None, rid
    if not valid_coll(obj.get("coll")):
        return "bad_request", rid
    if op == "insert" and not isinstance(obj.get("doc"), dict):
        return "bad_request", rid
    if op in ("find", "count") and "filter" in obj and not isinstance(obj["filter"], dict):
        return "bad_request", rid
    if op == "delete" and not isinstance(obj.get("filter"), dict):
        return "bad_request", rid
    return None, rid


# -- malformed requests ---------------------------------------------------------------------

@dataclass(frozen=True)
class Malformed:
    """A request line (without newline) that must get error `code`; `id` is what the
    response must echo (MISSING: none expected)."""

    kind: str
    line: bytes
    code: str
    id: Json = MISSING

    def describe(self) -> str:
        return f"{self.kind} {trim(self.line, 200)}"


def _line(req: Json) -> bytes:
    return encode(req)[:-1]


def malformed_catalogue(coll: str) -> list[Malformed]:
    """One of each malformed kind, aimed at collection `coll` where that makes a
    lenient server change state (insert of a half-valid doc, delete without filter)."""
    ins = f'{{"op":"insert","coll":"{coll}","doc":{{"a":1,"s":"X"}}'   # no closing brace
    bj: list[tuple[str, bytes]] = [
        ("truncated JSON", ins.encode()),
        ("truncated JSON (in a string)", b'{"op":"ping","id":"ab'),
        ("empty object unterminated", b"{"),
        ("invalid UTF-8 (0xff)", ins.replace("X", "\xff").encode("latin-1") + b"}"),
        ("invalid UTF-8 (lone continuation byte)", ins.encode().replace(b"X", b"\x80") + b"}"),
        ("invalid UTF-8 (truncated sequence)", ins.encode().replace(b"X", b"\xe2\x82") + b"}"),
        ("overlong UTF-8 ('/' as C0 AF)", ins.encode().replace(b"X", b"\xc0\xaf") + b"}"),
        ("overlong UTF-8 (3-byte NUL)", ins.encode().replace(b"X", b"\xe0\x80\x80") + b"}"),
        ("UTF-8 encoded surrogate (ED A0 80)", ins.encode().replace(b"X", b"\xed\xa0\x80") + b"}"),
        ("UTF-8 beyond U+10FFFF", ins.encode().replace(b"X", b"\xf4\x90\x80\x80") + b"}"),
        ("lone high surrogate escape", ins.replace("X", "\\ud800").encode() + b"}"),
        ("lone low surrogate escape", ins.replace("X", "\\udc00").encode() + b"}"),
        ("high surrogate escape + non-surrogate",
         ins.replace("X", "\\ud800\\u0041").encode() + b"}"),
        ("NaN", f'{{"op":"insert","coll":"{coll}","doc":{{"a":NaN}}}}'.encode()),
        ("Infinity", f'{{"op":"insert","coll":"{coll}","doc":{{"a":Infinity}}}}'.encode()),
        ("-Infinity", f'{{"op":"insert","coll":"{coll}","doc":{{"a":-Infinity}}}}'.encode()),
        ("number overflowing a double (1e400)",
         f'{{"op":"insert","coll":"{coll}","doc":{{"a":1e400}}}}'.encode()),
        ("trailing garbage", (ins + "} x").encode()),
        ("two objects on one line", (ins + '}{"op":"ping"}').encode()),
        ("trailing comma", f'{{"op":"insert","coll":"{coll}","doc":{{"a":1,}}}}'.encode()),
        ("single quotes", f"{{'op':'insert','coll':'{coll}','doc':{{}}}}".encode()),
        ("comment", f'{{"op":"insert","coll":"{coll}",/*c*/"doc":{{}}}}'.encode()),
        ("leading zero", f'{{"op":"insert","coll":"{coll}","doc":{{"a":01}}}}'.encode()),
        ("raw control character in a string", ins.encode().replace(b"X", b"\x01") + b"}"),
        ("raw tab in a string", ins.encode().replace(b"X", b"\t") + b"}"),
        ("not JSON at all", b"hello"),
    ]
    out = [Malformed(kind, line, "bad_json") for kind, line in bj]
    # Valid JSON, not a request.  Half carry an "id" of various types, echoed back.
    br: list[tuple[str, Json]] = [
        ("not an object (array)", [{"op": "ping"}]),
        ("not an object (string)", "ping"),
        ("not an object (number)", 42),
        ("not an object (null)", None),
        ("op missing", {"coll": coll, "filter": {}}),
        ("op not a string (number)", {"op": 1, "id": 7}),
        ("op not a string (null)", {"op": None}),
        ("op not a string (array)", {"op": ["ping"], "id": "q"}),
        ("coll missing", {"op": "count", "id": [1, 2]}),
        ("coll empty", {"op": "insert", "coll": "", "doc": {}}),
        ("coll too long (65)", {"op": "insert", "coll": "c" * 65, "doc": {}, "id": None}),
        ("coll with a space", {"op": "insert", "coll": "a b", "doc": {}}),
        ("coll with a slash", {"op": "find", "coll": "a/b", "id": {"k": "v"}}),
        ("coll with non-ASCII", {"op": "count", "coll": "caf\u00e9"}),
        ("coll not a string", {"op": "insert", "coll": 5, "doc": {}, "id": 2.5}),
        ("coll null", {"op": "count", "coll": None}),
        ("doc missing", {"op": "insert", "coll": coll, "id": True}),
        ("doc not an object (array)", {"op": "insert", "coll": coll, "doc": [{"a": 1}]}),
        ("doc not an object (string)", {"op": "insert", "coll": coll, "doc": "x", "id": "d"}),
        ("doc null", {"op": "insert", "coll": coll, "doc": None}),
        ("find filter not an object", {"op": "find", "coll": coll, "filter": [], "id": 0}),
        ("count filter not an object", {"op": "count", "coll": coll, "filter": "a"}),
        ("delete filter not an object", {"op": "delete", "coll": coll, "filter": 1, "id": -1}),
        ("delete filter null", {"op": "delete", "coll": coll, "filter": None}),
        ("delete without filter", {"op": "delete", "coll": coll, "id": "del"}),
    ]
    for kind, req in br:
        out.append(Malformed(kind, _line(req), "bad_request", _id_of(req)))
    uo: list[tuple[str, Json]] = [
        ("unknown op", {"op": "drop", "coll": coll, "id": 3}),
        ("unknown op (case)", {"op": "PING"}),
        ("unknown op (empty)", {"op": "", "id": "e"}),
        ("unknown op (trailing space)", {"op": "ping ", "id": 4}),
    ]
    for kind, req in uo:
        out.append(Malformed(kind, _line(req), "unknown_op", _id_of(req)))
    return out


def _id_of(req: Json) -> Json:
    return req["id"] if isinstance(req, dict) and "id" in req else MISSING


def nested_insert(coll: str, total_depth: int, *, arrays: bool = False) -> bytes:
    """An insert line whose nesting depth is exactly `total_depth` (>= 2): the request
    object is 1, the doc 2, then objects {"a":...} or arrays [...] down to the limit."""
    inner = total_depth - 2
    if arrays:
        body = "[" * inner + "1" + "]" * inner
        doc = f'{{"deep":{body}}}' if inner else '{"deep":1}'
    else:
        doc = '{"a":' * inner + "1" + "}" * inner
        doc = f'{{"deep":{doc}}}' if inner else '{"deep":1}'
    return f'{{"op":"insert","coll":"{coll}","doc":{doc}}}'.encode()


def padded_ping(length: int, id: int) -> bytes:
    """A valid ping line of exactly `length` bytes (newline excluded): blanks
    between tokens, which JSON allows anywhere."""
    head, tail = f'{{"op":"ping","id":{id}', "}"
    pad = length - len(head) - len(tail)
    if pad < 0:
        raise ValueError("too short for a ping")
    return head.encode() + b" " * pad + tail.encode()


# -- hypothesis strategies ----------------------------------------------------------------------

# Strings the contract promises to round-trip: no U+0000, no lone surrogates.
TEXT_CHARS = st.characters(codec="utf-8", exclude_characters="\x00")
texts = st.text(TEXT_CHARS, max_size=8)
# A small pool of values and keys makes documents share members, so filters match
# several documents (deletes of many, find order) and the 1/1.0/true traps meet.
POOL: tuple[Json, ...] = (0, 1, 1.0, -1, 2, True, False, None, "", "a", "1", [], {}, [1],
                          {"k": 1})
KEYS = st.one_of(st.sampled_from(["a", "b", "c", "n", "_id"]), texts)


def _finite_floats() -> st.SearchStrategy[float]:
    return st.floats(allow_nan=False, allow_infinity=False)


scalars: st.SearchStrategy[Json] = st.one_of(
    st.none(), st.booleans(), st.integers(-MAX_SAFE_INT, MAX_SAFE_INT), _finite_floats(), texts,
    st.sampled_from(POOL))

json_values: st.SearchStrategy[Json] = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(KEYS.filter(lambda k: k != "_id"), inner,
                                            max_size=3)),
    max_leaves=6)

member_values: st.SearchStrategy[Json] = st.one_of(st.sampled_from(POOL), json_values)


def documents(ids: st.SearchStrategy[Json] | None = None) -> st.SearchStrategy[dict[str, Json]]:
    """Documents; `_id` (when drawn) comes from `ids` (strings from a small pool, so
    duplicates happen, or non-string values the server replaces)."""
    body = st.dictionaries(KEYS.filter(lambda k: k != "_id"), member_values, max_size=4)
    if ids is None:
        return body
    return st.tuples(body, ids).map(lambda t: {**t[0], "_id": t[1]} if t[1] is not MISSING
                                    else t[0])


def twist(v: Json) -> list[Json]:
    """Values a filter may use in place of `v`: itself, and the traps around it
    (1 <-> 1.0 match; true <-> 1 must not)."""
    out: list[Json] = [v]
    if isinstance(v, bool):
        out.append(int(v))
    elif isinstance(v, int):
        out.append(float(v))
        if v in (0, 1):
            out.append(bool(v))
    elif isinstance(v, float) and v.is_integer() and abs(v) <= MAX_SAFE_INT:
        out.append(int(v))
    elif isinstance(v, list) and v:
        out.append([twist(v[0])[-1], *v[1:]])
    return out


def filter_from(data: st.DataObject, docs: list[dict[str, Json]]) -> dict[str, Json]:
    """A filter drawn from existing documents' members (so it matches something,
    or is a near miss), or from random members, or {}."""
    kind = data.draw(st.sampled_from(["doc", "doc", "random", "empty"]), label="filter kind")
    if kind == "empty" or (kind == "doc" and not docs):
        return {}
    if kind == "random":
        return data.draw(st.dictionaries(KEYS, member_values, min_size=1, max_size=2),
                         label="filter")
    doc = data.draw(st.sampled_from(docs), label="filter source doc")
    if not doc:
        return {}
    keys = data.draw(st.lists(st.sampled_from(sorted(doc)), min_size=1, max_size=3,
                              unique=True), label="filter keys")
    return {k: data.draw(st.sampled_from(twist(doc[k])), label=f"filter[{k!r}]") for k in keys}


def request_ids() -> st.SearchStrategy[Json]:
    """Request ids of any JSON type (absent too)."""
    return st.one_of(st.just(MISSING), st.integers(-1000, 1000), texts, st.none(),
                     st.booleans(), st.floats(-1e6, 1e6, allow_nan=False), json_values)


@st.composite
def malformed_lines(draw: st.DrawFn, coll: str) -> Malformed:
    """A malformed line built around a random valid request aimed at `coll` (so a
    lenient server that stores it changes visible state)."""
    doc = draw(documents(), label="doc")
    rid = draw(request_ids(), label="id")
    req = insert(coll, doc, rid)
    good = _line(req)
    how = draw(st.sampled_from(["truncate", "byte", "constant", "garbage", "catalogue",
                                "not object", "bad member"]), label="how")
    if how == "truncate":
        cut = draw(st.integers(1, len(good) - 1), label="cut")
        return Malformed("truncated JSON", good[:cut], "bad_json")
    if how == "byte":
        bad = draw(st.sampled_from([b"\xff", b"\xfe", b"\x80", b"\xc0\xaf", b"\xe0\x80\x80",
                                    b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82",
                                    b"\x01", b"\x1f"]), label="bad bytes")
        body = f'{{"op":"insert","coll":"{coll}","doc":{{"s":"'.encode() + bad + b'"}}'
        return Malformed("invalid bytes in a string", body, "bad_json")
    if how == "constant":
        const = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400",
                                      '"\\ud800"', '"\\udfff"', "01", "+1", ".5", "1.",
                                      "tru", "nul", "'x'"]), label="constant")
        return Malformed(f"bad value {const}",
                         f'{{"op":"insert","coll":"{coll}","doc":{{"v":{const}}}}}'.encode(),
                         "bad_json")
    if how == "garbage":
        junk = draw(st.sampled_from([b" x", b"}", b",", b"{}", b"[]", b"1", b'"a"', b" //"]),
                    label="garbage")
        return Malformed("trailing garbage", good + junk, "bad_json")
    if how == "catalogue":
        return draw(st.sampled_from(malformed_catalogue(coll)), label="catalogue entry")
    if how == "not object":
        top = draw(st.one_of(st.lists(json_values, max_size=3), scalars), label="top")
        return Malformed("not an object", _line(top), "bad_request")
    broken = dict(req)
    member = draw(st.sampled_from(["op", "coll", "doc"]), label="member")
    if member == "op" and draw(st.booleans(), label="unknown op"):
        broken["op"] = draw(st.sampled_from(["inserts", "INSERT", "get", "", "ping\t"]),
                            label="op")
        return Malformed("unknown op", _line(broken), "unknown_op", _id_of(broken))
    bad_values: list[Json] = [None, 1, [], True]
    if member == "coll":
        bad_values += ["", "x" * 65, "a b", "a:b", "\u00e9", {"x": 1}]
    elif member == "doc":
        bad_values += ["doc", [{}]]
    else:
        bad_values += [{"x": 1}]
    value = draw(st.sampled_from([MISSING, *bad_values]), label="bad value")
    if value is MISSING:
        del broken[member]
    else:
        broken[member] = value
    return Malformed(f"{member} {'missing' if value is MISSING else 'ill-typed'}",
                     _line(broken), "bad_request", _id_of(broken))


def is_blank(line: bytes) -> bool:
    """Whitespace-only lines (spaces, tabs, CR) get no response."""
    return line.strip(b" \t\r") == b""

