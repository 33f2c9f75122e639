"""conformance.harness.links and .firewall: the veth helper link and the nft rule
exist while used and leave nothing behind — no helper process, no interface, no
nft table — and traffic stays between the two namespaces the suite made.

Run in a private network namespace of this test process (netns.isolate(), as the
plugin does per worker); skipped where none can be made or a tool is missing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance.evidence import Inconclusive
from conformance.harness import netns
from conformance.harness.firewall import Silence
from conformance.harness.links import open_link
from conformance.harness.process import Runner


@pytest.fixture(scope="module")
def iso() -> netns.Isolation:
    result = netns.isolate()
    if result.kind == "host":
        pytest.skip(f"no private network namespace: {result.reason}")
    return result


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    r = Runner(tmp_path)
    try:
        yield r
    finally:
        r.close()


def _ip_link(name: str) -> bool:
    res = subprocess.run(["ip", "-o", "link", "show", "dev", name], capture_output=True)
    return res.returncode == 0


def test_link_reaches_near_and_far_and_is_gone_after_close(iso: netns.Isolation,
                                                           runner: Runner) -> None:
    try:
        link = open_link(runner)
    except Inconclusive as e:
        pytest.skip(e.reason)
    try:
        assert link.doubt() is None and _ip_link(link.ifname)
        with socket.socket() as lst:
            lst.bind(("0.0.0.0", 0))
            lst.listen(4)
            port = lst.getsockname()[1]

            def connect_from(src: str) -> str:
                with socket.socket() as s:
                    s.settimeout(5)
                    s.bind((src, 0))
                    s.connect((link.near, port))
                    return str(s.getsockname()[0])

            assert link.inside(lambda: connect_from(link.gateway)) == link.gateway
            assert link.inside(lambda: connect_from(link.far)) == link.far
    finally:
        link.close()
    assert link.helper.poll() is not None
    assert not _ip_link(link.ifname)  # the veth pair went with the helper's namespace


def test_silence_drops_and_its_table_is_removed(iso: netns.Isolation) -> None:
    if shutil.which("nft") is None and not Path("/usr/sbin/nft").exists():
        pytest.skip("nft is not installed")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        tx.bind(("127.0.0.1", 0))
        rx.settimeout(0.3)
        # Silence drops TCP only: a UDP datagram on the same ports still arrives.
        with Silence(tx.getsockname()[1], rx.getsockname()[1]) as rule:
            tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
            assert rule.table in tables.stdout
            tx.sendto(b"x", rx.getsockname())
            assert rx.recv(10) == b"x"
        tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
        assert rule.table not in tables.stdout


def test_silence_drops_the_peers_tcp_packets(iso: netns.Isolation) -> None:
    if shutil.which("nft") is None and not Path("/usr/sbin/nft").exists():
        pytest.skip("nft is not installed")
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        cli = socket.create_connection(lst.getsockname(), timeout=5)
        conn, _ = lst.accept()
        with cli, conn:
            conn.settimeout(0.3)
            with Silence(cli.getsockname()[1], lst.getsockname()[1]):
                cli.send(b"lost")
                with pytest.raises(TimeoutError):
                    conn.recv(10)
            # Lifted: the retransmission gets through.
            conn.settimeout(5)
            assert conn.recv(10) == b"lost"
