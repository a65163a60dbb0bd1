"""cas/ipc.py frames that carry descriptors (restore hands a batch's directories over
in one frame)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from cas import ipc


@contextmanager
def _pair_and_pipes(n: int) -> Iterator[tuple[socket.socket, socket.socket, list[tuple[int, int]]]]:
    """A socket pair and ``n`` pipes (descriptors to send), all closed afterwards."""
    a, b = socket.socketpair()
    pipes = [os.pipe() for _ in range(n)]
    try:
        yield a, b, pipes
    finally:
        a.close()
        b.close()
        for r, w in pipes:
            os.close(r)
            os.close(w)


def test_a_frame_carries_several_descriptors_in_order() -> None:
    with _pair_and_pipes(3) as (a, b, pipes):
        ipc.send(a, {"j": 1}, [r for r, _ in pipes])
        value, fds = ipc.recv_fds(b, 4)
        assert value == {"j": 1} and len(fds) == 3
        for (_, w), fd in zip(pipes, fds, strict=True):
            os.write(w, b"x%d" % w)
            assert os.read(fd, 16) == b"x%d" % w  # the same pipe, in the same place
            os.close(fd)
        ipc.send(a, ["no descriptor"])
        assert ipc.recv_fds(b, 4) == (["no descriptor"], [])
        ipc.send(a, "one", pipes[0][0])
        value, fd = ipc.recv_maybe_fd(b)
        assert value == "one" and fd is not None
        os.close(fd)


def test_more_descriptors_than_expected_are_refused_and_none_left_open() -> None:
    with _pair_and_pipes(3) as (a, b, pipes):
        ipc.send(a, "many", [r for r, _ in pipes])
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(ValueError, match="more than 2 descriptors"):
            ipc.recv_fds(b, 2)
        assert len(os.listdir("/proc/self/fd")) == before  # what came was closed


def test_a_closed_socket_ends_with_eoferror() -> None:
    a, b = socket.socketpair()
    a.close()
    try:
        with pytest.raises(EOFError):
            ipc.recv_fds(b, 2)
    finally:
        b.close()
