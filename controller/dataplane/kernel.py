"""``KernelDataPlane``: the kernel (Linux bridge + VXLAN) backend, through pyroute2 only.

No ``ip``/``bridge``/``sysctl`` binaries. Facts this module relies on (notes/kernel_vxlan.md):
netns handles are always opened with ``flags=0`` so a typo never *creates* a namespace (P2); a
veth peer cannot be brought up in the create request, so the endpoint side is configured from
inside its namespace (P5); ``master``/``fdb``/``neigh`` take ifindexes (P7); ``fdb('replace')``
gets explicit ``state`` and ``NTF_SELF`` or it lands in the bridge's FDB (P9); bridges get
``mcast_snooping 0`` (G4). ``bridge-nf-call-iptables`` (G5) is per netns and global, so it is
left to whoever owns the host namespace (the lab).

Sockets: one ``IPRoute`` for the host namespace (this process's own, or ``netns=`` for tests
and the lab), opened on first use and kept; one per endpoint namespace, cached and re-opened
when the name now points at a different namespace (inode changed) or dropped when it is gone.
``close()`` closes them all. Not thread-safe: one reconciler thread per instance.

Failure policy (shared with ``FakeKernel``, see ``backend.apply_all``): an op that fails is
recorded and ops that depend on it are skipped, every other op is still applied, and
``apply`` raises one ``DataPlaneError`` listing them at the end. So a missing endpoint netns
fails that endpoint's ``ConfigureEndpoint`` only.

Known gap: the owner marker (ifalias) cannot be set in the create request (the kernel ignores
it there), so it is set right after; a crash in between leaves an unmarked ``hd*`` link that
heddle then refuses to adopt (reported on every pass) until an operator deletes it.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

from pyroute2 import IPRoute, NetlinkError

from controller.dataplane.backend import DataPlaneError, OpFailed, apply_all
from controller.dataplane.kernel_state import (
    EndpointSide,
    FdbEntry,
    KernelState,
    LinkState,
    NeighEntry,
    VxlanAttrs,
)
from controller.model.naming import OWNER_ALIAS, PREFIX
from controller.model.view import HostView
from controller.plan.kernel import endpoint_keys, plan_kernel
from controller.plan.kernel_ops import (
    ZERO_MAC,
    AddFlood,
    ConfigureEndpoint,
    DelFdb,
    DelLink,
    DelNeigh,
    EnsureBridge,
    EnsureVeth,
    EnsureVxlan,
    KernelOp,
    PutFdb,
    PutNeigh,
)

IFF_UP = 0x1
NTF_SELF = 0x02
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NETNS_DIR = "/run/netns"
MAIN_TABLE = 254

Msg = Any  # a parsed pyroute2 netlink message (untyped library)


def _netns_inode(name: str) -> int | None:
    try:
        return os.stat(os.path.join(NETNS_DIR, name)).st_ino
    except FileNotFoundError:
        return None


def _code(exc: NetlinkError) -> int:
    return int(getattr(exc, "code", 0) or 0)


def _get_link(ipr: IPRoute, name: str) -> Msg | None:
    """The link called ``name`` or ``None`` (one request)."""
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if _code(exc) in (errno.ENODEV, errno.ENOENT):
            return None
        raise


def _kind(msg: Msg) -> str:
    info = msg.get("IFLA_LINKINFO")
    return str(info.get("IFLA_INFO_KIND")) if info is not None else ""


def _info_data(msg: Msg) -> Msg | None:
    info = msg.get("IFLA_LINKINFO")
    return info.get("IFLA_INFO_DATA") if info is not None else None


def _owned(msg: Msg) -> bool:
    return bool(msg.get("IFLA_IFALIAS") == OWNER_ALIAS)


def _vxlan_attrs(msg: Msg) -> VxlanAttrs | None:
    data = _info_data(msg)
    if data is None or _kind(msg) != "vxlan":
        return None
    return VxlanAttrs(
        vni=int(data.get("IFLA_VXLAN_ID")),
        local=data.get("IFLA_VXLAN_LOCAL"),
        port=int(data.get("IFLA_VXLAN_PORT") or 0),
        learning=bool(data.get("IFLA_VXLAN_LEARNING")),
        proxy=bool(data.get("IFLA_VXLAN_PROXY")),
    )


class KernelDataPlane:
    """The kernel backend: ``observe`` / ``plan`` (pure, ``plan_kernel``) / ``apply`` / ``close``.

    ``vtep`` is this host's underlay address (kept for logs; the planner reads it from the view).
    ``netns``: the namespace to manage as "the host"; ``None`` (production) means the agent's
    own namespace. Raises nothing at construction; sockets open on first use.
    """

    def __init__(self, vtep: str, *, netns: str | None = None) -> None:
        self.vtep = vtep
        self.netns = netns
        self._ipr: IPRoute | None = None
        self._ns: dict[str, tuple[int, IPRoute]] = {}
        self._index: dict[str, int] = {}

    # -- sockets ----------------------------------------------------------------------------

    def _host(self) -> IPRoute:
        if self._ipr is None:
            self._ipr = IPRoute() if self.netns is None else IPRoute(netns=self.netns, flags=0)
        return self._ipr

    def _ns_handle(self, name: str) -> IPRoute | None:
        """A cached socket in endpoint netns ``name``; ``None`` if the namespace does not exist.

        Never creates a namespace (``flags=0``). A cached socket whose name now refers to a
        different namespace (deleted and re-created) is replaced."""
        inode = _netns_inode(name)
        cached = self._ns.get(name)
        if cached is not None and cached[0] != inode:
            cached[1].close()
            del self._ns[name]
            cached = None
        if inode is None:
            return None
        if cached is None:
            try:
                ipr = IPRoute(netns=name, flags=0)
            except FileNotFoundError:
                return None
            self._ns[name] = (inode, ipr)
            return ipr
        return cached[1]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every socket. Idempotent; the instance reopens on next use."""
        for _, ipr in self._ns.values():
            ipr.close()
        self._ns.clear()
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    # -- observe ----------------------------------------------------------------------------

    def observe(self, view: HostView) -> KernelState:
        """One link dump, one FDB dump and one IPv4 neighbour dump of the host namespace, plus
        the endpoint sides of ``view`` (a link, address and route dump per endpoint netns).

        Read-only. Raises ``DataPlaneError`` if the host namespace cannot be read."""
        try:
            return self._observe(view)
        except (NetlinkError, OSError) as exc:
            raise DataPlaneError("observe", f"cannot read kernel state: {exc}") from exc

    def _observe(self, view: HostView) -> KernelState:
        ipr = self._host()
        dump = ipr.link("dump")
        names = {m["index"]: m.get("IFLA_IFNAME") for m in dump}
        links: dict[str, LinkState] = {}
        vx_index: dict[int, str] = {}
        for m in dump:
            name = m.get("IFLA_IFNAME")
            if not isinstance(name, str) or not name.startswith(PREFIX):
                continue
            kind = _kind(m)
            snooping = None
            if kind == "bridge":
                data = _info_data(m)
                snooping = bool(data.get("IFLA_BR_MCAST_SNOOPING")) if data is not None else None
            link = LinkState(
                name=name,
                kind=kind,
                owned=_owned(m),
                index=m["index"],
                mtu=int(m.get("IFLA_MTU")),
                mac=str(m.get("IFLA_ADDRESS") or ""),
                up=bool(m["flags"] & IFF_UP),
                master=names.get(m.get("IFLA_MASTER")) if m.get("IFLA_MASTER") else None,
                mcast_snooping=snooping,
                vxlan=_vxlan_attrs(m),
            )
            links[name] = link
            if link.owned and kind == "vxlan":
                vx_index[link.index] = name
        self._index = {name: index for index, name in vx_index.items()}

        fdb: dict[str, set[FdbEntry]] = {n: set() for n in vx_index.values()}
        neigh: dict[str, set[NeighEntry]] = {n: set() for n in vx_index.values()}
        if vx_index:
            for m in ipr.fdb("dump"):
                dev = vx_index.get(m["ifindex"])
                if dev is None or not m["flags"] & NTF_SELF:
                    continue
                dst = m.get("NDA_DST")
                if dst is not None:
                    fdb[dev].add(FdbEntry(str(m.get("NDA_LLADDR")), str(dst)))
            for m in ipr.neigh("dump", family=socket.AF_INET):
                dev = vx_index.get(m["ifindex"])
                if dev is None:
                    continue
                neigh[dev].add(
                    NeighEntry(
                        str(m.get("NDA_DST")),
                        str(m.get("NDA_LLADDR") or ""),
                        bool(m["state"] & NUD_PERMANENT),
                    )
                )
        return KernelState(
            links=links,
            fdb={k: frozenset(v) for k, v in fdb.items()},
            neigh={k: frozenset(v) for k, v in neigh.items()},
            endpoints=self._observe_endpoints(endpoint_keys(view)),
        )

    def _observe_endpoints(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], EndpointSide]:
        out: dict[tuple[str, str], EndpointSide] = {}
        by_ns: dict[str, list[str]] = {}
        for netns, ifname in keys:
            by_ns.setdefault(netns, []).append(ifname)
        for netns, ifnames in by_ns.items():
            ns = self._ns_handle(netns)
            if ns is None:
                for ifname in ifnames:
                    out[netns, ifname] = EndpointSide(netns, ifname, netns_exists=False)
                continue
            by_name = {m.get("IFLA_IFNAME"): m for m in ns.link("dump")}
            addrs: dict[int, set[str]] = {}
            for a in ns.addr("dump", family=socket.AF_INET):
                addrs.setdefault(a["index"], set()).add(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}")
            gateway = None
            for r in ns.route("dump", family=socket.AF_INET):
                if r["dst_len"] == 0 and r.get("RTA_TABLE") == MAIN_TABLE:
                    gw = r.get("RTA_GATEWAY")
                    if gw is not None:
                        gateway = str(gw)
                        break
            for ifname in ifnames:
                m = by_name.get(ifname)
                if m is None:
                    out[netns, ifname] = EndpointSide(netns, ifname)
                    continue
                out[netns, ifname] = EndpointSide(
                    netns=netns,
                    ifname=ifname,
                    present=True,
                    owned=_owned(m),
                    mac=str(m.get("IFLA_ADDRESS") or ""),
                    mtu=int(m.get("IFLA_MTU")),
                    up=bool(m["flags"] & IFF_UP),
                    addresses=frozenset(addrs.get(m["index"], ())),
                    gateway=gateway,
                )
        return out

    # -- plan / apply -----------------------------------------------------------------------

    def plan(self, view: HostView, actual: KernelState) -> tuple[KernelOp, ...]:
        """Pure; see ``controller.plan.kernel.plan_kernel``."""
        return plan_kernel(view, actual)

    def apply(self, ops: Sequence[KernelOp]) -> None:
        """Apply ``ops`` in order (see the module docstring for the failure policy).

        Raises ``DataPlaneError`` naming the first failed op and listing all failures."""
        try:
            apply_all(ops, self._apply_one)
        finally:
            self._index.clear()  # the next observe rebuilds it

    def _apply_one(self, op: KernelOp) -> None:
        try:
            self._dispatch(op)
        except NetlinkError as exc:
            self._index.clear()
            raise OpFailed(f"netlink: {os.strerror(_code(exc))} ({exc})") from exc
        except OSError as exc:
            self._index.clear()
            raise OpFailed(str(exc)) from exc

    def _dispatch(self, op: KernelOp) -> None:
        match op:
            case EnsureBridge():
                self._ensure_bridge(op)
            case EnsureVxlan():
                self._ensure_vxlan(op)
            case EnsureVeth():
                self._ensure_veth(op)
            case ConfigureEndpoint():
                self._configure_endpoint(op)
            case DelLink():
                self._del_link(op)
            case PutFdb():
                self._host().fdb(
                    "replace",
                    ifindex=self._vx_index(op.dev),
                    lladdr=op.mac,
                    dst=op.dst,
                    state=NUD_PERMANENT | NUD_NOARP,
                    flags=NTF_SELF,
                )
            case AddFlood():
                self._tolerate(
                    errno.EEXIST,
                    "append",
                    ifindex=self._vx_index(op.dev),
                    lladdr=ZERO_MAC,
                    dst=op.dst,
                )
            case DelFdb():
                idx = self._vx_index(op.dev, missing_ok=True)
                if idx is not None:
                    self._tolerate(errno.ENOENT, "del", ifindex=idx, lladdr=op.mac, dst=op.dst)
            case PutNeigh():
                self._host().neigh(
                    "replace",
                    ifindex=self._vx_index(op.dev),
                    dst=op.ip,
                    lladdr=op.mac,
                    state=NUD_PERMANENT,
                )
            case DelNeigh():
                idx = self._vx_index(op.dev, missing_ok=True)
                if idx is not None:
                    try:
                        self._host().neigh("del", ifindex=idx, dst=op.ip)
                    except NetlinkError as exc:
                        if _code(exc) != errno.ENOENT:
                            raise

    def _tolerate(self, code: int, command: str, **kwarg: Any) -> None:
        try:
            self._host().fdb(command, **kwarg)
        except NetlinkError as exc:
            if _code(exc) != code:
                raise

    # -- link helpers -----------------------------------------------------------------------

    def _mine(self, name: str, kind: str) -> Msg | None:
        """The owned link ``name`` of ``kind``, ``None`` if absent; ``OpFailed`` if it is
        someone else's (never adopted) or of another kind."""
        msg = _get_link(self._host(), name)
        if msg is None:
            self._index.pop(name, None)
            return None
        if not _owned(msg):
            raise OpFailed(f"link {name} exists and is not owned by heddle; refusing to adopt it")
        if _kind(msg) != kind:
            raise OpFailed(f"link {name} is a {_kind(msg) or 'link'}, not a {kind}")
        if kind == "vxlan":
            self._index[name] = msg["index"]
        return msg

    def _vx_index(self, dev: str, missing_ok: bool = False) -> int | None:
        """Ifindex of owned VXLAN device ``dev``: from the cache filled by ``observe`` and by
        creates (so 5,000 FDB writes cost no lookups), else one ``get``. The cache is dropped
        on any failure and after every link delete."""
        idx = self._index.get(dev)
        if idx is not None:
            return idx
        msg = self._mine(dev, "vxlan")
        if msg is None:
            if missing_ok:
                return None
            raise OpFailed(f"no vxlan device {dev}")
        return int(msg["index"])

    def _bridge_index(self, name: str) -> int:
        msg = self._mine(name, "bridge")
        if msg is None:
            raise OpFailed(f"no bridge {name}")
        return int(msg["index"])

    def _mark(self, name: str) -> int:
        """Set the owner marker on a link just created; delete it again if that fails (an
        unmarked link would block its name forever)."""
        ipr = self._host()
        msg = _get_link(ipr, name)
        if msg is None:
            raise OpFailed(f"link {name} vanished right after it was created")
        idx = int(msg["index"])
        try:
            ipr.link("set", index=idx, ifalias=OWNER_ALIAS)
        except NetlinkError:
            ipr.link("del", index=idx)
            raise
        return idx

    def _create(self, name: str, **kwarg: Any) -> int:
        try:
            self._host().link("add", ifname=name, **kwarg)
        except NetlinkError as exc:
            if _code(exc) == errno.EEXIST:
                raise OpFailed(f"link {name} appeared concurrently; retry next pass") from exc
            raise
        return self._mark(name)

    def _ensure_bridge(self, op: EnsureBridge) -> None:
        msg = self._mine(op.name, "bridge")
        if msg is None:
            idx = self._create(op.name, kind="bridge", mtu=op.mtu, br_mcast_snooping=0)
        else:
            idx = int(msg["index"])
        self._host().link(
            "set", index=idx, kind="bridge", br_mcast_snooping=0, mtu=op.mtu, state="up"
        )

    def _ensure_vxlan(self, op: EnsureVxlan) -> None:
        br = self._bridge_index(op.bridge)
        want = VxlanAttrs(vni=op.vni, local=op.vtep, port=op.port, learning=False, proxy=True)
        msg = self._mine(op.name, "vxlan")
        if msg is None:
            idx = self._create(
                op.name,
                kind="vxlan",
                vxlan_id=op.vni,
                vxlan_local=op.vtep,
                vxlan_port=op.port,
                vxlan_learning=0,
                vxlan_proxy=1,
                mtu=op.mtu,
                master=br,
            )
        else:
            have = _vxlan_attrs(msg)
            if have != want:
                raise OpFailed(f"vxlan {op.name} has {have}, want {want}: delete it first")
            idx = int(msg["index"])
        self._host().link("set", index=idx, master=br, mtu=op.mtu, state="up")

    def _ensure_veth(self, op: EnsureVeth) -> None:
        ipr = self._host()
        br = self._bridge_index(op.bridge)
        msg = self._mine(op.host_name, "veth")
        if msg is None:
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
        peer = _get_link(ipr, op.peer_name)
        if peer is not None and _owned(peer) and _kind(peer) == "veth":
            ipr.link("set", index=peer["index"], address=op.peer_mac, mtu=op.mtu)

    def _configure_endpoint(self, op: ConfigureEndpoint) -> None:
        ns = self._ns_handle(op.netns)
        if ns is None:
            raise OpFailed(f"network namespace {op.netns} does not exist")
        msg = _get_link(ns, op.ifname)
        if msg is not None and not _owned(msg):
            raise OpFailed(f"{op.netns}/{op.ifname} exists and is not owned by heddle")
        if msg is None:
            moved = _get_link(ns, op.peer_name)
            if moved is None:
                ipr = self._host()
                peer = _get_link(ipr, op.peer_name)
                if peer is None or not _owned(peer):
                    raise OpFailed(
                        f"veth peer {op.peer_name} not found in the host namespace or {op.netns}"
                    )
                ipr.link("set", index=peer["index"], net_ns_fd=op.netns)
                self._index.pop(op.peer_name, None)
                moved = _get_link(ns, op.peer_name)
                if moved is None:
                    raise OpFailed(f"veth peer {op.peer_name} did not arrive in {op.netns}")
            idx = int(moved["index"])
            ns.link("set", index=idx, state="down", ifname=op.ifname)
        else:
            idx = int(msg["index"])
        ns.link("set", index=idx, address=op.mac, mtu=op.mtu)
        ns.link("set", index=idx, state="up")
        ns.addr("replace", index=idx, address=op.ip, prefixlen=op.prefixlen)
        if op.gateway is not None:
            ns.route("replace", dst="0.0.0.0/0", gateway=op.gateway, oif=idx)

    def _del_link(self, op: DelLink) -> None:
        ipr = self._host()
        msg = _get_link(ipr, op.name)
        self._index.pop(op.name, None)
        if msg is None:
            return
        if not _owned(msg):
            raise OpFailed(f"link {op.name} is not owned by heddle; refusing to delete it")
        try:
            ipr.link("del", index=msg["index"])
        except NetlinkError as exc:
            if _code(exc) not in (errno.ENODEV, errno.ENOENT):
                raise
        self._index.clear()  # a veth takes its peer with it
