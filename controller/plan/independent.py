"""``Independent``: the part every op shares that needs no link and creates none (a delete, a
sysctl, the filters, an OVSDB key), so ``apply_all`` (``controller/dataplane/backend.py``)
orders nothing by it and skips nothing after it. Pure."""

from __future__ import annotations

_NONE: frozenset[str] = frozenset()


class Independent:
    """Mixin for a frozen op dataclass: ``needs`` and ``provides`` are empty."""

    __slots__ = ()

    @property
    def needs(self) -> frozenset[str]:
        return _NONE

    @property
    def provides(self) -> frozenset[str]:
        return _NONE
