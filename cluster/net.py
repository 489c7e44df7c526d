"""Small networking helpers shared by the benchmarks and tests that start local clusters."""

from __future__ import annotations

import random
import socket
from pathlib import Path

#: Where ports for our listeners are drawn from when the kernel's ephemeral range leaves room below it:
#: above Ray's default worker ports (10002-19999, ``ray start --min-worker-port/--max-worker-port``).
LISTEN_PORTS_LOW = 20000
_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for ports it assigns itself (outgoing connections, ``bind(0)``), inclusive.
    Linux's default when the file cannot be read."""
    try:
        low, high = (int(x) for x in _EPHEMERAL_RANGE_FILE.read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports free on ``host`` right now, for listeners a test or benchmark starts.

    Drawn outside the kernel's ephemeral range where there is room (``LISTEN_PORTS_LOW`` up to the
    range's start): a port the OS hands out itself (``bind(0)``) can be taken again by any outgoing
    connection before the listener binds it, and a starting Ray cluster opens hundreds of those. Every
    port is held until all are chosen, so none is returned twice. Falls back to ``bind(0)`` when no
    room is left. Raises ``ValueError`` when ``count`` < 1.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    low, _ = _ephemeral_range()
    held: list[socket.socket] = []
    try:
        if low - LISTEN_PORTS_LOW >= 10 * count:
            rng = random.Random()
            for _ in range(200 * count):
                if len(held) == count:
                    break
                s = socket.socket()
                try:
                    s.bind((host, rng.randrange(LISTEN_PORTS_LOW, low)))
                except OSError:  # taken: draw again
                    s.close()
                    continue
                held.append(s)
        while len(held) < count:
            s = socket.socket()
            s.bind((host, 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (``free_ports``; a later bind by another process may still race)."""
    return free_ports(1, host)[0]
