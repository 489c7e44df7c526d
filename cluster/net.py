"""Small networking helpers shared by the benchmarks and tests that start local clusters."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it; a later bind may still race)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
