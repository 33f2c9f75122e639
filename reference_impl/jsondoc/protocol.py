"""The JSONDOC protocol, sans-IO: no sockets here, only bytes, values and a store.

Three layers, each usable alone:

* Framing (``LineBuffer``): bytes in, complete request lines out.  A line ends at
  ``\\n`` (not included; a ``\\r`` before it is left to the JSON parser, which
  treats it as whitespace).  Lines of spaces, tabs and ``\\r`` only are dropped: they
  get no response.  A line longer than ``MAX_LINE`` bytes (newline excluded) sets
  ``too_large`` as soon as the buffered part exceeds the limit, so a connection
  never buffers more than the limit plus one received chunk.

* Strict parsing (``parse_json``): one line -> a JSON value, or ``BadJson``.  RFC
  8259 only: strict UTF-8, no NaN/Infinity, no lone surrogate escapes, no number
  that overflows a double, no trailing garbage, nesting of at most ``MAX_DEPTH``
  levels (checked on the bytes *before* the recursive parser runs, so deep input
  can never raise RecursionError).  Duplicate member names: the last one wins.

* Dispatch (``dispatch``/``respond``): a decoded request -> a response object, run
  against a ``Store``.  If the request is an object with an ``id`` member, the
  response carries the same value, error responses included.

``ServerConnection`` ties the three together for one connection: feed it what
``recv`` returned, send back what it returns, and look at ``state`` to know how
the connection must end.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable
from typing import Any

from reference_impl.jsondoc.store import DuplicateIdError, Store, StoreError

MAX_LINE = 1 << 20  # bytes per request line, newline excluded
MAX_DEPTH = 64  # the top-level object is depth 1

BAD_JSON = "bad_json"
BAD_REQUEST = "bad_request"
UNKNOWN_OP = "unknown_op"
DUPLICATE_ID = "duplicate_id"
TOO_LARGE = "too_large"
ERROR_CODES = (BAD_JSON, BAD_REQUEST, UNKNOWN_OP, DUPLICATE_ID, TOO_LARGE)

_BLANK = b" \t\r"

# --------------------------------------------------------------------------- framing


class LineBuffer:
    """Splits a byte stream into request lines (blank lines dropped).

    ``feed(data)`` returns the complete non-blank lines ``data`` finished, in order.
    Once a line exceeds ``limit`` bytes, ``too_large`` is True, the lines before
    it have been returned, and everything after it is discarded.  ``feed_eof()``
    returns the final unterminated line, if it is not blank.
    """

    __slots__ = ("limit", "too_large", "eof", "_pieces", "_size")

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self.too_large = False
        self.eof = False
        # The unterminated line, as received pieces: joined once, when it ends, so a
        # line trickling in small chunks costs linear time, not quadratic.
        self._pieces: list[bytes] = []
        self._size = 0

    @property
    def buffered(self) -> int:
        """Bytes of the unterminated line held (for the memory bound)."""
        return self._size

    def feed(self, data: bytes) -> list[bytes]:
        if self.eof:
            raise RuntimeError("feed() after feed_eof()")
        if self.too_large or not data:
            return []
        if b"\n" not in data:
            self._pieces.append(data)
            self._size += len(data)
            if self._size > self.limit:
                self._overflow()
            return []
        if self._pieces:
            self._pieces.append(data)
            data = b"".join(self._pieces)
        parts = data.split(b"\n")
        tail = parts.pop()
        self._pieces = [tail] if tail else []
        self._size = len(tail)
        lines: list[bytes] = []
        limit = self.limit
        for line in parts:
            if len(line) > limit:
                self._overflow()
                return lines
            if line.strip(_BLANK):
                lines.append(line)
        if self._size > limit:
            self._overflow()
        return lines

    def feed_eof(self) -> list[bytes]:
        """The peer's end of stream: the last unterminated line (answered too)."""
        self.eof = True
        tail = b"".join(self._pieces)
        self._pieces, self._size = [], 0
        if self.too_large or not tail.strip(_BLANK):
            return []
        return [tail]

    def _overflow(self) -> None:
        self.too_large = True
        self._pieces, self._size = [], 0


# --------------------------------------------------------------------------- parsing


class BadJson(ValueError):
    """The line is not strict JSON (the message says why)."""


