"""The clause catalogue: every clause of REQUIREMENTS.md, and @clause(...) for checks.

The IDs are a contract (reports, target files and graders key on them): they are
copied here exactly.  The report is built from this catalogue, so a clause that no
check declares still appears, visibly, as a gap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TypeVar

import pytest

MUST = "MUST"
SHOULD = "SHOULD"

ALL_PROFILES = ("hello", "echo", "jsondoc")
STREAM_PROFILES = ("echo", "jsondoc")


@dataclass(frozen=True)
class Clause:
    id: str
    level: str
    title: str
    profiles: tuple[str, ...]
    # OPT clauses apply only to targets that declare the option.
    option: str | None = None


def _c(id: str, level: str, title: str, profiles: tuple[str, ...] = ALL_PROFILES,
       option: str | None = None) -> Clause:
    return Clause(id, level, title, profiles, option)


CATALOGUE: tuple[Clause, ...] = (
    _c("ARGS-1", MUST, "Server with wrong argument count prints usage on stdout, exits 1, opens no socket"),
    _c("ARGS-2", MUST, "Client with wrong argument count prints usage on stdout, exits 1, opens no socket",
       ("hello",)),
    _c("ARGS-3", SHOULD, "Server rejects a port that is not a decimal integer in 1..65535"),
    _c("ARGS-4", SHOULD, "Client rejects a malformed IPv4 address or port and sends no packet", ("hello",)),
    _c("ERR-1", MUST, "bind() failure: 'bind() error' on stderr, exit 1, empty stdout, within 2 s"),
    _c("ERR-2", MUST, "connect() failure: 'connect() error!' on stderr, exit 1, empty stdout", ("hello",)),
    _c("ERR-3", MUST, "Client whose server closes or resets early: 'read() error!', exit 1, no partial output",
       ("hello",)),
    _c("ERR-4", MUST, "EMFILE from socket()/accept() is reported with a lifecycle call named"),
    _c("ERR-5", MUST, "Error text goes to stderr only"),
    _c("ERR-6", SHOULD, "A server is never killed by SIGPIPE because a peer reset"),
    _c("ERR-7", MUST, "An injected lifecycle-call failure is reported naming a lifecycle call, exit 1, no listener left"),
    _c("ERR-8", SHOULD, "A call interrupted by a signal (EINTR in accept/read/write) is retried"),
    _c("ERR-9", SHOULD, "The error line names the call that actually failed"),
    _c("LIFE-0", MUST, "System calls follow the socket lifecycle in order"),
    _c("LIFE-1", MUST, "Server listens on the wildcard address of the given port in time"),
    _c("LIFE-2", MUST, "Listen backlog is at least 5"),
    _c("LIFE-3", MUST, "hello: one-shot; closes its listener and exits 0 after one client", ("hello",)),
    _c("LIFE-4", MUST, "Connections end gracefully: all bytes, then FIN, no RST"),
    _c("LIFE-5", SHOULD, "SO_REUSEADDR: restart on the same port during TIME_WAIT"),
    _c("LIFE-6", MUST, "On SIGTERM the server ends within 1 s and frees the port"),
    _c("LIFE-7", MUST, "At least 32 clients served at once; an idle client never delays others",
       STREAM_PROFILES),
    _c("LIFE-8", MUST, "A client that resets or vanishes never stops service and leaks nothing",
       STREAM_PROFILES),
    _c("HELLO-1", MUST, "Server writes exactly the 13 bytes 'Hello World!\\0'", ("hello",)),
    _c("HELLO-2", MUST, "Greeting written right after accept(), without waiting for client data",
       ("hello",)),
    _c("HELLO-3", MUST, "Client data before/after the greeting changes nothing and causes no RST",
       ("hello",)),
    _c("CLI-1", MUST, "Client prints 'Message from server: Hello World! ' and exits 0", ("hello",)),
    _c("CLI-2", MUST, "Client reads until the whole greeting arrived (13 one-byte segments)", ("hello",)),
    _c("CLI-3", MUST, "Client closes after reading and exits within 1 s of the server's FIN", ("hello",)),
    _c("CLI-4", SHOULD, "Client does not bind() an explicit local port", ("hello",)),
    _c("CLI-5", MUST, "Client sends no payload bytes to the hello server", ("hello",)),
    _c("ECHO-1", MUST, "TCP echo: every byte back, in order, for any payload and chunking", ("echo",)),
    _c("ECHO-2", MUST, "After the client's SHUT_WR the server echoes pending bytes, then FIN", ("echo",)),
    _c("ECHO-3", MUST, "Concurrent clients' streams never mix", ("echo",)),
    _c("ECHO-4", MUST, "UDP: each datagram comes back as one datagram, byte-identical", ("echo",)),
    _c("ECHO-5", MUST, "MSG_OOB urgent data handled per SO_OOBINLINE", ("echo",)),
    _c("JSON-1", MUST, "Framing and ordering, split and pipelined requests", ("jsondoc",)),
    _c("JSON-2", MUST, "Operations behave as a model store (stateful model test)", ("jsondoc",)),
    _c("JSON-3", MUST, "Malformed requests get their error; connection usable; state unchanged",
       ("jsondoc",)),
    _c("JSON-4", MUST, "Over-limit line gets too_large, then the connection closes", ("jsondoc",)),
    _c("JSON-5", MUST, "Nesting up to 64 accepted; deeper answered with an error, never a crash",
       ("jsondoc",)),
    _c("JSON-6", MUST, "Acknowledged writes survive SIGKILL and restart", ("jsondoc",)),
    _c("JSON-7", MUST, "Concurrent inserts all stored, ids unique", ("jsondoc",)),
    _c("OPT-REUSEADDR", MUST, "SO_REUSEADDR: restart during TIME_WAIT binds; a second listener still fails", option="reuseaddr"),
    _c("OPT-LINGER", MUST, "SO_LINGER: 0 aborts with RST (no FIN, no TIME_WAIT); N > 0 blocks close() about N s", option="linger"),
    _c("OPT-KEEPALIVE", MUST, "SO_KEEPALIVE + TCP_KEEP*: probes at idle/interval, RST after count unanswered", option="keepalive"),
    _c("OPT-RCVBUF", MUST, "SO_RCVBUF: listener and accepted buffer and SYN-ACK window scale match a calibration", option="rcvbuf"),
    _c("OPT-SNDBUF", MUST, "SO_SNDBUF: the connection's send buffer matches a calibration (not auto-tuned)", option="sndbuf"),
    _c("OPT-BACKLOG", MUST, "listen backlog: sock_diag shows n; a stopped server completes exactly n + 1 handshakes", option="backlog"),
    _c("OPT-OOBINLINE", MUST, "SO_OOBINLINE: urgent byte inline (ECHO-5) and set on the accepted socket", option="oobinline"),
    _c("OPT-BROADCAST", MUST, "SO_BROADCAST: a send to a link's broadcast address through the target's socket", option="broadcast"),
    _c("OPT-DONTROUTE", MUST, "SO_DONTROUTE: a peer behind a gateway is never answered; on-link peers are", option="dontroute"),
    _c("OPT-DEBUG", MUST, "SO_DEBUG set on the listening and accepted (client: connected) socket",
       option="debug"),
)

BY_ID: dict[str, Clause] = {c.id: c for c in CATALOGUE}


def applicable(profile: str) -> list[Clause]:
    """The clauses that apply to a target of `profile` (every one appears in its report).

    OPT clauses apply to every profile: an undeclared option is reported as `skip`
    with the reason, as INTERFACE.md asks, so the gap stays visible.
    """
    return [c for c in CATALOGUE if profile in c.profiles]


def select(patterns: list[str], clauses: list[Clause]) -> list[Clause]:
    """Clauses whose ID matches any of the glob patterns (case-insensitive)."""
    if not patterns:
        return list(clauses)
    pats = [p.upper() for p in patterns]
    return [c for c in clauses if any(fnmatchcase(c.id, p) for p in pats)]


F = TypeVar("F", bound=Callable[..., object])


def clause(clause_id: str) -> Callable[[F], F]:
    """Declare the clause a check proves; the report is built from these declarations."""
    if clause_id not in BY_ID:
        raise ValueError(f"unknown clause {clause_id!r}")

    def mark(fn: F) -> F:
        return pytest.mark.clause(clause_id)(fn)  # type: ignore[no-any-return]

    return mark


# A check of the client program: deselected (with the reason shown on its clause)
# when the target declares no client, so a server-only target's clauses are judged
# by their server checks alone instead of turning into "skip".
client_side = pytest.mark.sockconf_side("client")


def transports(*names: str) -> pytest.MarkDecorator:
    """The transports a check with a `server_transport` argument applies to: it is
    parametrized with those the target declares (ECHO-1 is about streams: a udp4
    transport is not a skipped case of it, it is not a case at all)."""
    return pytest.mark.sockconf_transports(*names)
