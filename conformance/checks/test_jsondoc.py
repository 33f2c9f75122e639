"""JSON — the jsondoc protocol: framing, the model store, malformed input, the line
limit, nesting, durability and concurrent inserts.

Every response is judged against `jsondoc_model` (JSON equality, key order and spacing
free); every wait is bounded (REPLY_S, BIG_REPLY_S, times the target's timeout_scale),
only to stop hangs: nothing is
judged by how fast it answers.
"""

from __future__ import annotations

import functools
import itertools
import json
import random
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    precondition,
    rule,
    run_state_machine_as_test,
)

from conformance.checks import jsondoc_model as m
from conformance.checks.fuzzing import Fuzz, LiveServer
from conformance.checks.support import PEER_ERRNOS
from conformance.clauses import clause
from conformance.evidence import Inconclusive, Pass, Violation
from conformance.harness import peers
from conformance.harness.testbed import Server, Testbed

REPLY_S = 5.0          # the longest we wait for one response (stops hangs only)
BIG_REPLY_S = 15.0     # ... when megabytes must cross first
Json = m.Json


# -- a client connection ---------------------------------------------------------------------

def server_state(srv: Server) -> str:
    if srv.proc.poll() is None:
        return "the server is still running"
    tail = srv.proc.stderr_tail(300).strip()
    return f"the server died ({srv.proc.status()})" + (f", stderr {tail!r}" if tail else "")


def caused_by_server(e: OSError) -> bool:
    """Whether our socket's failure is one only the server can cause (else it is
    the suite's own trouble: EMFILE, ENOBUFS, ...)."""
    return isinstance(e, TimeoutError) or e.errno in PEER_ERRNOS


class Conn:
    """One client connection: sends bytes, reads response lines with a deadline."""

    def __init__(self, srv: Server, label: str = "client", *, nodelay: bool = False) -> None:
        self.srv = srv
        self.label = label
        self.scale = srv.timeout_scale   # every wait below is a hang guard: scaled
        try:
            self.sock = peers.connect(srv.transport, srv.port, srv.path,
                                      timeout=REPLY_S * self.scale)
        except OSError as e:
            if not caused_by_server(e):
                raise       # the suite's own trouble (EMFILE, ...): an error, not a verdict
            raise Violation(f"{label}: cannot connect ({e}); {server_state(srv)}") from None
        # The socket timeout bounds sendall(); reads wait with select() up to a deadline.
        self.sock.settimeout(BIG_REPLY_S * self.scale)
        if nodelay and srv.transport != "unix":
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.end: str | None = None     # how the stream ended: "EOF", "reset", ...

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            if not caused_by_server(e):
                raise
            raise Violation(f"{self.label}: sending {m.trim(data)} failed ({e}); "
                            f"{server_state(self.srv)}") from None

    def send_in_background(self, data: bytes) -> threading.Thread:
        """sendall() in a thread, so we read while megabytes are on the way (a server
        may answer and close before it has read everything); errors are ignored:
        what arrives is judged."""
        def run() -> None:
            try:
                self.sock.sendall(data)
            except OSError:
                pass
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    def _fill(self, deadline: float) -> bool:
        """Read more into the buffer; False when the stream ended or time is up."""
        if self.end is not None:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                return False
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            self.end = "a connection reset"
            return False
        except OSError as e:
            self.end = f"a socket error ({e})"
            return False
        if not chunk:
            self.end = "EOF"
            return False
        self.buf += chunk
        return True

    def read_line(self, timeout: float = REPLY_S) -> bytes | None:
        """The next line (without its newline), or None: see `missing()`."""
        deadline = time.monotonic() + timeout * self.scale
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line = bytes(self.buf[:nl])
                del self.buf[:nl + 1]
                return line
            if not self._fill(deadline):
                return None

    def read_end(self, timeout: float = REPLY_S) -> str:
        """Wait for the server to end the stream: "EOF", "a connection reset", ... or
        "timeout"; bytes that arrive meanwhile stay in the buffer."""
        deadline = time.monotonic() + timeout * self.scale
        while self._fill(deadline):
            pass
        return self.end or "timeout"

    def missing(self, timeout: float) -> str:
        """What came instead of a response line."""
        part = f" after the partial line {m.trim(bytes(self.buf), 120)}" if self.buf else ""
        how = self.end or f"no response line within {timeout * self.scale:.0f} s"
        return f"{how}{part}; {server_state(self.srv)}"

    def response(self, sent: bytes, timeout: float = REPLY_S) -> dict[str, Json]:
        """The next response, parsed; a Violation naming `sent` when none comes or
        it is not a JSON object with a boolean "ok"."""
        line = self.read_line(timeout)
        if line is None:
            raise Violation(f"{self.label}: sent {m.trim(sent)}; expected a response, saw "
                            f"{self.missing(timeout)}")
        obj, problem = m.parse_response(line)
        if problem or obj is None:
            raise Violation(f"{self.label}: sent {m.trim(sent)}; {problem}")
        return obj

    def ask(self, req: m.Request, **enc: bool) -> tuple[bytes, dict[str, Json]]:
        line = m.encode(req, **enc)
        self.send(line)
        return line, self.response(line)


