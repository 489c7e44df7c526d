"""cluster.net: ports for the listeners that tests and benchmarks start."""

from __future__ import annotations

import socket

import pytest

from cluster.net import LISTEN_PORTS_LOW, _ephemeral_range, free_port, free_ports


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range():
    low, high = _ephemeral_range()
    for _ in range(20):
        ports = free_ports(8)
        assert len(set(ports)) == 8
        # Outside the range the kernel gives outgoing connections, where it leaves room (Linux: 32768-60999).
        assert all(LISTEN_PORTS_LOW <= p < low for p in ports), (ports, low, high)
        for p in ports:  # each is free now
            with socket.socket() as s:
                s.bind(("127.0.0.1", p))
    assert LISTEN_PORTS_LOW <= free_port() < low


def test_free_ports_skips_a_port_in_use_and_refuses_a_bad_count():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free_port()))
        busy.listen()
        taken = busy.getsockname()[1]
        for _ in range(50):
            assert taken not in free_ports(4)
    with pytest.raises(ValueError, match="count"):
        free_ports(0)
