"""A minimal etcd v3 client over etcd's JSON gateway (``/v3/kv/...``), for the lab's own probes.

Why a second client: the lab must observe the system under test (agent status, raw bad records)
without sharing its code path. A probe that used the same adapter as the agent could not tell a
store bug from an agent bug, and it must keep working with explicit, short timeouts while etcd is
frozen. Only what the lab needs: get, prefix range, put, delete. Values are bytes.

On a secure lab (``controller/lab/secure.py``) it speaks TLS with ``context`` and, since the
gateway authenticates requests by token rather than by certificate, logs in with
``credentials`` (user, password) and sends the token; an expired token is renewed once.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


class EtcdHTTPError(RuntimeError):
    """etcd did not answer (in time) or answered with an error."""


@dataclass(frozen=True, slots=True)
class Item:
    key: str
    value: bytes
    mod_revision: int


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def _prefix_end(prefix: str) -> bytes:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return bytes(raw)


class EtcdHTTP:
    """Talks to one etcd client URL, e.g. ``http://172.31.254.254:2379``."""

    def __init__(
        self,
        url: str,
        timeout: float = 2.0,
        context: ssl.SSLContext | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._context = context
        self._credentials = credentials
        self._token: str | None = None

    def _post(self, path: str, body: dict[str, Any], token: str | None) -> dict[str, Any]:
        headers = {"Authorization": token} if token else {}
        req = urllib.request.Request(
            f"{self.url}{path}", data=json.dumps(body).encode(), method="POST", headers=headers
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._context) as r:
                out = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            raise EtcdHTTPError(f"etcd {self.url}{path}: {exc.code} {text[:200]}") from None
        except (OSError, ValueError, urllib.error.URLError) as exc:
            raise EtcdHTTPError(f"etcd {self.url}{path}: {exc}") from None
        if not isinstance(out, dict):
            raise EtcdHTTPError(f"etcd {self.url}{path}: unexpected answer {out!r}")
        return out

    def _login(self) -> str | None:
        if self._credentials is None:
            return None
        if self._token is None:
            user, password = self._credentials
            out = self._post("/v3/auth/authenticate", {"name": user, "password": password}, None)
            self._token = str(out.get("token", ""))
        return self._token

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._post(path, body, self._login())
        except EtcdHTTPError as exc:
            if self._credentials is None or "token" not in str(exc):
                raise
            self._token = None  # expired (simple tokens live 5 min idle): log in again, once
            return self._post(path, body, self._login())

    def _range(self, body: dict[str, Any]) -> tuple[list[Item], int]:
        out = self._call("/v3/kv/range", body)
        items = [
            Item(
                base64.b64decode(kv["key"]).decode(),
                base64.b64decode(kv.get("value", "")),
                int(kv.get("mod_revision", 0)),
            )
            for kv in out.get("kvs", [])
        ]
        return items, int(out.get("header", {}).get("revision", 0))

    def get(self, key: str) -> Item | None:
        items, _ = self._range({"key": _b64(key)})
        return items[0] if items else None

    def list(self, prefix: str) -> tuple[list[Item], int]:
        """Items under ``prefix`` and the store revision of the read."""
        return self._range({"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))})

    def revision(self) -> int:
        """The current store revision."""
        _, rev = self._range({"key": _b64("\0"), "count_only": True})
        return rev

    def put(self, key: str, value: bytes | str) -> int:
        """Write one key; returns the new revision."""
        out = self._call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})
        return int(out.get("header", {}).get("revision", 0))

    def delete(self, key: str) -> int:
        out = self._call("/v3/kv/deleterange", {"key": _b64(key)})
        return int(out.get("header", {}).get("revision", 0))

    def status_of(self, host: str) -> tuple[dict[str, Any], int] | None:
        """The agent status record of ``host`` (decoded JSON) and its mod revision, or None."""
        item = self.get(f"/heddle/v1/status/{host}")
        if item is None:
            return None
        try:
            value = json.loads(item.value)
        except ValueError:
            return None
        return (value, item.mod_revision) if isinstance(value, dict) else None
