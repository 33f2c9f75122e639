"""A veth link from the worker's network namespace to a helper namespace, with a
documentation-range network behind it — for the options that are about routing
(OPT-DONTROUTE) and link broadcasts (OPT-BROADCAST).

    worker netns (the target runs here)          helper netns (a `sleep` holds it)
    scNa 169.254.N.1/24  <------ veth ------>   scNb 169.254.N.2/24
    route 192.0.2.0/24 via 169.254.N.2           lo: 192.0.2.1/32 (the far network)

A peer at 169.254.N.2 is on-link; a peer at 192.0.2.1 is reachable only through
the gateway 169.254.N.2.  Addresses exist only inside namespaces the suite created
(the worker's private one and the helper's): nothing is configured in the host's
namespace and no packet can leave the machine.

Works as root and unprivileged (uid 0 of the user namespace the suite made owns
both namespaces).  The helper is a process of the testbed's runner: killing it
(the testbed's close(), Ctrl-C, the worker's death through its pdeath signal)
destroys its namespace and with it the veth pair — nothing to clean up by hand;
`close()` does it at once.  Needs `ip` (iproute2), `unshare` and `nsenter`
(util-linux); otherwise ``Inconclusive`` (skip) with the reason.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from conformance.evidence import Doubt, Inconclusive
from conformance.harness import inspect
from conformance.harness.process import Proc, Runner

T = TypeVar("T")
FAR_NET = "192.0.2.0/24"
FAR_ADDR = "192.0.2.1"
_seq = itertools.count(1)


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        raise Inconclusive(f"{name} is not installed (iproute2/util-linux): no veth helper link")
    return path


@dataclass
class Link:
    """A veth link to a helper namespace (see the module docstring)."""
    n: int
    helper: Proc
    near: str        # our address on the link, 169.254.N.1
    gateway: str     # the helper's address on the link, 169.254.N.2
    broadcast: str   # the link's subnet broadcast, 169.254.N.255
    far: str = FAR_ADDR  # the helper's address behind the gateway
    ifname: str = ""       # our end of the veth
    peer_ifname: str = ""  # the helper's end

    def doubt(self) -> Doubt | None:
        if self.helper.poll() is not None:
            return Doubt(f"the helper namespace's process ended ({self.helper.status()})")
        return None

    def inside(self, fn: Callable[[], T]) -> T:
        """Run `fn` in the helper namespace (sockets it creates live there)."""
        return inspect.run_in_netns(self.helper.pid, fn)

    def close(self) -> None:
        """Delete the veth pair now, then end the helper: a namespace's devices
        otherwise go only when the kernel gets round to tearing it down, after
        the helper's death (a link of the same name could then still exist)."""
        try:
            if self.ifname:
                subprocess.run([_tool("ip"), "link", "del", self.ifname], capture_output=True,
                               timeout=10)
        finally:
            self.helper.kill()


def _run(argv: list[str], what: str) -> None:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if res.returncode != 0:
        raise Inconclusive(f"cannot set up the veth helper link ({what}): "
                           f"{res.stderr.strip()[:300]}")


def open_link(runner: Runner) -> Link:
    """Create the helper namespace, the veth pair and the routes."""
    ip, unshare, nsenter = _tool("ip"), _tool("unshare"), _tool("nsenter")
    n = next(_seq)
    if n > 250:
        raise Inconclusive("too many helper links in this worker")
    helper = runner.spawn([unshare, "--net", "sleep", "600"], name=f"netns-helper-{n}")
    try:
        deadline = time.monotonic() + 5.0
        while inspect.netns_id(helper.pid) in (None, inspect.own_netns_id()):
            if helper.poll() is not None or time.monotonic() > deadline:
                raise Inconclusive(f"no helper network namespace: unshare --net "
                                   f"{helper.status()}, {helper.stderr_tail(200)!r}")
            time.sleep(0.005)
        a, b = f"sc{n}a", f"sc{n}b"
        near, gw, bcast = f"169.254.{n}.1", f"169.254.{n}.2", f"169.254.{n}.255"
        inside = [nsenter, "-t", str(helper.pid), "-n", ip]
        _run([ip, "link", "add", a, "type", "veth", "peer", "name", b,
              "netns", str(helper.pid)], "veth pair")
        _run([ip, "addr", "add", f"{near}/24", "broadcast", bcast, "dev", a], "our address")
        _run([ip, "link", "set", a, "up"], "our end up")
        _run([ip, "route", "add", FAR_NET, "via", gw, "dev", a], "route to the far network")
        _run([*inside, "link", "set", "lo", "up"], "helper lo up")
        _run([*inside, "addr", "add", f"{FAR_ADDR}/32", "dev", "lo"], "far address")
        _run([*inside, "addr", "add", f"{gw}/24", "broadcast", bcast, "dev", b], "helper address")
        _run([*inside, "link", "set", b, "up"], "helper end up")
        _wait_up(ip, a)
    except BaseException:
        helper.kill()
        raise
    return Link(n, helper, near, gw, bcast, FAR_ADDR, a, b)


def _wait_up(ip: str, ifname: str, timeout: float = 3.0) -> None:
    """Until the veth carrier is up (both ends up), so the first packet is not lost.
    (`ip`, not /sys/class/net: sysfs shows the namespace it was mounted in.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = subprocess.run([ip, "-o", "link", "show", "dev", ifname], capture_output=True,
                             text=True, timeout=10)
        if "LOWER_UP" in res.stdout:
            return
        time.sleep(0.01)
    raise Inconclusive(f"the veth link {ifname} did not come up within {timeout:g} s")
