"""libnftables through ctypes: JSON commands in, JSON out, no process per call.

Why not ``nft -j -f -``: a process per observation would cost milliseconds on every pass; a
libnftables context answers a listing of heddle's two tables in about 0.1 ms and applies a batch
atomically, exactly as ``nft -f`` does (it is the same library). Debian's ``libnftables1``
(a dependency of ``nftables``) provides ``libnftables.so.1``.

A context talks to the netfilter of the namespace it was created in (its netlink socket is
opened then), so ``Nft(netns)`` creates it inside ``netns`` through ``netns_socket.in_netns``,
as rtnetlink sockets are made. Not thread-safe: one context per driver instance.
"""

from __future__ import annotations

import ctypes
import json
from typing import Any

from controller.dataplane.netns_socket import in_netns
from controller.model.errors import HeddleError

_OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON
_LIB: ctypes.CDLL | None = None


class NftError(HeddleError):
    """libnftables refused a command (the message is nft's); retrying the same batch will not
    help unless the state it conflicted with changed."""


def _lib() -> ctypes.CDLL:
    global _LIB
    if _LIB is None:
        try:
            lib = ctypes.CDLL("libnftables.so.1")
        except OSError as exc:
            raise NftError(f"libnftables is not installed (Debian: nftables): {exc}") from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        _LIB = lib
    return _LIB


class Nft:
    """One libnftables context in ``netns`` (``None``: the caller's), opened on first use."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._ctx: int | None = None

    def _context(self) -> int:
        if self._ctx is not None:
            return self._ctx
        lib = _lib()

        def make() -> int:
            ctx = lib.nft_ctx_new(0)
            lib.nft_ctx_output_set_flags(ctx, _OUTPUT_JSON)
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            # a first command opens the netlink socket here, inside the namespace
            lib.nft_run_cmd_from_buffer(ctx, b'{"nftables": [{"list": {"tables": null}}]}')
            lib.nft_ctx_get_output_buffer(ctx)
            lib.nft_ctx_get_error_buffer(ctx)
            return int(ctx)

        try:
            ctx = in_netns(self.netns, make)
        except OSError as exc:
            raise NftError(f"cannot open nftables in {self.netns}: {exc}") from exc
        self._ctx = ctx
        return ctx

    def run(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Run one JSON batch (atomic when it changes anything); return the ``nftables``
        objects it printed. Raises ``NftError`` with nft's message."""
        lib = _lib()
        ctx = self._context()
        rc = lib.nft_run_cmd_from_buffer(ctx, json.dumps(batch).encode())
        out = lib.nft_ctx_get_output_buffer(ctx) or b""
        err = lib.nft_ctx_get_error_buffer(ctx) or b""
        if rc != 0:
            raise NftError(err.decode(errors="replace").strip() or f"nft failed (rc {rc})")
        objects: list[dict[str, Any]] = []
        for line in out.decode(errors="replace").splitlines():
            if line.strip():
                objects += json.loads(line).get("nftables", [])
        return objects

    def close(self) -> None:
        """Free the context. Idempotent; reopened on next use."""
        if self._ctx is not None:
            _lib().nft_ctx_free(self._ctx)
            self._ctx = None
