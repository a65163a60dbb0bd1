"""Helper processes and the messages between them and cas.

cas starts helpers (the chunk helper of a backup, restore's writer
processes) as ``python -m <module> FD`` with one end of a Unix socket pair
as their only channel: everything they need, keys included, travels over
it, never on the command line or in the environment.  Messages are frames
of a little-endian u32 length and a msgpack value; a frame may carry one
file descriptor (SCM_RIGHTS), so a helper works on a directory or file the
parent opened, however deep, without a path.

A helper asks the kernel to kill it when its parent dies (``die_with_parent``):
a ``kill -9`` of cas leaves no helper behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import msgpack

_U32 = struct.Struct("<I")
_MSG_CTRUNC = int(socket.MSG_CTRUNC)  # an int: &-ing the IntFlag is a Python call per frame
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PR_SET_PDEATHSIG = 1


def usable_cores() -> int:
    """The cores this process may run on (taskset, cgroup cpusets), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def exactly(sock: socket.socket, n: int, start: bytes = b"") -> bytes:
    """``n`` bytes from ``sock`` (``start``: the first of them, already read); EOFError
    if the other end closes first."""
    buf = bytearray(start)
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            raise EOFError("the other process closed its socket")
        buf += part
    return bytes(buf)


def send(sock: socket.socket, value: Any, fd: int | list[int] | None = None) -> None:
    """One frame holding ``value`` (and ``fd``, a descriptor or a list of them, passed
    with its first bytes)."""
    data = msgpack.packb(value, use_bin_type=True)
    head = _U32.pack(len(data))
    if fd is None:
        sock.sendall(head + data)
        return
    # One system call for the descriptors and the whole frame (a batch of file names is
    # a few KiB; a stream socket may still take less, the rest follows).
    frame = head + data
    sent = socket.send_fds(sock, [frame], [fd] if isinstance(fd, int) else fd)
    if sent < len(frame):
        sock.sendall(memoryview(frame)[sent:])


def recv(sock: socket.socket) -> Any:
    """The value of the next frame (which must carry no descriptor)."""
    (n,) = _U32.unpack(exactly(sock, _U32.size))
    return msgpack.unpackb(exactly(sock, n), raw=False)


def recv_maybe_fd(sock: socket.socket) -> tuple[Any, int | None]:
    """The next frame's value and the descriptor it carries, if any; EOFError at the end."""
    value, fds = recv_fds(sock, 1)
    return value, (fds[0] if fds else None)


def recv_fds(sock: socket.socket, most: int) -> tuple[Any, list[int]]:
    """The next frame's value and the descriptors it carries (none to ``most``);
    EOFError at the end, ValueError if it carried more than ``most`` (those are lost)."""
    head, fds, flags, _ = socket.recv_fds(sock, _U32.size, most)
    try:
        if not head:
            raise EOFError("the other process closed its socket")
        if flags & _MSG_CTRUNC:
            raise ValueError(f"a frame came with more than {most} descriptors")
        (n,) = _U32.unpack(exactly(sock, _U32.size, head))
        value = msgpack.unpackb(exactly(sock, n), raw=False)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return value, fds


def recv_with_fd(sock: socket.socket) -> tuple[Any, int]:
    """The next frame's value and the descriptor it carries; EOFError at the end and
    ValueError if it carries no descriptor."""
    value, fd = recv_maybe_fd(sock)
    if fd is None:
        raise ValueError("a frame came without its descriptor")
    return value, fd