def judge(store: m.ModelStore, conn: Conn, reqs: list[m.Request], lines: list[bytes],
          what: str = "") -> None:
    """Read one response per request (in order) and judge each against the model."""
    for i, (req, line) in enumerate(zip(reqs, lines, strict=True)):
        resp = conn.response(line)
        problem = store.apply(req, resp)
        if problem:
            where = f"{what}, response {i + 1} of {len(reqs)}" if what else "response"
            raise Violation(f"{conn.label}: sent {m.trim(line)}; {where}: {problem}")


def ping_works(conn: Conn, tag: str) -> None:
    """The connection still answers a ping (with an id only it could echo)."""
    req = m.ping(f"ping after {tag}"[:60])
    line, resp = conn.ask(req)
    problem = m.check_ok(resp) or m.check_id(req, resp)
    if problem:
        raise Violation(f"{conn.label}: after {tag}, sent {m.trim(line)}; {problem}")


def expect_store(srv: Server, store: m.ModelStore, colls: Iterable[str], when: str) -> None:
    """On a fresh connection: every collection holds exactly what the model holds."""
    conn = Conn(srv, "checking client")
    try:
        for coll in colls:
            line, resp = conn.ask(m.count(coll))
            problem = store.apply(m.count(coll), resp)
            if not problem:
                line, resp = conn.ask(m.find(coll))
                problem = store.apply(m.find(coll), resp)
            if problem:
                raise Violation(f"{when}: the stored state changed: sent {m.trim(line)}; "
                                f"{problem}")
    finally:
        conn.close()


def require_framing(srv: Server, what: str) -> None:
    """Skip a check that needs requests split across sends or pipelined in one send
    when the server does not frame those (JSON-1 fails it then)."""
    conn = Conn(srv, "framing probe", nodelay=True)
    reqs = [m.ping("probe-1"), m.ping("probe-2"), m.ping("probe-3")]
    lines = [m.encode(r) for r in reqs]
    try:
        conn.send(lines[0][:7])
        time.sleep(0.01)
        conn.send(lines[0][7:] + lines[1] + lines[2])
        judge(m.ModelStore(), conn, reqs, lines, "framing probe")
    except Violation as e:
        raise Inconclusive(f"{what} needs line framing, which this server gets wrong "
                           f"(JSON-1's concern): {e}") from None
    finally:
        conn.close()


def seed(conn: Conn, store: m.ModelStore, coll: str) -> None:
    """Three documents in `coll`, one request at a time."""
    docs: list[dict[str, Json]] = [{"_id": "seed-1", "a": 1, "s": "x"}, {"a": 1.5, "t": True},
                                   {"n": None, "l": [1, {}]}]
    for d in docs:
        req = m.insert(coll, d)
        line = m.encode(req)
        conn.send(line)
        judge(store, conn, [req], [line], "seeding")


# -- JSON-1: framing and ordering ---------------------------------------------------------------

IDS: list[Json] = [1, "two", None, 3.5, True, [4, "x"], {"five": 5}, -6, "", 0, False, "é😀"]


def mixed_requests(coll: str, n: int) -> list[m.Request]:
    """n requests of every op, ids of every JSON type (every 4th has none)."""
    out: list[m.Request] = []
    for i in range(n):
        rid: Json = m.MISSING if i % 4 == 3 else IDS[i % len(IDS)]
        if isinstance(rid, int | str) and not isinstance(rid, bool):
            rid = f"{rid}#{i}" if isinstance(rid, str) else rid * 1000 + i
        kind = i % 5
        if kind == 0:
            out.append(m.ping(rid))
        elif kind == 1:
            out.append(m.insert(coll, {"i": i, "s": f"doc {i}", "f": i / 4}, rid))
        elif kind == 2:
            out.append(m.count(coll, {"i": float(i - 1)} if i % 2 else {}, rid))
        elif kind == 3:
            out.append(m.find(coll, {"s": f"doc {i - 2}"}, rid))
        else:
            out.append(m.insert(coll, {"_id": f"k{i}", "i": i}, rid))
    return out


@clause("JSON-1")
def test_pipelined_requests_in_one_send(bed: Testbed, server_transport: str) -> Pass:
    srv = bed.start_server(server_transport)
    conn = Conn(srv)
    store = m.ModelStore()
    reqs = mixed_requests("pipe", 60)
    lines = [m.encode(r, ascii=i % 2 == 0) for i, r in enumerate(reqs)]
    conn.send(b"".join(lines))
    judge(store, conn, reqs, lines, f"{len(reqs)} requests pipelined in one send")
    ping_works(conn, "the pipelined batch")
    return Pass(f"{len(reqs)} requests of every op pipelined in one send: each answered "
                "in order, as the model store answers")


@clause("JSON-1")
def test_request_sent_byte_by_byte(bed: Testbed, server_transport: str) -> Pass:
    srv = bed.start_server(server_transport)
    conn = Conn(srv, nodelay=True)
    store = m.ModelStore()
    reqs = [m.ping(["a", 1]), m.insert("bytes", {"s": "é😀 ünïcode", "n": 1.25}, id="i"),
            m.find("bytes", {"n": 1.25}, id=3)]
    for req, enc in zip(reqs, ({}, {"ascii": False}, {"spaced": True}), strict=True):
        line = m.encode(req, **enc)
        for b in range(len(line)):
            conn.send(line[b:b + 1])
            time.sleep(0.001)  # each byte its own segment and, mostly, its own read
        judge(store, conn, [req], [line], "one request sent in 1-byte pieces")
    return Pass(f"{len(reqs)} requests sent one byte per send: each answered as the model "
                "store answers")


