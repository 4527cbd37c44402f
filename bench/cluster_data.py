"""The cluster ``bench_cluster_scale.py`` measures at each size, and how it is written to etcd.

``hosts`` hosts, ``100 * hosts`` endpoints in ``max(2 * hosts, 40)`` networks of 50 endpoints
each, spread over ``min(50, hosts)`` member hosts per network. Host ``h0`` (the measured
agent) has one endpoint (no namespace: the agent leaves the veth peer in its own namespace,
as for Docker) in each of the first ``LOCAL`` networks, and two endpoints in namespaces in
network 0 (a ping pair for the restart test). Every endpoint goes through
``controller/store/endpoint_ops.py``, so the placement index is complete.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from controller.model import codec  # noqa: E402
from controller.model.naming import derive_mac  # noqa: E402
from controller.model.records import Endpoint, Host, Network  # noqa: E402
from controller.store import endpoint_ops, keys  # noqa: E402
from controller.store.kv import KV, Delete, Put, Txn  # noqa: E402

LOCAL = 20  # networks with an endpoint on h0
PER_NETWORK = 50  # endpoints per network
VTEP = "172.31.252.1"
PING_PAIR = ("p1", "p2")


def vtep(i: int) -> str:
    return VTEP if i == 0 else f"172.20.{i // 250}.{i % 250 + 2}"


def subnet_of(j: int) -> str:
    return f"10.{j // 256}.{j % 256}.0/24"


def ip_of(j: int, last: int) -> str:
    return f"10.{j // 256}.{j % 256}.{last}"


@dataclass(frozen=True, slots=True)
class Cluster:
    hosts: int

    @property
    def networks(self) -> int:
        return max(2 * self.hosts, LOCAL + 20)

    @property
    def members(self) -> int:
        return min(50, self.hosts)

    def network(self, j: int) -> Network:
        return Network(f"n{j}", 1000 + j, subnet_of(j))

    def member_hosts(self, j: int) -> list[int]:
        """Member host indexes of network ``j``; h0 only in the first ``LOCAL``, once."""
        m, others = self.members, self.hosts - 1
        picks = [1 + (j * m + s) % others for s in range(m)]
        return [0, *picks[1:]] if j < LOCAL else picks

    def endpoint(self, j: int, s: int, host: int | None = None) -> Endpoint:
        """Endpoint ``s`` of network ``j`` (address ``.s+2``)."""
        members = self.member_hosts(j)
        h = members[s % len(members)] if host is None else host
        if h == 0 and s != 0:  # h0 has one endpoint per local network
            h = members[1]
        ip = ip_of(j, s + 2)
        return Endpoint(f"e{s}", f"n{j}", f"h{h}", ip, derive_mac(1000 + j, ip))

    def ping_pair(self, netns: tuple[str, str]) -> list[Endpoint]:
        return [
            Endpoint(eid, "n0", "h0", ip_of(0, 200 + k), derive_mac(1000, ip_of(0, 200 + k)), ns)
            for k, (eid, ns) in enumerate(zip(PING_PAIR, netns, strict=True))
        ]


def endpoint_txn(ep: Endpoint) -> Txn:
    """What a writer commits for a new endpoint (record, placement key, address)."""
    ipam = Put(keys.ipam(ep.network, ep.ip), codec.encode_owner(ep.id).encode())
    return Txn(success=(*endpoint_ops.put_endpoint(ep), ipam))


def remove_txn(ep: Endpoint) -> Txn:
    drop = (*endpoint_ops.delete_endpoint(ep.network, ep.id, ep.host),)
    return Txn(success=(*drop, Delete(keys.ipam(ep.network, ep.ip))))


def write(kv: KV, c: Cluster, netns: tuple[str, str]) -> int:
    """Write the whole cluster in transactions of at most 120 ops; returns the revision of the
    last write ``h0`` follows (what its status must reach)."""
    followed = 0
    batch: list[Put] = []
    batch_followed = False

    def flush() -> None:
        nonlocal batch, batch_followed, followed
        if batch:
            rev = kv.commit(Txn(success=tuple(batch))).revision
            followed = rev if batch_followed else followed
        batch, batch_followed = [], False

    def add(ops: tuple[Put, ...], h0_follows: bool) -> None:
        nonlocal batch_followed
        if len(batch) + len(ops) > 120:
            flush()
        batch.extend(ops)
        batch_followed |= h0_follows

    for i in range(c.hosts):
        add((Put(keys.host(f"h{i}"), codec.encode_host(Host(f"h{i}", vtep(i))).encode()),), True)
    for j in range(c.networks):
        net = c.network(j)
        add((Put(keys.network(net.name), codec.encode_network(net).encode()),
             Put(keys.vni(net.vni), codec.encode_owner(net.name).encode())), True)  # fmt: skip
    for j in range(c.networks):
        for s in range(PER_NETWORK):
            ops = endpoint_txn(c.endpoint(j, s)).success
            add(tuple(op for op in ops if isinstance(op, Put)), j < LOCAL)
    for ep in c.ping_pair(netns):
        add(tuple(op for op in endpoint_txn(ep).success if isinstance(op, Put)), True)
    flush()
    return followed
