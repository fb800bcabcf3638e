"""tests/ports.py: the tests' servers get ports that cannot collide."""

from __future__ import annotations

import socket
from contextlib import ExitStack

from tests.ports import free_ports, refused_port


def test_free_ports_never_returns_a_port_in_use_nor_one_twice():
    with ExitStack() as stack:
        held = []
        for listening in (True, False) * 8:  # ports in use: some listening, some only bound
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            if listening:
                sock.listen()
            held.append(sock.getsockname()[1])
        for _ in range(5):
            ports = free_ports(200)
            assert len(set(ports)) == len(ports) == 200
            assert not set(ports) & set(held)


def test_a_refused_port_refuses_connections_and_cannot_be_taken():
    with refused_port() as port:
        with socket.socket() as client:
            assert client.connect_ex(("127.0.0.1", port)) != 0  # refused: nothing listens
        assert port not in free_ports(200)
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
            try:
                other.bind(("127.0.0.1", port))
                taken = True
            except OSError:
                taken = False
        assert not taken
