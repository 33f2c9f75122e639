"""Making a peer stop answering: an nftables rule in the worker's own network
namespace that drops one connection's packets towards the target.

The rule lives in a table of its own (``sockconf_<pid>_<n>``) on the *input* hook:
the capture on ``lo`` still sees the dropped packets (the packet tap comes before
netfilter), the target's kernel never gets them.  The table is deleted when the
``with`` block ends, whatever ends it (an exception, Ctrl-C); the namespace is the
worker's private one, so nothing can outlive the worker in any case.

Needs the ``nft`` program and CAP_NET_ADMIN in this namespace (root, or uid 0 of the
user namespace the suite made); otherwise ``Inconclusive`` (skip) with the reason.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from types import TracebackType

from conformance.evidence import Inconclusive

NFT_HINT = "nftables' nft program is not installed (Debian/Ubuntu: apt install nftables)"
_seq = itertools.count(1)


def _nft(script: str) -> subprocess.CompletedProcess[str]:
    nft = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")
    if nft is None:
        raise Inconclusive(NFT_HINT)
    return subprocess.run([nft, "-f", "-"], input=script, capture_output=True, text=True,
                          timeout=10)


class Silence:
    """``with Silence(from_port, to_port):`` — every TCP packet from `from_port` to
    `to_port` (the silenced peer's port and the target's; that also matches
    `extra`, an nft expression) is dropped on arrival, in this namespace."""

    def __init__(self, from_port: int, to_port: int, extra: str = "") -> None:
        self.table = f"sockconf_{os.getpid()}_{next(_seq)}"
        # An inet table sees IPv4 and IPv6; the port pair names the connection.
        self.rule = f"tcp sport {from_port} tcp dport {to_port} {extra} drop".replace("  ", " ")
        self._on = False

    def __enter__(self) -> Silence:
        res = _nft(f"table inet {self.table} {{\n"
                   f"  chain input {{ type filter hook input priority -300; policy accept;\n"
                   f"    {self.rule}\n  }}\n}}\n")
        if res.returncode != 0:
            raise Inconclusive(f"cannot install an nftables rule in the test namespace: "
                               f"{res.stderr.strip()[:300]}")
        self._on = True
        return self

    def lift(self) -> None:
        """Delete the table (idempotent)."""
        if self._on:
            self._on = False
            _nft(f"delete table inet {self.table}\n")

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.lift()
