"""Ports: chosen where outgoing connections never take them; a server is up when it, not another, listens."""

import socket
import sys
from pathlib import Path

import pytest

from flops import net
from flops.net import free_port, port_open, wait_until
from flops.processes import ManagedProcess

LISTENER = """
import socket, sys, time
sock = socket.socket()
try:
    sock.bind(("127.0.0.1", int(sys.argv[1])))
except OSError as error:
    sys.exit(f"cannot bind: {error}")
sock.listen()
time.sleep(60)
"""


def test_a_free_port_lies_below_the_kernels_ephemeral_range_and_binds() -> None:
    low = net._ephemeral_low()
    ports = {free_port() for _ in range(20)}
    assert all(net.CHOSEN_PORTS.start <= port < low for port in ports), (ports, low)
    assert len(ports) > 1  # picked at random, not one after another from a fixed start
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        spare = free_port()
        monkeypatch.setattr(net.random, "sample", lambda _range, k: [busy, spare])
        assert free_port() == spare


def test_a_port_another_process_took_is_open_but_not_listened_on_by_ours(tmp_path: Path) -> None:
    port = free_port()
    theirs = ManagedProcess("theirs", [sys.executable, "-c", LISTENER, str(port)], tmp_path / "theirs.log")
    ours = None
    try:
        assert wait_until(lambda: theirs.listens_on(port), 20), theirs.log_tail()
        ours = ManagedProcess("ours", [sys.executable, "-c", LISTENER, str(port)], tmp_path / "ours.log")
        assert port_open("127.0.0.1", port)  # what the aggregator used to wait for: true at once
        assert wait_until(lambda: not ours.running(), 20)
        assert not ours.listens_on(port)
        assert "cannot bind" in ours.log_tail()
    finally:
        theirs.stop()
        if ours is not None:
            ours.stop()
    assert not theirs.listens_on(port)
