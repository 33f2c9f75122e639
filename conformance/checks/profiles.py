"""The three profiles as values: what a check asks of a target's protocol.

A check asks the target's `Profile` (`profiles.of(bed)`) instead of branching on
its name: whether its server is one-shot or concurrent (how its service ends),
its normal exchange, and — for the concurrent profiles — a round trip's request
and answer, half a request and a flood of requests.  (Which sides a target has
is the target's declaration: `[client]` exists for hello only.)
"""

from __future__ import annotations

import json

from conformance.evidence import Violation
from conformance.harness import peers
from conformance.harness.testbed import Server, Testbed

ECHO_PROBE = b"sockconf echo probe \x00\xff\n"
PING = b'{"op":"ping","id":1}\n'


class Profile:
    name = ""
    # The end-of-service rule.  One-shot: the server serves one client, then
    # closes its listener and exits by itself (LIFE-3).  Concurrent: it serves
    # clients until SIGTERM (LIFE-6).  `support.finish()` ends a server by it.
    one_shot = False
    # What a client sends in the normal exchange before it shuts down its side
    # (hello: nothing, the client only reads).
    probe = b""

    def exchange(self, srv: Server, timeout: float) -> peers.Received:
        """The normal exchange on one connection, as a correct client does it."""
        raise NotImplementedError

    # -- round trips (concurrent profiles) --------------------------------------------

    def request(self, tag: int) -> bytes:
        """A request whose answer tells `tag` apart (a round trip)."""
        raise NotImplementedError(f"{self.name} servers have no round trips")

    def take_answer(self, buf: bytes, tag: int, sent: bytes) -> tuple[bool, bytes]:
        """(True, rest of `buf`) when `buf` starts with the whole answer to
        `sent`; (False, buf) while incomplete; Violation if it is wrong."""
        raise NotImplementedError(f"{self.name} servers have no round trips")

    def partial(self) -> bytes:
        """Half a request: the server must wait for the rest without holding up
        anyone else."""
        raise NotImplementedError(f"{self.name} servers have no requests")

    def flood(self, size: int) -> bytes:
        """About `size` bytes of requests whose answers are as large (a client that
        sends them and never reads fills the server's send path)."""
        raise NotImplementedError(f"{self.name} servers have no requests")


class Hello(Profile):
    name = "hello"
    one_shot = True

    def exchange(self, srv: Server, timeout: float) -> peers.Received:
        """Read the greeting (the client sends nothing)."""
        return peers.fetch_greeting(srv.transport, srv.port, srv.path, timeout=timeout)


class Echo(Profile):
    name = "echo"

    probe = ECHO_PROBE

    def exchange(self, srv: Server, timeout: float) -> peers.Received:
        """Send the probe, shut down our side, read the echo until FIN."""
        return peers.request(srv.transport, srv.port, srv.path, payload=self.probe,
                             timeout=timeout)

    def request(self, tag: int) -> bytes:
        return f"sockconf round trip {tag:08d}\n".encode()

    def take_answer(self, buf: bytes, tag: int, sent: bytes) -> tuple[bool, bytes]:
        if len(buf) < len(sent):
            return False, buf
        got, rest = buf[:len(sent)], buf[len(sent):]
        if got != sent:
            raise Violation(f"round trip {tag}: sent {sent!r}, got back {got!r}")
        return True, rest

    def partial(self) -> bytes:
        return b"sockconf partial"

    def flood(self, size: int) -> bytes:
        return bytes(range(256)) * max(1, size // 256)


class Jsondoc(Profile):
    name = "jsondoc"

    probe = PING

    def exchange(self, srv: Server, timeout: float) -> peers.Received:
        """Send a ping, shut down our side, read the response until FIN."""
        return peers.request(srv.transport, srv.port, srv.path, payload=self.probe,
                             timeout=timeout)

    def request(self, tag: int) -> bytes:
        return b'{"op":"ping","id":%d}\n' % tag

    def take_answer(self, buf: bytes, tag: int, sent: bytes) -> tuple[bool, bytes]:
        if b"\n" not in buf:
            return False, buf
        line, rest = buf.split(b"\n", 1)
        try:
            doc = json.loads(line)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or doc.get("ok") is not True or doc.get("id") != tag:
            raise Violation(f"round trip {tag}: sent {sent!r}, got {line[:200]!r}")
        return True, rest

    def partial(self) -> bytes:
        return b'{"op":"insert","coll":"life","doc":{"a":'

    def flood(self, size: int) -> bytes:
        one = b'{"op":"ping"}\n'
        return one * max(1, size // len(one))


PROFILES: dict[str, Profile] = {p.name: p for p in (Hello(), Echo(), Jsondoc())}


def of(bed: Testbed) -> Profile:
    """The profile of the target under test."""
    return PROFILES[bed.target.profile]
