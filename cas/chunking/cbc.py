"""AES-128-CBC decryption for the window chunker (spec/format.md §7.6): the system's
libcrypto through ctypes, the OpenSSL ``hashlib`` maps, or ``cryptography``'s.

A backup worker chunks and names packs with SHA-256: through libcrypto both come from
one OpenSSL, the one ``hashlib`` needs anyway; ``cryptography`` would map a second,
larger one (its Rust module: about 7.7 MiB resident in each worker against 3.8 for
libcrypto and ``hashlib`` together).  ``cryptography`` stays the fallback where no
libcrypto can be loaded; both give the same bytes (CBC, no padding, the chain carried
from one call to the next).
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from cas.errors import CasError

# decrypt(at, n): buf[at:at + n] (n a multiple of 16) decrypted into the bound output
# buffer's start; returns n
Decrypt = Callable[[int, int], int]


class CbcDecryptor(Protocol):
    """AES-128-CBC decryption with the chain carried from one call to the next."""

    def bound(self, buf: Any, out: bytearray) -> contextlib.AbstractContextManager[Decrypt]:
        """A ``decrypt(at, n)`` from ``buf`` into ``out``, for the ``with`` block."""
        ...

    def decrypt_into(self, buf: Any, at: int, n: int, out: bytearray) -> int:
        """``buf[at:at + n]`` decrypted into ``out``; returns ``n``."""
        ...


def _check(at: int, n: int, size: int, room: int) -> None:
    if n & 15 or at < 0 or at + n > size or n > room:
        raise ValueError("CBC decryption out of bounds or not whole blocks")


def _libcrypto() -> ctypes.CDLL | None:
    """The libcrypto ``hashlib`` links, loaded (already mapped by ``_hashlib``: no
    second copy), or None."""
    try:
        import _hashlib  # noqa: F401  (maps libcrypto; the pack names use it too)
    except ImportError:  # pragma: no cover - a Python built without OpenSSL
        return None
    names = []
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
            for line in maps:
                path = line.rsplit(" ", 1)[-1].strip()
                if "/libcrypto.so" in path and path not in names:
                    names.append(path)
    except OSError:  # pragma: no cover - not Linux
        pass
    names += ["libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.dylib"]
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            lib.EVP_aes_128_cbc  # noqa: B018  (has the EVP cipher API)
            lib.EVP_DecryptUpdate  # noqa: B018
        except (OSError, AttributeError):
            continue
        return lib
    return None  # pragma: no cover - depends on the installation


_LIB: list[ctypes.CDLL | None] = []  # [lib] once looked up


def _lib() -> ctypes.CDLL | None:
    if not _LIB:
        lib = _libcrypto()
        if lib is not None:
            vp, ci = ctypes.c_void_p, ctypes.c_int
            lib.EVP_CIPHER_CTX_new.restype = vp
            lib.EVP_CIPHER_CTX_new.argtypes = []
            lib.EVP_CIPHER_CTX_free.restype = None
            lib.EVP_CIPHER_CTX_free.argtypes = [vp]
            lib.EVP_aes_128_cbc.restype = vp
            lib.EVP_aes_128_cbc.argtypes = []
            lib.EVP_DecryptInit_ex.restype = ci
            lib.EVP_DecryptInit_ex.argtypes = [vp, vp, vp, ctypes.c_char_p, ctypes.c_char_p]
            lib.EVP_CIPHER_CTX_set_padding.restype = ci
            lib.EVP_CIPHER_CTX_set_padding.argtypes = [vp, ci]
            lib.EVP_DecryptUpdate.restype = ci
            lib.EVP_DecryptUpdate.argtypes = [vp, vp, ctypes.POINTER(ci), vp, ci]
        _LIB.append(lib)
    return _LIB[0]


class _LibcryptoCbc:
    """EVP AES-128-CBC decryption, padding off, on the caller's buffers (no copies)."""

    __slots__ = ("_ctx", "_free", "_outl", "_update")

    def __init__(self, lib: ctypes.CDLL, key: bytes) -> None:
        ctx = lib.EVP_CIPHER_CTX_new()
        if not ctx:
            raise MemoryError("EVP_CIPHER_CTX_new")
        self._ctx = ctx
        self._free = lib.EVP_CIPHER_CTX_free
        if not (
            lib.EVP_DecryptInit_ex(ctx, lib.EVP_aes_128_cbc(), None, key, bytes(16)) == 1
            and lib.EVP_CIPHER_CTX_set_padding(ctx, 0) == 1
        ):
            raise CasError("libcrypto refused the AES-128-CBC key")
        self._update = lib.EVP_DecryptUpdate
        self._outl = ctypes.c_int(0)

    def __del__(self) -> None:
        ctx, self._ctx = getattr(self, "_ctx", None), None
        if ctx:
            self._free(ctx)

    @contextlib.contextmanager
    def bound(self, buf: Any, out: bytearray) -> Iterator[Decrypt]:
        # Pointers into the buffers, taken once for the block, not per call (a call
        # decrypts 64 KiB: the lookups would cost a tenth of it); the exports are let
        # go at its end (a mapping with an export cannot be closed).
        held: list[Any] = [ctypes.c_char.from_buffer(out)]
        try:
            dst, room, size = ctypes.addressof(held[0]), len(out), len(buf)
            if not size:
                src = 0  # nothing to point at; every n > 0 is out of bounds
            elif isinstance(buf, bytes):
                src = ctypes.cast(ctypes.c_char_p(buf), ctypes.c_void_p).value or 0
            else:
                try:
                    held.append(ctypes.c_char.from_buffer(buf))
                except TypeError:  # read-only: a copy (not what the chunker gives)
                    with memoryview(buf) as view:
                        buf = bytes(view)
                    src = ctypes.cast(ctypes.c_char_p(buf), ctypes.c_void_p).value or 0
                else:
                    src = ctypes.addressof(held[-1])
            update, ctx, outl = self._update, self._ctx, self._outl

            def decrypt(at: int, n: int) -> int:
                if n & 15 or at < 0 or at + n > size or n > room:
                    _check(at, n, size, room)
                if update(ctx, dst, outl, src + at, n) != 1 or outl.value != n:
                    raise CasError("libcrypto AES-128-CBC decryption failed")  # pragma: no cover
                return n

            yield decrypt
        finally:
            held.clear()

    def decrypt_into(self, buf: Any, at: int, n: int, out: bytearray) -> int:
        _check(at, n, len(buf), len(out))
        if not n:
            return 0
        with self.bound(buf, out) as decrypt:
            return decrypt(at, n)