@clause("JSON-1")
def test_blank_lines_get_no_response(bed: Testbed, server_transport: str) -> Pass:
    srv = bed.start_server(server_transport)
    conn = Conn(srv)
    blanks = [b"\n", b"  \n", b"\t\n", b"\r\n", b" \t \r\n", b"\n\n\n"]
    reqs = [m.ping(f"p{i}") for i in range(len(blanks))]
    lines = [m.encode(r) for r in reqs]
    # A response to a blank line would shift every later one: judged by ids.
    conn.send(b"".join(b + line for b, line in zip(blanks, lines, strict=True)))
    judge(m.ModelStore(), conn, reqs, lines, "pings after whitespace-only lines")
    for b in blanks:
        conn.send(b)
        time.sleep(0.01)
    ping_works(conn, "whitespace-only lines sent on their own")
    return Pass(f"{len(blanks)} whitespace-only lines, pipelined and on their own, got no "
                "response (the pings around them kept their ids)")


@clause("JSON-1")
def test_requests_split_across_sends(bed: Testbed, server_transport: str) -> Pass:
    """Sends that end inside a request (completed by the next send), blank lines between."""
    srv = bed.start_server(server_transport)
    conn = Conn(srv, nodelay=True)
    store = m.ModelStore()
    reqs = mixed_requests("split", 30)
    lines = [m.encode(r) for r in reqs]
    stream = b""
    ends: list[int] = []          # where each request line ends in the stream
    for i, line in enumerate(lines):
        stream += line
        ends.append(len(stream))
        stream += b" \n" if i % 3 == 0 else b""
    cuts = sorted({(i * 37 + i * i) % len(stream) for i in range(1, 40)} | {len(stream)})
    done, start = 0, 0
    for cut in cuts:
        conn.send(stream[start:cut])
        start = cut
        time.sleep(0.002)
        complete = sum(1 for e in ends if e <= cut)
        if complete > done:
            judge(store, conn, reqs[done:complete], lines[done:complete],
                  f"requests split across sends (cut at byte {cut})")
            done = complete
    if done != len(reqs):
        raise RuntimeError(f"only {done} of {len(reqs)} requests were judged")
    return Pass(f"{len(reqs)} requests in {len(cuts)} sends cut inside requests: each "
                "answered as the model store answers")


@clause("JSON-1")
def test_all_answered_before_eof_close(bed: Testbed, server_transport: str) -> Pass:
    """Pipelined requests, then our FIN: every request is still answered."""
    srv = bed.start_server(server_transport)
    conn = Conn(srv)
    reqs = mixed_requests("eof", 20)
    lines = [m.encode(r) for r in reqs]
    conn.send(b"".join(lines))
    conn.sock.shutdown(socket.SHUT_WR)
    judge(m.ModelStore(), conn, reqs, lines, "pipelined requests followed by EOF")
    return Pass(f"{len(reqs)} pipelined requests followed by our EOF: all answered")


BLANK_LINES = st.sampled_from([b"\n", b" \n", b"\t\r\n", b"  \t  \n", b"\r\n"])


def valid_requests(coll: str, *, duplicates: bool = True) -> st.SearchStrategy[m.Request]:
    """Valid requests on `coll`; with `duplicates`, inserts may repeat a string _id
    (answered duplicate_id), else they never get an error."""
    docs = m.documents(st.one_of(st.just(m.MISSING), st.sampled_from(["k1", "k2"]))
                       if duplicates else None)
    return st.one_of(
        st.builds(m.ping, m.request_ids()),
        st.builds(m.insert, st.just(coll), docs, m.request_ids()),
        st.builds(m.count, st.just(coll), st.just(m.MISSING), m.request_ids()),
        st.builds(m.find, st.just(coll), st.just(m.MISSING), m.request_ids()))


@clause("JSON-1")
def test_random_splits(bed: Testbed, server_transport: str) -> Pass:
    live = LiveServer(bed, server_transport)
    examples = itertools.count()
    fuzz = Fuzz("streams")

    @given(data=st.data())
    def split_stream(data: st.DataObject) -> None:
        coll = f"split{next(examples):06d}"
        items = data.draw(st.lists(st.one_of(valid_requests(coll, duplicates=False),
                                             BLANK_LINES), min_size=1,
                                   max_size=10), label="requests and blank lines")
        enc = data.draw(st.sampled_from([{}, {"ascii": False}, {"spaced": True}]),
                        label="encoding")
        lines = [i if isinstance(i, bytes) else m.encode(i, **enc) for i in items]
        stream = b"".join(lines)
        cuts = data.draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=12,
                                  unique=True), label="cut points")
        reqs = [i for i in items if isinstance(i, dict)]
        sent = [line for line in lines if not m.is_blank(line[:-1])]
        conn = Conn(live.get(), nodelay=True)
        try:
            start = 0
            for cut in [*sorted(cuts), len(stream)]:
                conn.send(stream[start:cut])
                start = cut
                time.sleep(0.002)
            judge(m.ModelStore(), conn, reqs, sent,
                  f"a stream of {len(lines)} lines cut at {sorted(cuts)}")
            ping_works(conn, "the split stream (a response to a blank line shifts ids)")
            fuzz.judged()
        finally:
            conn.close()

    return fuzz.run(split_stream, "random request streams cut at random points: every "
                                  "request answered as the model store answers")


