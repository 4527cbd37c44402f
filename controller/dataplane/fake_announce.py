"""A stateful fake of ``Announcing`` (``controller/dataplane/announce.py``) for unit tests:
it records what it would have sent. Held to the real ``Announcer`` by
``tests/integration/test_announce.py`` (the same counts for the same ports)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from controller.dataplane.announce import Sent
from controller.plan.announce import Announcement


class RecordingAnnouncer:
    """``ports()``: the ports that exist and are up now (default: every port does); an
    announcement out of any other is counted as ``gone``, as the real one counts it."""

    def __init__(self, ports: Callable[[], Collection[str]] | None = None) -> None:
        self._ports = ports
        self.sent: list[Announcement] = []
        self.closed = False

    def send(self, announcements: Sequence[Announcement]) -> Sent:
        up = None if self._ports is None else set(self._ports())
        ok = [a for a in announcements if up is None or a.port in up]
        self.sent.extend(ok)
        return Sent(sent=len(ok), gone=len(announcements) - len(ok))

    def close(self) -> None:
        self.closed = True
