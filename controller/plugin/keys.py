"""etcd key layout of the Docker plugin's own records (schema v1). Pure.

Docker gives every daemon its own random 64-hex NetworkID and EndpointID and never tells a
restarted plugin what it created, so the plugin maps those IDs to heddle records through etcd::

  /heddle/v1/docker/<host>/networks/<NetworkID>    {"network", "gateway"}
      written by CreateNetwork, deleted by DeleteNetwork
  /heddle/v1/docker/<host>/endpoints/<EndpointID>  {"network", "id", "network_id"}
      written by CreateEndpoint, deleted by DeleteEndpoint (each in one txn with the endpoint
      record /heddle/v1/endpoints/<network>/<id>)

The IDs are per daemon, hence per host: the host component keeps one host's mappings apart from
another's and lets an operator see (or clean up) what one host's dockerd holds.

Address reservations use the shared IPAM keys (``/heddle/v1/ipam/<network>/<ip>``) with the owner
values below, so the CLI and every host's plugin decide uniqueness with the same compare.
"""

from __future__ import annotations

from controller.store.keys import ROOT

DOCKER = ROOT + "docker/"

#: IPAM owner of the network-wide gateway address the plugin reserved for a network whose
#: record has no gateway. ``@`` cannot occur in an endpoint id, so it never collides with one.
GATEWAY_OWNER = "gateway@docker"


def reservation_owner(host: str) -> str:
    """IPAM owner of an address that ``host``'s dockerd reserved (RequestAddress) and has not
    released (ReleaseAddress) yet. Never a valid endpoint id (``@``), so never confused with
    one; endpoint records of Docker endpoints point at such a reservation."""
    return f"docker@{host}"


def of_host(host: str) -> str:
    """Prefix of everything the plugin of ``host`` maps (trailing slash: no prefix collisions)."""
    return f"{DOCKER}{host}/"


def networks_of(host: str) -> str:
    return f"{DOCKER}{host}/networks/"


def network(host: str, network_id: str) -> str:
    return f"{DOCKER}{host}/networks/{network_id}"


def endpoints_of(host: str) -> str:
    return f"{DOCKER}{host}/endpoints/"


def endpoint(host: str, endpoint_id: str) -> str:
    return f"{DOCKER}{host}/endpoints/{endpoint_id}"