# -- JSON-2: the model store --------------------------------------------------------------------

DOC_IDS: st.SearchStrategy[Json] = st.one_of(
    st.just(m.MISSING), st.sampled_from(["k1", "k2", "k3", "", "é"]), m.texts,
    st.sampled_from([1, None, [], {}, True, 2.5]))
CLIENTS = 3


def make_store_machine(live: LiveServer, fuzz: Fuzz) -> type[RuleBasedStateMachine]:
    examples = itertools.count()

    class StoreMachine(RuleBasedStateMachine):
        """Random operations from CLIENTS connections on a few collections, each
        response judged against the model store."""

        def __init__(self) -> None:
            super().__init__()
            self.srv = live.get()
            n = next(examples)
            # A unique prefix per example: examples share the server, not its data.
            # Fixed width: what hypothesis draws must not depend on the example number.
            self.colls = [f"e{n:06d}.a", f"e{n:06d}_B", f"e{n:06d}-" + "L" * 56]
            self.store = m.ModelStore()
            self.conns: dict[int, Conn] = {}

        def teardown(self) -> None:
            for c in self.conns.values():
                c.close()

        def exchange(self, c: int, req: m.Request, ascii: bool = True) -> None:
            if c not in self.conns:
                self.conns[c] = Conn(self.srv, f"client {c + 1}")
            conn = self.conns[c]
            line = m.encode(req, ascii=ascii)
            conn.send(line)
            resp = conn.response(line)
            problem = self.store.apply(req, resp)
            if problem:
                raise Violation(f"{conn.label}: sent {m.trim(line)}; {problem}")
            fuzz.judged()
            if resp.get("ok") is False:
                # Whether the connection survives an error response is JSON-3's
                # question; this client goes on with a new connection.
                conn.close()
                del self.conns[c]

        def any_docs(self) -> bool:
            return any(self.store.docs(coll) for coll in self.colls)

        @rule(c=st.integers(0, CLIENTS - 1), coll=st.integers(0, 2), doc=m.documents(DOC_IDS),
              rid=m.request_ids(), ascii=st.booleans())
        def insert(self, c: int, coll: int, doc: dict[str, Json], rid: Json, ascii: bool) -> None:
            self.exchange(c, m.insert(self.colls[coll], doc, rid), ascii)

        @precondition(any_docs)
        @rule(c=st.integers(0, CLIENTS - 1), data=st.data())
        def insert_duplicate(self, c: int, data: st.DataObject) -> None:
            coll = data.draw(st.sampled_from([x for x in self.colls if self.store.docs(x)]),
                             label="collection")
            old = data.draw(st.sampled_from(self.store.docs(coll)), label="doc whose _id")
            self.exchange(c, m.insert(coll, {"_id": old["_id"], "dup": True}))

        @precondition(any_docs)
        @rule(c=st.integers(0, CLIENTS - 1), data=st.data())
        def insert_similar(self, c: int, data: st.DataObject) -> None:
            """A copy of a stored doc, some values swapped for equal ones (1 -> 1.0)
            or traps (1 -> true): filters then match several docs, or nearly."""
            coll = data.draw(st.sampled_from([x for x in self.colls if self.store.docs(x)]),
                             label="collection")
            old = data.draw(st.sampled_from(self.store.docs(coll)), label="copied doc")
            doc = {k: data.draw(st.sampled_from(m.twist(v)), label=f"doc[{k!r}]")
                   for k, v in old.items() if k != "_id"}
            self.exchange(c, m.insert(coll, doc))

        @rule(c=st.integers(0, CLIENTS - 1), coll=st.integers(0, 2), data=st.data(),
              rid=m.request_ids(), whole=st.booleans())
        def find(self, c: int, coll: int, data: st.DataObject, rid: Json, whole: bool) -> None:
            name = self.colls[coll]
            flt = m.MISSING if whole else m.filter_from(data, self.store.docs(name))
            self.exchange(c, m.find(name, flt, rid))

        @rule(c=st.integers(0, CLIENTS - 1), coll=st.integers(0, 2), data=st.data(),
              rid=m.request_ids(), whole=st.booleans())
        def count(self, c: int, coll: int, data: st.DataObject, rid: Json, whole: bool) -> None:
            name = self.colls[coll]
            flt = m.MISSING if whole else m.filter_from(data, self.store.docs(name))
            self.exchange(c, m.count(name, flt, rid))

        @rule(c=st.integers(0, CLIENTS - 1), coll=st.integers(0, 2), data=st.data(),
              rid=m.request_ids())
        def delete(self, c: int, coll: int, data: st.DataObject, rid: Json) -> None:
            name = self.colls[coll]
            self.exchange(c, m.delete(name, m.filter_from(data, self.store.docs(name)), rid))

        @rule(c=st.integers(0, CLIENTS - 1), rid=m.request_ids())
        def ping(self, c: int, rid: Json) -> None:
            self.exchange(c, m.ping(rid))

    return StoreMachine