# A JSON string, or an unterminated one running to the end of the line.  It always
# matches once it starts at a quote, so scanning is linear even for adversarial input.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_BRACKETS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def exceeds_depth(line: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether ``line`` nests objects/arrays deeper than ``limit`` levels.

    Input whose brackets do not balance also returns True once it has more than
    ``limit`` of them (it is not JSON anyway).  Brackets inside strings do not
    count.  Linear passes over the bytes, no recursion: after the strings are cut
    out and the brackets mapped to ``(``/``)``, each ``replace(b"()", b"")`` pass
    removes exactly the innermost pairs, so a balanced text empties after as many
    passes as it is deep.
    """
    if line.count(b"[") + line.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", line).translate(_BRACKETS, _NOT_BRACKETS)
    for _ in range(limit):
        if not brackets:
            return False
        shorter = brackets.replace(b"()", b"")
        if len(shorter) == len(brackets):
            return True  # no innermost pair left: unbalanced
        brackets = shorter
    return bool(brackets)


_DOUBLE_MAX_DIGITS = 309  # digits of the largest finite double, 1.797...e308
_DOUBLE_MAX = 1.7976931348623157e308
_INF = float("inf")


def _parse_float(text: str) -> float:
    value = float(text)
    if value == _INF or value == -_INF:
        raise BadJson(f"number out of range: {text[:40]}")
    return value


def _parse_int(text: str) -> int:
    if len(text) < _DOUBLE_MAX_DIGITS:
        return int(text)
    digits = len(text) - (text[0] == "-")
    if digits > _DOUBLE_MAX_DIGITS or abs(int(text)) > _DOUBLE_MAX:
        raise BadJson(f"number out of range: {text[:40]}...")
    return int(text)


def _reject_constant(name: str) -> None:
    raise BadJson(f"{name} is not JSON")


_decode = json.JSONDecoder(
    parse_float=_parse_float, parse_int=_parse_int, parse_constant=_reject_constant
).decode
_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_lone_surrogate(value: object) -> bool:
    """Whether a decoded string or member name holds a surrogate code point.

    Valid pairs were combined by the decoder, so any surrogate left came from a
    lone ``\\ud800``-style escape (raw surrogate bytes fail UTF-8 decoding).
    """
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str:
            assert isinstance(item, str)
            if _SURROGATE.search(item):
                return True
        elif kind is dict:
            assert isinstance(item, dict)
            for key, member in item.items():
                if _SURROGATE.search(key):
                    return True
                stack.append(member)
        elif kind is list:
            assert isinstance(item, list)
            stack.extend(item)
    return False


def parse_json(line: bytes) -> Any:
    """Decode one request line strictly; raises ``BadJson``."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadJson(f"invalid UTF-8 at byte {exc.start}") from None
    if exceeds_depth(line):
        raise BadJson(f"nested deeper than {MAX_DEPTH} levels")
    try:
        value = _decode(text)
    except BadJson:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise BadJson(str(exc)) from None
    if "\\u" in text and _has_lone_surrogate(value):
        raise BadJson("lone surrogate escape in a string")
    return value


# --------------------------------------------------------------------------- dispatch


