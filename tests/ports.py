"""Ports for the tests' servers, chosen so that they cannot collide.

    gcs, dashboard = free_ports(2)          # distinct: bound together, released together
    with refused_port() as port:            # nothing can listen there while the block runs
        ...                                 # connecting to 127.0.0.1:port is refused

A port asked for one at a time (bind to 0, close, return the number) can come back twice, and another
process can take it in between. `free_ports` holds every socket until all are chosen, so one call never
returns a port twice; servers that can bind port 0 themselves (moto's) are started that way and asked for
their port instead, and `ray start` is retried when it fails only on a port clash (tests/jobs/
test_cluster_cli.py), since the kernel may hand the same ephemeral port to another process after release.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that are free now on 127.0.0.1."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for held in sockets:
            held.bind(("127.0.0.1", 0))
        return [held.getsockname()[1] for held in sockets]


@contextmanager
def refused_port() -> Iterator[int]:
    """A port this process holds bound but does not listen on: a connection to it is refused, and no other
    process can start listening there while the block runs."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]