@clause("JSON-2")
def test_model_store(bed: Testbed, server_transport: str) -> Pass:
    fuzz = Fuzz("requests")
    machine = make_store_machine(LiveServer(bed, server_transport), fuzz)
    return fuzz.run(lambda: run_state_machine_as_test(
        machine, settings=settings(settings.default, stateful_step_count=30)),
        f"random operations from {CLIENTS} clients on 3 collections, each response as "
        "the model store answers")


# -- JSON-3: malformed requests ------------------------------------------------------------------

def expected_error(mal: m.Malformed, resp: dict[str, Json]) -> str | None:
    return m.check_error(resp, mal.code) or m.check_id(
        {} if mal.id is m.MISSING else {"id": mal.id}, resp)


@clause("JSON-3")
def test_each_malformed_request(bed: Testbed, server_transport: str) -> Pass:
    srv = bed.start_server(server_transport)
    store = m.ModelStore()
    conn = Conn(srv)
    seed(conn, store, "seed")
    catalogue = m.malformed_catalogue("seed")
    failures: list[str] = []
    for mal in catalogue:
        conn.send(mal.line + b"\n")
        got = conn.read_line(REPLY_S)
        if got is None:
            if srv.proc.poll() is not None:
                raise Violation(f"sent {mal.describe()}; {server_state(srv)}")
            failures.append(f"{mal.describe()}: expected {{\"ok\":false,\"error\":"
                            f"\"{mal.code}\"...}}, saw {conn.missing(REPLY_S)}")
            conn.close()
            conn = Conn(srv)
            continue
        resp, problem = m.parse_response(got)
        if resp is not None:
            problem = expected_error(mal, resp)
        if problem:
            failures.append(f"{mal.describe()}: {problem}")
        try:
            ping_works(conn, f"the {mal.kind} request")
        except Violation as e:
            if srv.proc.poll() is not None:
                raise Violation(f"after {mal.describe()}: {server_state(srv)}") from None
            failures.append(f"{mal.describe()}: the connection is not usable after the "
                            f"error response: {e}")
            conn.close()
            conn = Conn(srv)
    conn.close()
    if failures:
        raise Violation(f"{len(failures)} of {len(catalogue)} malformed requests mishandled: "
                        + "; ".join(failures[:3])
                        + (f" (and {len(failures) - 3} more)" if failures[3:] else ""))
    expect_store(srv, store, ["seed"], "after the malformed requests")
    return Pass(f"each of {len(catalogue)} malformed requests got its error response, the "
                "connection stayed usable, the store unchanged")


@clause("JSON-3")
def test_malformed_mixed_with_valid(bed: Testbed, server_transport: str) -> Pass:
    live = LiveServer(bed, server_transport)
    require_framing(live.get(), "a pipelined stream of malformed and valid requests")
    examples = itertools.count()
    fuzz = Fuzz("streams")

    @given(data=st.data())
    def mixed_stream(data: st.DataObject) -> None:
        srv = live.get()
        coll = f"mix{next(examples):06d}"
        store = m.ModelStore()
        conn = Conn(srv)
        try:
            seed(conn, store, coll)
            items = data.draw(st.lists(st.one_of(m.malformed_lines(coll), valid_requests(coll),
                                                 BLANK_LINES), min_size=1, max_size=12),
                              label="stream")
            lines = [i if isinstance(i, bytes) else i.line + b"\n"
                     if isinstance(i, m.Malformed) else m.encode(i) for i in items]
            conn.send(b"".join(lines))
            answered = [(i, line) for i, line in zip(items, lines, strict=True)
                        if not isinstance(i, bytes)]
            for n, (item, line) in enumerate(answered):
                resp = conn.response(line)
                if isinstance(item, m.Malformed):
                    problem = expected_error(item, resp)
                    if problem:
                        problem = f"malformed ({item.kind}): {problem}"
                else:
                    problem = store.apply(item, resp)
                if problem:
                    raise Violation(f"sent {m.trim(line)} (line {n + 1} of {len(answered)} in "
                                    f"one pipelined send); {problem}")
            ping_works(conn, "a stream of malformed and valid requests")
            line, resp = conn.ask(m.find(coll))
            problem = store.apply(m.find(coll), resp)
            if problem:
                raise Violation(f"after malformed requests the stored state changed: sent "
                                f"{m.trim(line)}; {problem}")
            fuzz.judged()
        finally:
            conn.close()

    return fuzz.run(mixed_stream, "pipelined streams of malformed and valid requests: "
                                  "errors and answers as expected, the store unchanged")


# -- JSON-4: the line limit -------------------------------------------------------------------

def overlong(size: int) -> bytes:
    """`size` bytes that are a valid request so far (an insert with a long string),
    so only the length is wrong."""
    head = b'{"op":"insert","coll":"big","doc":{"pad":"'
    return head + b"a" * (size - len(head))


