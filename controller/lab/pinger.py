"""A raw-socket ICMP echo pinger for the lab: exact counts, per-packet RTT, first-reply time.

Why not ``ping``: this VM has only busybox ping (no sub-second bookkeeping, no DF flag), and the
tests need exact numbers: every lost sequence number during an agent restart, the monotonic
time of the first reply after an endpoint is written, and a DF probe that fails *locally* with
``EMSGSIZE`` when the packet exceeds the interface MTU (counted in ``errors``).

The socket is created inside the namespace (``netns``) by a short-lived thread, so one process
can ping from many namespaces. ``python -m controller.lab.pinger`` runs the same loop as a
process and prints the result as JSON (for continuous pings that must not share a GIL with the
test driver).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass
from types import FrameType

from controller.lab.nsutil import call_in_netns

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2
IPV6_MTU_DISCOVER = 23
IP_ICMP_HEADER = 28  # 20 bytes IPv4 + 8 bytes ICMP: payload for an L3 size S is S - 28


@dataclass(frozen=True, slots=True)
class PingResult:
    """Outcome of one run. ``received`` counts distinct sequence numbers answered."""

    dst: str
    sent: int
    received: int
    errors: int
    rtts_ms: tuple[float, ...]
    lost: tuple[int, ...]
    first_reply: float | None  # time.monotonic() of the first reply
    first_error: str | None = None

    @property
    def ok(self) -> bool:
        """Everything sent was answered (and something was sent)."""
        return self.sent > 0 and self.received == self.sent and self.errors == 0

    @property
    def loss(self) -> int:
        return self.sent - self.received

    @property
    def longest_loss_run(self) -> int:
        """The most consecutive sequence numbers lost in a row (times the interval: the
        longest gap in connectivity the run saw)."""
        best = run = 0
        prev: int | None = None
        for seq in self.lost:
            run = run + 1 if prev is not None and seq == prev + 1 else 1
            best = max(best, run)
            prev = seq
        return best

    @property
    def avg_ms(self) -> float | None:
        return sum(self.rtts_ms) / len(self.rtts_ms) if self.rtts_ms else None

    def summary(self) -> str:
        avg = f"{self.avg_ms:.3f} ms" if self.avg_ms is not None else "-"
        err = f", {self.errors} errors ({self.first_error})" if self.errors else ""
        return f"{self.received}/{self.sent} received, avg rtt {avg}{err}"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return int(~s & 0xFFFF)


def _echo(ident: int, seq: int, payload: bytes, six: bool = False) -> bytes:
    """An echo request; for ICMPv6 the kernel fills in the checksum (it covers a
    pseudo-header only the kernel knows the source of)."""
    if six:
        return struct.pack("!BBHHH", ICMP6_ECHO_REQUEST, 0, 0, ident, seq) + payload
    head = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    csum = _checksum(head + payload)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, csum, ident, seq) + payload


def open_icmp(netns: str | None, df: bool = False, six: bool = False) -> socket.socket:
    """A raw ICMP (``six``: ICMPv6) socket living in ``netns`` (root netns if None)."""

    def make() -> socket.socket:
        if six:
            s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            if df:
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IP_PMTUDISC_DO)
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            if df:
                s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        s.setblocking(False)
        return s

    return make() if netns is None else call_in_netns(netns, make)


class _Stop:
    """Set by SIGTERM/SIGINT in the command-line mode: stop sending, collect, report."""

    flag = False

    @classmethod
    def handler(cls, signum: int, frame: FrameType | None) -> None:
        cls.flag = True


def ping(
    netns: str | None,
    dst: str,
    count: int | None = 3,
    interval: float = 0.01,
    wait: float = 1.0,
    size: int = 56,
    df: bool = False,
    duration: float | None = None,
    until_first_reply: bool = False,
    timeout: float | None = None,
    source: str | None = None,
) -> PingResult:
    """Send echo requests to ``dst`` from ``netns`` at a fixed rate and collect the replies.

    Stops sending after ``count`` packets or ``duration`` seconds (whichever comes first; at
    least one must be set), or at the first reply with ``until_first_reply`` (then ``timeout``
    bounds the whole run). Afterwards waits up to ``wait`` s for outstanding replies.
    ``size`` is the ICMP payload size (an L3 packet of ``size + 28`` bytes; IPv6, when ``dst``
    is an IPv6 address: ``size + 48``). ``source``: the address to send from (bound; default:
    the kernel's choice).
    """
    if count is None and duration is None and timeout is None:
        raise ValueError("set count, duration or timeout")
    six = ":" in dst
    reply_type = ICMP6_ECHO_REPLY if six else ICMP_ECHO_REPLY
    sock = open_icmp(netns, df=df, six=six)
    if source is not None:
        sock.bind((source, 0))
    ident = random.randrange(1, 0xFFFF)
    payload = bytes(random.getrandbits(8) for _ in range(8)) + b"\x5a" * max(0, size - 8)
    payload = payload[:size]
    sent_at: dict[int, float] = {}
    rtts: dict[int, float] = {}
    errors = 0
    first_error: str | None = None
    first_reply: float | None = None
    sent = 0
    start = time.monotonic()
    stop_sending = start + duration if duration is not None else None
    hard_stop = start + timeout if timeout is not None else None
    next_send = start

    def receive() -> None:
        nonlocal first_reply
        while True:
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            now = time.monotonic()
            ihl = 0 if six else (data[0] & 0x0F) * 4  # an IPv6 raw socket gets no IP header
            if len(data) < ihl + 8 or addr[0] != dst:
                continue
            typ, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl : ihl + 8])
            if typ != reply_type or rid != ident or rseq not in sent_at or rseq in rtts:
                continue
            rtts[rseq] = (now - sent_at[rseq]) * 1000.0
            if first_reply is None:
                first_reply = now

    try:
        while True:
            now = time.monotonic()
            done_sending = (
                (count is not None and sent >= count)
                or (stop_sending is not None and now >= stop_sending)
                or _Stop.flag
            )
            if until_first_reply and first_reply is not None:
                break
            if hard_stop is not None and now >= hard_stop:
                break
            if done_sending:
                break
            if now >= next_send:
                seq = sent & 0xFFFF
                sent_at[seq] = time.monotonic()
                sent += 1
                try:
                    sock.sendto(_echo(ident, seq, payload, six), (dst, 0))
                except OSError as exc:
                    errors += 1
                    first_error = first_error or errno.errorcode.get(exc.errno or 0, str(exc))
                next_send += interval
                if next_send < now - interval:  # we were descheduled: do not burst
                    next_send = now
            timeout_s = max(0.0, next_send - time.monotonic())
            r, _, _ = select.select([sock], [], [], timeout_s)
            if r:
                receive()
        if not until_first_reply:
            deadline = time.monotonic() + wait
            while len(rtts) < sent - errors and time.monotonic() < deadline:
                r, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
                if r:
                    receive()
    finally:
        sock.close()
    lost = tuple(sorted(s for s in sent_at if s not in rtts))
    return PingResult(
        dst=dst,
        sent=sent,
        received=len(rtts),
        errors=errors,
        rtts_ms=tuple(rtts[s] for s in sorted(rtts)),
        lost=lost,
        first_reply=first_reply,
        first_error=first_error,
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: ping from the current netns, print a JSON ``PingResult``; exit 0 if ok."""
    p = argparse.ArgumentParser(prog="python -m controller.lab.pinger")
    p.add_argument("dst")
    p.add_argument("--count", type=int, default=None)
    p.add_argument("--duration", type=float, default=None)
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--size", type=int, default=56)
    p.add_argument("--wait", type=float, default=1.0)
    p.add_argument("--df", action="store_true")
    p.add_argument("--ready-fd", type=int, default=None, help="write one byte here once running")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _Stop.handler)
    signal.signal(signal.SIGINT, _Stop.handler)
    if args.ready_fd is not None:
        os.write(args.ready_fd, b"r")
        os.close(args.ready_fd)
    res = ping(
        None, args.dst, count=args.count, interval=args.interval, wait=args.wait,
        size=args.size, df=args.df, duration=args.duration,
        timeout=None if args.count or args.duration else 3600.0,
    )  # fmt: skip
    out = asdict(res)
    out["rtts_ms"] = list(res.rtts_ms)
    out["lost"] = list(res.lost)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0 if res.ok else 1


def parse_result(text: str) -> PingResult:
    """Inverse of the command-line output."""
    o = json.loads(text)
    return PingResult(
        dst=o["dst"],
        sent=o["sent"],
        received=o["received"],
        errors=o["errors"],
        rtts_ms=tuple(o["rtts_ms"]),
        lost=tuple(o["lost"]),
        first_reply=o["first_reply"],
        first_error=o.get("first_error"),
    )


if __name__ == "__main__":
    sys.exit(main())
