"""Bounded, total JSON decoding: the one way heddle turns untrusted bytes into a JSON object.

Anything read from etcd or from the plugin socket may have been written by a careless or hostile
client. ``load_object`` is total: whatever the bytes, it returns a ``dict`` or raises
``InvalidRecord`` -- never ``RecursionError`` (deep nesting), ``OverflowError``, ``MemoryError``
or anything else that would escape a caller's ``except InvalidRecord`` and stop a watcher or a
request thread. Pure.

Why each guard:

* a size limit *before* parsing: a record is a few hundred bytes; a megabyte value must cost a
  length check, not a parse, and must never be copied into a message;
* ``RecursionError``: ``json.loads`` recurses once per nesting level (``[[[[...]]]]``);
* non-finite numbers (``NaN``, ``Infinity``, ``1e400`` which parses as ``inf``) are refused:
  no field of the schema can hold one, and ``int(inf)`` raises ``OverflowError`` later;
* integers of more than 4,300 digits make ``json.loads`` raise ``ValueError``: caught.
"""

from __future__ import annotations

import json
import math
from typing import Any

from controller.model.errors import InvalidRecord, brief

#: Largest value accepted for a record of the public schema (records are < 1 KiB).
MAX_RECORD_BYTES = 16 * 1024


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {brief(text)} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)
"""One decoder for every call: ``json.loads`` with hooks builds a new one each time, a third
of a small record's decode. It holds no state between calls (as ``json.loads``'s own shared
default decoder does not), so threads share it."""


def load_value(raw: bytes | str, what: str, max_bytes: int = MAX_RECORD_BYTES) -> Any:
    """Decode ``raw`` as one JSON value of at most ``max_bytes``; see the module docstring.

    Raises ``InvalidRecord`` (naming ``what``, quoting at most a short prefix) and nothing else.
    Retrying cannot help: the same bytes give the same answer.
    """
    if len(raw) > max_bytes:
        raise InvalidRecord(f"{what}: value of {len(raw)} bytes exceeds the limit of {max_bytes}")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return _DECODER.decode(text)
    except RecursionError:
        raise InvalidRecord(f"{what}: JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError, OverflowError, MemoryError) as exc:
        raise InvalidRecord(f"{what}: invalid JSON ({brief(str(exc), 120)})") from None


def load_object(raw: bytes | str, what: str, max_bytes: int = MAX_RECORD_BYTES) -> dict[str, Any]:
    """``load_value`` that also requires a JSON object. Raises ``InvalidRecord`` only."""
    value = load_value(raw, what, max_bytes)
    if not isinstance(value, dict):
        raise InvalidRecord(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value
