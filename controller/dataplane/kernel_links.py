"""``LinkWriter``: the kernel backend's link ops -- ``EnsureBridge``, ``EnsureVxlan``,
``EnsureVeth``, ``ConfigureEndpoint``, ``DelLink`` -- through ``HostSockets``.

Creation goes over raw rtnetlink when ``fast`` (``controller/dataplane/link_netlink.py``: a
link is born complete, marked, in its bridge, in its namespace); converging a link that exists,
and everything with ``fast`` off, goes through pyroute2. Every op is idempotent and refuses a
link heddle does not own (``OpFailed``); a link it creates carries the owner marker from its
first moment, or is deleted again. Raises ``OpFailed`` / ``NetlinkError`` / ``OSError``.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from typing import Any

from pyroute2 import NetlinkError

from controller.dataplane import link_netlink
from controller.dataplane.backend import OpFailed
from controller.dataplane.kernel_egress import set_bridge_address
from controller.dataplane.kernel_host import HostSockets
from controller.dataplane.netns_handles import netns_fd, refuse_host_namespace
from controller.dataplane.netns_socket import enable_ipv6
from controller.dataplane.pyroute2_msgs import (
    IFA_F_NODAD,
    NO_IPV6_ADDRESSES,
    code,
    get_link,
    kind,
    owned,
    vxlan_attrs,
)
from controller.model.kernel_state import VxlanAttrs
from controller.model.naming import OWNER_ALIAS
from controller.plan.kernel_ops import (
    ConfigureEndpoint,
    DelLink,
    EnsureBridge,
    EnsureVeth,
    EnsureVxlan,
)

log = logging.getLogger("heddle.kernel")


def _cidr(cidr: str) -> tuple[str, int]:
    ip, length = cidr.split("/")
    return ip, int(length)


class LinkWriter:
    """Applies link ops (see the module docstring)."""

    def __init__(self, sockets: HostSockets, fast: bool) -> None:
        self._s = sockets
        self.fast = fast

    # -- bridges and VXLAN devices ------------------------------------------------------------

    def ensure_bridge(self, op: EnsureBridge) -> None:
        if self.fast and self._s.raw_mine(op.name, "bridge") is None:
            link_netlink.create_marked(
                self._s.rtnl(), link_netlink.create_bridge(op), op.name, False,
                lambda index: [link_netlink.replace_address(index, a)
                               for a in sorted(op.addresses)],
            )  # fmt: skip
            return
        msg = self._s.mine(op.name, "bridge")
        if msg is None:
            idx = self._create(op.name, kind="bridge", mtu=op.mtu, br_mcast_snooping=0)
        else:
            idx = int(msg["index"])
        host = self._s.host()
        host.link("set", index=idx, kind="bridge", br_mcast_snooping=0, mtu=op.mtu, state="up")
        set_bridge_address(host, idx, op.mac, op.addresses)

    def ensure_vxlan(self, op: EnsureVxlan) -> None:
        if self.fast and self._s.raw_mine(op.name, "vxlan") is None:
            bridge = self._s.raw_mine(op.bridge, "bridge")
            if bridge is None:
                raise OpFailed(f"no bridge {op.bridge}")
            req = link_netlink.create_vxlan(op, bridge.index)
            self._s.index[op.name] = link_netlink.create_marked(self._s.rtnl(), req, op.name, True)
            self._ipv6_on(op.name)
            return
        br = self._s.bridge_index(op.bridge)
        want = VxlanAttrs(vni=op.vni, local=op.vtep, port=op.port, learning=False, proxy=True)
        msg = self._s.mine(op.name, "vxlan")
        if msg is None:
            local = {"vxlan_local6" if ":" in op.vtep else "vxlan_local": op.vtep}
            idx = self._create(op.name, kind="vxlan", vxlan_id=op.vni, vxlan_port=op.port,
                               vxlan_learning=0, vxlan_proxy=1, mtu=op.mtu, master=br,
                               **local)  # fmt: skip
            self._ipv6_on(op.name)
        else:
            have = vxlan_attrs(msg)
            if have != want:
                raise OpFailed(f"vxlan {op.name} has {have}, want {want}: delete it first")
            idx = int(msg["index"])
        self._s.host().link("set", index=idx, master=br, mtu=op.mtu, state="up")
        self._no_learning(idx)

    def _ipv6_on(self, vxlan: str) -> None:
        """IPv6 on for a new VXLAN device: a host whose defaults turn it off (a common
        hardening) would refuse its IPv6 neighbour entries ("IPv6 is disabled on this
        device"; docs/platform.md K15). Harmless for an IPv4 network: the device has no IPv6
        address (``addr_gen_mode none``, set before it came up) and sends nothing."""
        try:
            enable_ipv6(self._s.netns, vxlan)
        except OSError as exc:  # IPv6 compiled out or forbidden: IPv4 networks still work
            log.warning("cannot turn IPv6 on for %s: %s", vxlan, exc)

    # -- veths and endpoints ------------------------------------------------------------------

    def ensure_veth(self, op: EnsureVeth) -> None:
        if self.fast and self._s.raw_mine(op.host_name, "veth") is None:
            self._s.index[op.host_name] = self._create_pair_raw(op)
            return  # born complete: in the bridge, marked, learning off, up
        ipr = self._s.host()
        br = self._s.bridge_index(op.bridge)
        msg = self._s.mine(op.host_name, "veth")
        if msg is None and op.netns is not None:
            idx = self._create_veth_into(op)
        elif msg is None:
            idx = self._create(
                op.host_name,
                kind="veth",
                mtu=op.mtu,
                peer={"ifname": op.peer_name, "address": op.peer_mac, "mtu": op.mtu},
            )
            self._mark(op.peer_name)
        else:
            idx = int(msg["index"])
        ipr.link("set", index=idx, master=br, mtu=op.mtu, state="up")
        self._no_learning(idx)
        peer = get_link(ipr, op.peer_name)
        if peer is not None and owned(peer) and kind(peer) == "veth":
            ipr.link("set", index=peer["index"], address=op.peer_mac, mtu=op.mtu)

    def configure_endpoint(self, op: ConfigureEndpoint) -> None:
        refuse_host_namespace(op.netns, self._s.netns)
        six = any(":" in a for a in op.addresses)
        if self.fast:
            inside = self._s.raw_in(op.netns)
            if inside is None:
                raise OpFailed(f"network namespace {op.netns} does not exist")
            if six:  # before configure_inside's address: refused while IPv6 is off
                enable_ipv6(op.netns, op.ifname)
            if link_netlink.configure_inside(inside, op):
                return  # else the peer is still to be moved in: the path below
        ns = self._s.ns_handle(op.netns)
        if ns is None:
            raise OpFailed(f"network namespace {op.netns} does not exist")
        msg = get_link(ns, op.ifname)
        if msg is not None and not owned(msg):
            raise OpFailed(f"{op.netns}/{op.ifname} exists and is not owned by heddle")
        if msg is None:
            moved = get_link(ns, op.peer_name)
            if moved is None:
                ipr = self._s.host()
                peer = get_link(ipr, op.peer_name)
                if peer is None or not owned(peer):
                    raise OpFailed(
                        f"veth peer {op.peer_name} not found in the host namespace or {op.netns}"
                    )
                with netns_fd(op.netns) as fd:
                    ipr.link("set", index=peer["index"], net_ns_fd=fd)
                self._s.index.pop(op.peer_name, None)
                moved = get_link(ns, op.peer_name)
                if moved is None:
                    raise OpFailed(f"veth peer {op.peer_name} did not arrive in {op.netns}")
            idx = int(moved["index"])
            ns.link("set", index=idx, state="down", ifname=op.ifname)
            # A move re-creates the device's IPv6 state with the namespace defaults.
            ns.link("set", index=idx, IFLA_AF_SPEC=NO_IPV6_ADDRESSES)
        else:
            idx = int(msg["index"])
        ns.link("set", index=idx, address=op.mac, mtu=op.mtu)
        if six and not enable_ipv6(op.netns, op.ifname):
            raise OpFailed(f"{op.netns}/{op.ifname} vanished while configuring it")
        ns.link("set", index=idx, state="up")
        for cidr in op.addresses:
            ip, length = _cidr(cidr)
            six = ":" in ip
            ns.addr("replace", index=idx, address=ip, prefixlen=length,
                    **({"flags": IFA_F_NODAD} if six else {}))  # fmt: skip
        for gw in op.gateways:
            dst = "::/0" if ":" in gw else "0.0.0.0/0"
            ns.route("replace", dst=dst, gateway=gw, oif=idx)

    # -- deletes ------------------------------------------------------------------------------

    def del_link(self, op: DelLink) -> None:
        ipr = self._s.host()
        msg = get_link(ipr, op.name)
        self._s.index.pop(op.name, None)
        if msg is None:
            return
        if not owned(msg):
            raise OpFailed(f"link {op.name} is not owned by heddle; refusing to delete it")
        try:
            ipr.link("del", index=msg["index"])
        except NetlinkError as exc:
            if code(exc) not in (errno.ENODEV, errno.ENOENT):
                raise
        self._s.index.clear()  # a veth takes its peer with it

    def del_links(self, ops: Sequence[DelLink]) -> list[str | None]:
        """Delete the owned links ``ops`` name in one kernel operation
        (``link_netlink.delete_together``); absent is success, a link that is not heddle's is
        refused (that op fails, the others go on). One failure reason (or None) per op."""
        if len(ops) == 1:
            try:
                self.del_link(ops[0])
            except OpFailed as exc:
                return [exc.reason]
            return [None]
        raw = self._s.rtnl()
        answers = raw.exchange([link_netlink.get_link(op.name) for op in ops])
        results: list[str | None] = []
        mine: list[int] = []  # link indexes
        at: list[int] = []  # their positions in ops
        pairs = {  # a veth whose peer is beside it in this namespace: the pair goes as one
            lk.index: lk.link for _, lk in answers if lk is not None and lk.kind == "veth"
            and lk.link_here and lk.link
        }  # fmt: skip
        for op, (got, link) in zip(ops, answers, strict=True):
            self._s.index.pop(op.name, None)
            if got == errno.ENODEV:
                results.append(None)
            elif link is None:
                results.append(f"netlink: reading {op.name}: {os.strerror(got or errno.EIO)}")
            elif link.alias != OWNER_ALIAS:
                results.append(f"link {op.name} is not owned by heddle; refusing to delete it")
            else:
                at.append(len(results))
                results.append(None)
                peer = pairs.get(link.index)
                if peer is None or peer not in mine or pairs.get(peer) != link.index:
                    mine.append(link.index)  # (a peer already listed goes with its veth)
        self._s.index.clear()  # a veth takes its peer with it
        try:
            link_netlink.delete_together(raw, mine)
        except OpFailed as exc:
            for i in at:
                results[i] = exc.reason
        return results

    # -- helpers ------------------------------------------------------------------------------

    def _no_learning(self, idx: int) -> None:
        """Learning off on bridge port ``idx``: the bridge's FDB holds only what the agent put
        there (static entries), so no frame can move a MAC to another port."""
        self._s.host().brport("set", index=idx, learning=0)

    def _mark(self, name: str) -> int:
        """Set the owner marker on a link just created; delete it again if that fails (an
        unmarked link would block its name forever)."""
        ipr = self._s.host()
        msg = get_link(ipr, name)
        if msg is None:
            raise OpFailed(f"link {name} vanished right after it was created")
        idx = int(msg["index"])
        try:
            ipr.link("set", index=idx, ifalias=OWNER_ALIAS)
            ipr.link("set", index=idx, IFLA_AF_SPEC=NO_IPV6_ADDRESSES)
        except NetlinkError:
            ipr.link("del", index=idx)
            raise
        return idx

    def _create(self, name: str, **kwarg: Any) -> int:
        try:
            self._s.host().link("add", ifname=name, **kwarg)
        except NetlinkError as exc:
            if code(exc) == errno.EEXIST:
                raise OpFailed(
                    f"cannot create {name}: a link of that name (or of its veth peer's name, "
                    "or a VXLAN device with the same VNI and port) already exists"
                ) from exc
            raise
        return self._mark(name)

    def _create_pair_raw(self, op: EnsureVeth) -> int:
        """``_create_veth_into`` and the rest of ``ensure_veth`` over raw rtnetlink
        (``link_netlink.create_pair``): the pair's host side, its index."""
        bridge = self._s.raw_mine(op.bridge, "bridge")
        if bridge is None:
            raise OpFailed(f"no bridge {op.bridge}")
        if op.netns is None:  # Docker's: the peer is born beside it, Docker moves it
            return link_netlink.create_pair(self._s.rtnl(), op, bridge.index)
        refuse_host_namespace(op.netns, self._s.netns)
        inside = self._s.raw_in(op.netns)
        if inside is None:
            raise OpFailed(f"network namespace {op.netns} does not exist")
        with netns_fd(op.netns) as fd:
            return link_netlink.create_pair(self._s.rtnl(), op, bridge.index, (inside, fd))

    def _create_veth_into(self, op: EnsureVeth) -> int:
        """Create the pair with its peer born inside ``op.netns`` as ``op.ifname`` and mark
        both ends; on any failure nothing is left behind (deleting one end deletes both)."""
        assert op.netns is not None
        refuse_host_namespace(op.netns, self._s.netns)
        ns = self._s.ns_handle(op.netns)
        if ns is None:
            raise OpFailed(f"network namespace {op.netns} does not exist")
        if get_link(ns, op.ifname) is not None:
            raise OpFailed(f"{op.netns}/{op.ifname} exists and is not owned by heddle")
        with netns_fd(op.netns) as fd:
            peer = {"ifname": op.ifname, "address": op.peer_mac, "mtu": op.mtu, "net_ns_fd": fd}
            idx = self._create(op.host_name, kind="veth", mtu=op.mtu, peer=peer)
        try:
            inner = get_link(ns, op.ifname)
            if inner is None:
                raise OpFailed(f"veth peer did not appear as {op.netns}/{op.ifname}")
            ns.link("set", index=inner["index"], ifalias=OWNER_ALIAS)
            ns.link("set", index=inner["index"], IFLA_AF_SPEC=NO_IPV6_ADDRESSES)
        except (NetlinkError, OpFailed):
            self._s.host().link("del", index=idx)
            self._s.index.pop(op.host_name, None)
            raise
        return idx