def expect_too_large(conn: Conn, sent: str) -> None:
    """too_large, then the server closes the connection."""
    line = conn.read_line(BIG_REPLY_S)
    if line is None:
        raise Violation(f"sent {sent}; expected a too_large response, saw "
                        f"{conn.missing(BIG_REPLY_S)}")
    obj, problem = m.parse_response(line)
    if obj is not None:
        problem = m.check_error(obj, "too_large")
    if problem:
        raise Violation(f"sent {sent}; {problem}")
    end = conn.read_end(BIG_REPLY_S)
    if end == "timeout":
        raise Violation(f"sent {sent}; got too_large, but the connection was still open "
                        f"{BIG_REPLY_S * conn.scale:.0f} s later (it must be closed)")


@clause("JSON-4")
def test_unterminated_line_over_the_limit(bed: Testbed, server_transport: str) -> Pass:
    srv = bed.start_server(server_transport)
    require_framing(srv, "a line over the limit (it arrives in many reads)")
    other = Conn(srv, "other client")
    ping_works(other, "connecting")
    conn = Conn(srv, "overflowing client")
    # Exactly one byte over, and nothing more: a server that waits for the newline
    # (buffering without bound) never answers.
    conn.send_in_background(overlong(m.LINE_LIMIT + 1))
    ping_works(other, "another client started sending an over-long line")
    expect_too_large(conn, f"{m.LINE_LIMIT + 1} bytes without a newline (then nothing)")
    ping_works(other, "another client's over-long line")
    fresh = Conn(srv, "new client")
    ping_works(fresh, "a client's over-long line")
    # Memory: bounded by construction here (the answer came without more input, the
    # connection is closed); an RSS comparison is not judged because a Python or
    # malloc-based server keeps freed memory, which would make it flaky.
    return Pass(f"{m.LINE_LIMIT + 1} bytes without a newline: too_large, then the connection "
                "closed; another client and a new one were served throughout")


@clause("JSON-4")
def test_terminated_line_over_the_limit(bed: Testbed, server_transport: str) -> Pass:
    srv = bed.start_server(server_transport)
    require_framing(srv, "a line over the limit (it arrives in many reads)")
    store = m.ModelStore()
    conn = Conn(srv, "overflowing client")
    size = m.LINE_LIMIT + m.LINE_LIMIT // 2
    conn.send_in_background(overlong(size) + b'"}}\n')
    expect_too_large(conn, f"a {size + 3}-byte insert line (newline-terminated)")
    # Not stored, even though the line was a complete, valid insert.
    expect_store(srv, store, ["big"], "after an over-long insert line")
    return Pass(f"a {size + 3}-byte insert line: too_large, the connection closed, nothing "
                "stored")


@clause("JSON-4")
@pytest.mark.parametrize("length", [m.LINE_LIMIT - 16, m.LINE_LIMIT])
def test_line_within_the_limit(bed: Testbed, server_transport: str, length: int) -> Pass:
    srv = bed.start_server(server_transport)
    require_framing(srv, "a line near the limit (it arrives in many reads)")
    conn = Conn(srv)
    line = m.padded_ping(length, 7)
    conn.send_in_background(line + b"\n")
    sent = f"a valid ping of {length} bytes (limit {m.LINE_LIMIT}, newline excluded)"
    resp = conn.response(line, BIG_REPLY_S)
    problem = m.check_ok(resp) or m.check_id({"id": 7}, resp)
    if problem:
        raise Violation(f"sent {sent}; {problem}")
    ping_works(conn, sent)
    return Pass(f"{sent}: answered, and the connection kept serving")


# -- JSON-5: nesting ----------------------------------------------------------------------------

@clause("JSON-5")
def test_nesting_limit(bed: Testbed, server_transport: str) -> Pass:
    srv = bed.start_server(server_transport)
    conn = Conn(srv)
    store = m.ModelStore()
    for arrays in (False, True):
        line = m.nested_insert("deep", m.MAX_DEPTH, arrays=arrays)
        conn.send(line + b"\n")
        req = {"op": "insert", "coll": "deep", "doc": json.loads(line)["doc"]}
        problem = store.apply(req, conn.response(line))
        if problem:
            raise Violation(f"an insert nested exactly {m.MAX_DEPTH} deep "
                            f"({'arrays' if arrays else 'objects'}): {problem}")
    line, resp = conn.ask(m.find("deep"))
    problem = store.apply(m.find("deep"), resp)
    if problem:
        raise Violation(f"documents nested {m.MAX_DEPTH} deep, read back: {problem}")
    for total, arrays in ((m.MAX_DEPTH + 1, False), (m.MAX_DEPTH + 1, True), (1000, True),
                          (100000, True)):
        line = m.nested_insert("deep", total, arrays=arrays)
        what = f"an insert nested {total} deep ({'arrays' if arrays else 'objects'})"
        conn.send(line + b"\n")
        got = conn.read_line(REPLY_S)
        if got is None:
            if srv.proc.poll() is not None:
                raise Violation(f"sent {what}; {server_state(srv)}")
            raise Violation(f"sent {what}; expected an error response, saw "
                            f"{conn.missing(REPLY_S)}")
        obj, problem = m.parse_response(got)
        if obj is not None:
            problem = m.check_error(obj, None)
        if problem:
            raise Violation(f"sent {what}; {problem}")
        try:
            ping_works(conn, what)
        except Violation:
            if srv.proc.poll() is not None:
                raise Violation(f"after {what}: {server_state(srv)}") from None
            conn.close()
            conn = Conn(srv, "new client")
            ping_works(conn, what)
    expect_store(srv, store, ["deep"], "after the too-deep inserts")
    return Pass(f"inserts nested {m.MAX_DEPTH} deep stored and read back; deeper ones "
                f"({m.MAX_DEPTH + 1}..100000) refused with an error, the server still serving")


