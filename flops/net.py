"""Small networking helpers: free ports and waiting for a server to answer."""

import ipaddress
import random
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable

# Ports the kernel never hands out on its own: below its ephemeral range (see below).
CHOSEN_PORTS = range(10000, 32768)
EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now, picked at random below the kernel's ephemeral range.

    A port the kernel picked (bind to 0) comes from the range it also gives every outgoing
    connection's local end, and a busy machine took such a port in the seconds between this
    answer and the server's bind. Outside that range, only another server can take it.
    """
    low = _ephemeral_low()
    candidates = range(CHOSEN_PORTS.start, min(CHOSEN_PORTS.stop, low))
    for port in random.sample(candidates, k=min(64, len(candidates))):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux: its setting; elsewhere IANA's 49152)."""
    try:
        with open(EPHEMERAL_RANGE_FILE, encoding="ascii") as file:
            return int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether `url` answers a GET with a 2xx status."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on `host:port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def is_loopback(host: str) -> bool:
    """Whether `host` (a name, an IPv4 or an IPv6 address, bracketed or not) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
