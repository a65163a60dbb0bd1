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

import ctypes
from typing import Any, Protocol

from cas.errors import CasError


class CbcDecryptor(Protocol):
    """Decrypts ``buf[at:at + n]`` (``n`` a multiple of 16) into ``out``; returns ``n``."""

    def decrypt_into(self, buf: Any, at: int, n: int, out: bytearray) -> int: ...


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

    def decrypt_into(self, buf: Any, at: int, n: int, out: bytearray) -> int:
        if n & 15 or at < 0 or at + n > len(buf) or n > len(out):
            raise ValueError("CBC decryption out of bounds or not whole blocks")
        if not n:
            return 0
        # pointers into the buffers, not copies; an exported buffer is let go at once
        # (a mapping with an export cannot be closed)
        dst = ctypes.c_char.from_buffer(out)
        try:
            if isinstance(buf, bytes):
                src = ctypes.cast(ctypes.c_char_p(buf), ctypes.c_void_p).value or 0
                ok = self._update(self._ctx, ctypes.addressof(dst), self._outl, src + at, n)
            else:
                try:
                    held = ctypes.c_char.from_buffer(buf, at)
                except TypeError:  # a read-only buffer: decrypt a copy of the part
                    with memoryview(buf) as view, view[at : at + n] as part:
                        return self.decrypt_into(bytes(part), 0, n, out)
                try:
                    ok = self._update(
                        self._ctx, ctypes.addressof(dst), self._outl, ctypes.addressof(held), n
                    )
                finally:
                    del held
        finally:
            del dst
        if ok != 1 or self._outl.value != n:  # pragma: no cover - libcrypto failed
            raise CasError("libcrypto AES-128-CBC decryption failed")
        return n


class _CryptographyCbc:
    """The same through ``cryptography`` (where no libcrypto loads)."""

    __slots__ = ("_aes",)

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        self._aes = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).decryptor()

    def decrypt_into(self, buf: Any, at: int, n: int, out: bytearray) -> int:
        if n & 15 or at < 0 or at + n > len(buf) or n > len(out):
            raise ValueError("CBC decryption out of bounds or not whole blocks")
        with memoryview(buf) as view, view[at : at + n] as part:
            return int(self._aes.update_into(part, out))


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