def spawn(
    module: str, *, storage_access: bool = False
) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start ``python -m module FD``; returns the process and the parent's socket.

    The helper imports this very copy of cas, installed or not.  No variable
    that names a password source (``CAS_*PASSWORD*``) is passed on.  Unless
    ``storage_access`` (the helper reads the repository: it needs the user's
    storage credentials and settings), no other ``CAS_*`` or ``AWS_*``
    variable is either, except ``CAS_FAILPOINTS*``, so crash tests reach
    helpers too.  Raises OSError if it cannot start.
    """
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("CAS_") and "PASSWORD" in k)
        and (storage_access or not k.startswith(("CAS_", "AWS_")) or k.startswith("CAS_FAILPOINTS"))
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.Popen(
            # The parent's PID (not a secret) lets the helper tell whether the
            # process that started it is still there (``die_with_parent``).
            [sys.executable, "-m", module, str(child.fileno()), str(os.getpid())],
            env=env,
            pass_fds=(child.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except OSError:
        parent.close()
        raise
    finally:
        child.close()
    return proc, parent


def start(
    module: str, init: Any, *, storage_access: bool = False
) -> tuple[subprocess.Popen[bytes], socket.socket] | None:
    """``spawn`` a helper and send it its first frame, ``init`` (keys go there); None if
    it could not start or take that frame."""
    try:
        proc, sock = spawn(module, storage_access=storage_access)
    except OSError:
        return None
    try:
        send(sock, init)
    except OSError:
        stop(proc, sock, timeout=1)
        return None
    return proc, sock


def ended(proc: subprocess.Popen[bytes], error: str | None = None) -> str:
    """Kill a helper that is still there, reap it, and say how it ended ("was killed by
    signal 9", "exited with status 1", or "failed (``error``)" when it said why)."""
    with contextlib.suppress(OSError):
        proc.kill()
    code = proc.wait()
    if error:
        return f"failed ({error})"
    return f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"


def stop(proc: subprocess.Popen[bytes], sock: socket.socket, timeout: float = 10.0) -> None:
    """Close the helper's socket (it ends when it sees that) and reap it; killed if it
    does not end within ``timeout`` seconds."""
    sock.close()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


_M_MMAP_THRESHOLD = -3  # mallopt(3)
_M_ARENA_MAX = -8
HEAP_MMAP_THRESHOLD = 1 << 20


def one_arena() -> None:
    """Have every thread of this process allocate from glibc's main arena (elsewhere
    nothing); call it before any thread starts.

    glibc gives a thread that finds the arenas busy an arena of its own (up to eight
    per core), and what is freed in one arena serves only that one: a restore writer
    (its own thread and a loading thread, buffers made by one and freed by the other)
    peaked higher than it needs.  Python's small objects do not come from these
    arenas and the large buffers that do are few, so the threads seldom wait for the
    one arena's lock.
    """
    with contextlib.suppress(OSError, AttributeError):
        _libc().mallopt(_M_ARENA_MAX, 1)


def trim_heap() -> None:
    """Give the free pages inside the malloc heap back to the system (glibc's
    ``malloc_trim``, which also releases whole free pages between chunks in use, not
    only at the heap's end; elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        _libc().malloc_trim(0)


_LIBC: Any = None


def _libc() -> Any:
    """The C library (loaded once; OSError where there is none to load)."""
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def keep_heap_small() -> None:
    """Serve allocations of 1 MiB or more (packs, batches, read buffers) from their own
    mappings, returned to the system when freed (glibc; elsewhere nothing).

    glibc raises its mmap threshold each time such a block is freed, up to 32 MiB,
    after which 16 MiB packs come from the heap and its fragments stay resident:
    a backup with two workers peaked at 401-425 MiB summed over its processes, with
    a fixed 1 MiB threshold at 272-277 MiB, for about 0.5 s more system time.
    """
    with contextlib.suppress(OSError, AttributeError):
        _libc().mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD)


def die_with_parent(parent: int | None = None) -> None:
    """In a helper: be killed when the process that started it (``parent``, by default
    the current parent) dies (Linux), and stop now if it is already gone: a parent
    killed while this helper was still starting must not leave it behind."""
    if parent is None:
        parent = os.getppid()
    # not Linux: the helper ends when its socket closes
    with contextlib.suppress(OSError, AttributeError):
        _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(0)


def helper_socket(argv: list[str]) -> socket.socket:
    """In a helper: the socket whose descriptor number is ``argv[1]``."""
    return socket.socket(fileno=int(argv[1]))


def run_helper(
    argv: list[str],
    serve: Callable[[socket.socket], None],
    on_bug: Callable[[socket.socket, Exception], None] | None = None,
) -> None:
    """A helper's whole life: die with the parent, ``serve`` the socket of ``argv[1]``
    until the parent goes away, then close it.  An unexpected exception is passed to
    ``on_bug`` (to tell the parent) and raised."""
    die_with_parent(int(argv[2]) if len(argv) > 2 else None)
    sock = helper_socket(argv)
    try:
        serve(sock)
    except (OSError, EOFError, KeyboardInterrupt):
        pass  # the parent ended, went away or was interrupted: nothing to report
    except Exception as e:
        if on_bug is not None:
            with contextlib.suppress(OSError):
                on_bug(sock, e)
        raise
    finally:
        sock.close()