class RequestError(Exception):
    """A request that gets an error response (code in ERROR_CODES)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error_response(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": code, "message": message}


_COLL = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _coll(request: dict[str, Any]) -> str:
    coll = request.get("coll")
    if not isinstance(coll, str) or _COLL.fullmatch(coll) is None:
        raise RequestError(BAD_REQUEST, "coll must be a string of 1..64 characters [A-Za-z0-9_.-]")
    return coll


def _filter(request: dict[str, Any], required: bool) -> dict[str, Any]:
    if "filter" not in request:
        if required:
            raise RequestError(BAD_REQUEST, "filter (an object) is required")
        return {}
    value = request["filter"]
    if type(value) is not dict:
        raise RequestError(BAD_REQUEST, "filter must be an object")
    return value


def _ping(store: Store, request: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True}


def _insert(store: Store, request: dict[str, Any]) -> dict[str, Any]:
    coll = _coll(request)
    doc = request.get("doc")
    if type(doc) is not dict:
        raise RequestError(BAD_REQUEST, "doc must be an object")
    try:
        doc_id = store.insert(coll, doc)
    except DuplicateIdError as exc:
        raise RequestError(DUPLICATE_ID, str(exc)) from None
    return {"ok": True, "_id": doc_id}


def _find(store: Store, request: dict[str, Any]) -> dict[str, Any]:
    coll = _coll(request)
    return {"ok": True, "docs": store.find(coll, _filter(request, required=False))}


def _count(store: Store, request: dict[str, Any]) -> dict[str, Any]:
    coll = _coll(request)
    return {"ok": True, "count": store.count(coll, _filter(request, required=False))}


def _delete(store: Store, request: dict[str, Any]) -> dict[str, Any]:
    coll = _coll(request)
    return {"ok": True, "deleted": store.delete(coll, _filter(request, required=True))}


OPERATIONS: dict[str, Callable[[Store, dict[str, Any]], dict[str, Any]]] = {
    "ping": _ping,
    "insert": _insert,
    "find": _find,
    "count": _count,
    "delete": _delete,
}


def dispatch(store: Store, request: object) -> dict[str, Any]:
    """The response object for one decoded request.  ``StoreError`` propagates."""
    if type(request) is not dict:
        return error_response(BAD_REQUEST, "the request must be a JSON object")
    assert isinstance(request, dict)
    op = request.get("op")
    try:
        if not isinstance(op, str):
            raise RequestError(BAD_REQUEST, "op (a string) is required")
        handler = OPERATIONS.get(op)
        if handler is None:
            raise RequestError(UNKNOWN_OP, f"unknown op {op[:64]!r}")
        response = handler(store, request)
    except RequestError as exc:
        response = error_response(exc.code, exc.message)
    if "id" in request:
        response["id"] = request["id"]
    return response


_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def encode(response: dict[str, Any]) -> bytes:
    """One response line: compact JSON (ASCII, non-ASCII escaped) and ``\\n``."""
    return (_encode(response) + "\n").encode()


def respond(store: Store, line: bytes) -> bytes:
    """The response line for one request line.  ``StoreError`` propagates."""
    try:
        request = parse_json(line)
    except BadJson as exc:
        return encode(error_response(BAD_JSON, str(exc)))
    return encode(dispatch(store, request))


TOO_LARGE_RESPONSE = encode(
    error_response(TOO_LARGE, f"request line longer than {MAX_LINE} bytes; closing")
)


# --------------------------------------------------------------------------- connection


class ConnState(enum.Enum):
    """How the driver must go on after ``receive_data``."""

    OPEN = "open"  # send the output, keep reading
    EOF = "eof"  # the client ended: send the output, shutdown(SHUT_WR), close
    TOO_LARGE = "too_large"  # send the output, shutdown(SHUT_WR), drain input briefly, close
    FAILED = "failed"  # the store failed: send the output (acknowledged writes), close


class ServerConnection:
    """Framing and dispatch for one connection.

    ``receive_data(data)`` takes what recv() returned (``b""`` is the peer's EOF)
    and returns the bytes to send: the responses to every complete request, in
    order, plus the ``too_large`` response when a line overflowed.  After that,
    ``state`` says whether to keep reading.  A store failure stops the processing
    after the last successful request (``failure`` holds the reason); nothing that
    was not committed is acknowledged.
    """

    __slots__ = ("store", "state", "failure", "requests", "_lines")

    def __init__(self, store: Store, limit: int = MAX_LINE) -> None:
        self.store = store
        self.state = ConnState.OPEN
        self.failure: str | None = None
        self.requests = 0
        self._lines = LineBuffer(limit)

    @property
    def buffered(self) -> int:
        return self._lines.buffered

    def receive_data(self, data: bytes) -> bytes:
        if self.state is not ConnState.OPEN:
            raise RuntimeError(f"receive_data() in state {self.state.name}")
        lines = self._lines.feed(data) if data else self._lines.feed_eof()
        out: list[bytes] = []
        store = self.store
        for line in lines:
            try:
                out.append(respond(store, line))
            except StoreError as exc:
                self.failure = str(exc)
                self.state = ConnState.FAILED
                return b"".join(out)
            self.requests += 1
        if self._lines.too_large:
            out.append(TOO_LARGE_RESPONSE)
            self.state = ConnState.TOO_LARGE
        elif not data:
            self.state = ConnState.EOF
        return b"".join(out)