class _CryptographyCbc:
    """The same through ``cryptography`` (where no libcrypto loads)."""

    __slots__ = ("_aes",)

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        self._aes = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).decryptor()

    @contextlib.contextmanager
    def bound(self, buf: Any, out: bytearray) -> Iterator[Decrypt]:
        update_into = self._aes.update_into
        with memoryview(buf) as view:

            def decrypt(at: int, n: int) -> int:
                _check(at, n, len(view), len(out))
                with view[at : at + n] as part:
                    return int(update_into(part, out))

            yield decrypt

    def decrypt_into(self, buf: Any, at: int, n: int, out: bytearray) -> int:
        with self.bound(buf, out) as decrypt:
            return decrypt(at, n)


def cbc_decryptor(key: bytes, prefer_libcrypto: bool = True) -> CbcDecryptor:
    """An AES-128-CBC decryptor (IV zero) under ``key``: the system libcrypto's, or
    ``cryptography``'s when that cannot be loaded (or ``prefer_libcrypto`` is false)."""
    if len(key) != 16:
        raise CasError("window chunker key is not 16 bytes")
    lib = _lib() if prefer_libcrypto else None
    if lib is not None:
        return _LibcryptoCbc(lib, key)
    return _CryptographyCbc(key)


def uses_libcrypto() -> bool:
    """Whether ``cbc_decryptor`` gives libcrypto's (for tests and diagnostics)."""
    return _lib() is not None