# -- JSON-6: durability ---------------------------------------------------------------------

ROUNDS = 5


class Ledger:
    """What the writers were told: acknowledged inserts (id -> doc) and deletes.
    A write in flight when the server died is in neither: it may or may not stay."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.present: dict[str, dict[str, Json]] = {}
        self.deleted: set[str] = set()
        self.problems: list[str] = []
        self.acks = 0

    def shares(self, writers: int) -> list[list[str]]:
        """The acknowledged docs split among `writers`: each may delete only its own."""
        keys = sorted(self.present)
        return [keys[w::writers] for w in range(writers)]

    def sending_delete(self, key: str) -> None:
        # From now on the doc may be gone or not, until the delete is acknowledged.
        with self.lock:
            self.present.pop(key, None)

    def acknowledged(self, req: m.Request, resp: dict[str, Json]) -> str | None:
        with self.lock:
            self.acks += 1
            if req["op"] == "delete":
                self.deleted.add(req["filter"]["_id"])
                return None
            key = resp.get("_id")
            if not isinstance(key, str):
                self.problems.append(f"insert acknowledged without a string _id: {m.show(resp)}")
                return None
            self.present[key] = dict(req["doc"], _id=key)
            return key


def writer(srv: Server, ledger: Ledger, rnd: int, w: int, mine: list[str], coll: str,
           stop: threading.Event) -> None:
    """Inserts (and deletes of this writer's acknowledged docs), one at a time, until
    the server dies or `stop`; every acknowledgement goes into the ledger.  Only
    writer 0 leaves the _id to the server: ids assigned concurrently are JSON-7's."""
    rng = random.Random(rnd * 10 + w)
    try:
        conn = Conn(srv, f"writer {w + 1}")
    except Violation:
        return
    n = 0
    try:
        while not stop.is_set():
            n += 1
            req: m.Request
            if mine and rng.random() < 0.2:
                key = mine.pop(rng.randrange(len(mine)))
                ledger.sending_delete(key)
                req = m.delete(coll, {"_id": key})
            else:
                doc: dict[str, Json] = {"r": rnd, "w": w, "n": n, "f": rng.random(),
                                        "s": "x" * rng.randrange(200)}
                if w > 0 or rng.random() < 0.5:
                    doc["_id"] = f"r{rnd}w{w}n{n}"
                req = m.insert(coll, doc)
            line = m.encode(req)
            try:
                conn.sock.sendall(line)
            except OSError:
                return
            got = conn.read_line(REPLY_S)
            if got is None:
                return       # killed with this write in flight: it may or may not stay
            resp, problem = m.parse_response(got)
            if resp is None or resp.get("ok") is not True:
                with ledger.lock:
                    ledger.problems.append(f"sent {m.trim(line)}; {problem or m.show(resp)}")
                return
            acked = ledger.acknowledged(req, resp)
            if acked is not None:
                mine.append(acked)
    finally:
        conn.close()


@clause("JSON-6")
def test_acknowledged_writes_survive_sigkill(bed: Testbed) -> Pass:
    program = bed.server_program
    transport = bed.primary(program)
    if not any("{data}" in a for a in program.argv_for(transport)):
        raise Inconclusive("the target takes no data path ({data} is not in its server argv)")
    rng = random.Random(6)
    ledger = Ledger()
    coll = "durable"
    srv = bed.start_server(transport)
    for rnd in range(ROUNDS):
        writers = 1 + rnd % 3
        stop = threading.Event()
        threads = [threading.Thread(target=writer, daemon=True,
                                    args=(srv, ledger, rnd, w, share, coll, stop))
                   for w, share in enumerate(ledger.shares(writers))]
        for t in threads:
            t.start()
        # The kill lands at a different moment of the write stream each round.
        time.sleep(rng.uniform(0.05, 0.4))
        srv.proc.kill()
        stop.set()
        for t in threads:
            t.join(REPLY_S * 2)
        if ledger.problems:
            raise Violation(f"round {rnd + 1}: a write was refused: {ledger.problems[0]}")
        with ledger.lock:
            present, deleted = dict(ledger.present), set(ledger.deleted)
        data = srv.data
        srv = bed.start_server(transport, data=data, name=f"restart-{rnd + 1}")
        conn = Conn(srv, "checking client")
        line, resp = conn.ask(m.find(coll))
        conn.close()
        docs = resp.get("docs")
        if resp.get("ok") is not True or not isinstance(docs, list):
            raise Violation(f"after SIGKILL and restart on {data}: sent {m.trim(line)}; "
                            f"saw {m.show(resp)}")
        _judge_survivors(rnd, present, deleted, docs)
    if not ledger.acks:
        raise Inconclusive("no write was acknowledged before any of the kills: nothing to judge")
    return Pass(f"{ROUNDS} SIGKILLs mid-write with {ledger.acks} acknowledged writes: after "
                "each restart every acknowledged insert and delete held")


def _judge_survivors(rnd: int, present: dict[str, dict[str, Json]], deleted: set[str],
                     docs: list[Json]) -> None:
    found = {d.get("_id"): d for d in docs if isinstance(d, dict)}
    lost = sorted(k for k in present if k not in found)
    if lost:
        raise Violation(f"SIGKILL #{rnd + 1}: {len(lost)} of {len(present)} acknowledged "
                        f"inserts are gone after the restart (e.g. _id {lost[0]!r})")
    changed = sorted(k for k, d in present.items() if not m.json_equal(found[k], d))
    if changed:
        k = changed[0]
        raise Violation(f"SIGKILL #{rnd + 1}: acknowledged doc {m.show(present[k])} came back "
                        f"as {m.show(found[k])}")
    back = sorted(k for k in deleted if k in found)
    if back:
        raise Violation(f"SIGKILL #{rnd + 1}: {len(back)} of {len(deleted)} acknowledged "
                        f"deletes are undone after the restart (e.g. _id {back[0]!r})")


# -- JSON-7: concurrent inserts -------------------------------------------------------------

CONCURRENT = 40
PER_CLIENT = 25


@clause("JSON-7")
def test_concurrent_inserts(bed: Testbed, server_transport: str) -> Pass:
    srv = bed.start_server(server_transport)
    conns = [Conn(srv, f"client {i + 1}") for i in range(CONCURRENT)]
    start = threading.Barrier(CONCURRENT, timeout=REPLY_S * 2 * srv.timeout_scale)
    acked: list[list[tuple[str, dict[str, Json]]]] = [[] for _ in conns]
    errors: list[str] = []

    def insert_all(i: int) -> None:
        conn = conns[i]
        try:
            start.wait()
            for k in range(PER_CLIENT):
                req = m.insert("many", {"client": i, "seq": k})
                line = m.encode(req)
                conn.send(line)
                resp = conn.response(line)
                rid = resp.get("_id")
                if resp.get("ok") is not True or not isinstance(rid, str):
                    raise Violation(f"{conn.label}: sent {m.trim(line)}; expected "
                                    f'{{"ok":true,"_id":<string>}}, saw {m.show(resp)}')
                acked[i].append((rid, dict(req["doc"], _id=rid)))
        except (Violation, OSError, threading.BrokenBarrierError) as e:
            errors.append(str(e))

    _run_threads([functools.partial(insert_all, i) for i in range(CONCURRENT)],
                 lambda: sum(len(per) for per in acked), STALL_S * srv.timeout_scale)
    for c in conns:
        c.close()
    if errors:
        raise Violation(f"{len(errors)} of {CONCURRENT} concurrent clients failed; first: "
                        f"{errors[0]}")
    ids = [rid for per in acked for rid, _ in per]
    dups = sorted({k for k in ids if ids.count(k) > 1})
    if dups:
        raise Violation(f"{CONCURRENT} clients x {PER_CLIENT} concurrent inserts: "
                        f"{len(ids) - len(set(ids))} duplicate _id(s), e.g. {dups[0]!r}")
    conn = Conn(srv, "checking client")
    line, resp = conn.ask(m.count("many"))
    if m.count_value(resp.get("count")) != len(ids) or resp.get("ok") is not True:
        raise Violation(f"after {len(ids)} acknowledged concurrent inserts, sent "
                        f"{m.trim(line)}; saw {m.show(resp)}")
    line, resp = conn.ask(m.find("many"))
    conn.close()
    docs = resp.get("docs")
    if resp.get("ok") is not True or not isinstance(docs, list):
        raise Violation(f"sent {m.trim(line)}; saw {m.show(resp)}")
    found = {d.get("_id"): d for d in docs if isinstance(d, dict)}
    for per in acked:
        for rid, doc in per:
            if rid not in found or not m.json_equal(found[rid], doc):
                raise Violation(f"acknowledged {m.show(doc)}; find returned "
                                f"{m.show(found.get(rid))}")
    return Pass(f"{CONCURRENT} clients x {PER_CLIENT} concurrent inserts: {len(ids)} unique "
                "ids, all counted and found as acknowledged")


# Each client thread ends by itself: every response waits at most REPLY_S and every
# send BIG_REPLY_S, both scaled (then it fails with a Violation).  So threads that made no
# progress for longer than that are a bug of the suite, not a slow server.
STALL_S = REPLY_S + BIG_REPLY_S + 5.0


def _run_threads(jobs: list[Callable[[], Any]], progress: Callable[[], int],
                 stall_s: float) -> None:
    """Run the jobs in threads and join them all, however long a slow (but
    progressing) server takes: the results are compared only once every thread
    is done.  RuntimeError (a suite error) if they stop progressing, alive."""
    threads = [threading.Thread(target=j, daemon=True) for j in jobs]
    for t in threads:
        t.start()
    last, since = progress(), time.monotonic()
    while alive := [t for t in threads if t.is_alive()]:
        alive[0].join(0.5)
        now, done = time.monotonic(), progress()
        if done != last:
            last, since = done, now
        elif now - since > stall_s:
            raise RuntimeError(f"{len(alive)} client threads made no progress for "
                               f"{stall_s:.0f} s and did not end")
