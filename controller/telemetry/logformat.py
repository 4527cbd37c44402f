"""Log line formats: ``text`` (for people) and ``json`` (one object per line, for shippers).

A JSON line has ``ts`` (RFC 3339, UTC), ``level``, ``logger``, ``msg`` and, for lines that carry
structured fields (the per-pass line: ``extra={"heddle": {...}}``), those fields at the top
level, so a shipper can index ``pass_id`` or ``duration_ms`` without parsing ``msg``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
RESERVED = frozenset({"ts", "level", "logger", "msg", "exc"})


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON. Never raises for a loggable record."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        obj: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "heddle", None)
        if isinstance(fields, dict):
            obj.update({k: v for k, v in fields.items() if k not in RESERVED})
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str)


def configure(fmt: str, level: int) -> None:
    """Set up the root logger on stderr with ``fmt`` (``text`` or ``json``)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
