"""Asks an agent for its ``NetworkFacts`` over HTTP (``GET /diag/networks/<name>`` on the
address it publishes in its status record). The one way the CLI talks to an agent."""

from __future__ import annotations

import http.client

from controller.agent import listen_address
from controller.diag.facts import MAX_FACTS_BYTES, NetworkFacts, decode_facts
from controller.model.errors import HeddleError, brief


class AgentUnreachable(HeddleError):
    """The agent did not answer, or answered with an error; retrying may help."""


def fetch_facts(address: str, network: str, timeout: float = 2.0) -> NetworkFacts:
    """The facts of ``network`` from the agent at ``address`` (``ADDR:PORT``).

    Raises ``AgentUnreachable`` (with the reason) for a refused or timed-out connection, a
    non-200 answer or one that does not decode."""
    try:
        host, port = listen_address(address)
    except HeddleError as exc:
        raise AgentUnreachable(f"bad metrics address {brief(address)}: {exc}") from None
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", f"/diag/networks/{network}")
        resp = conn.getresponse()
        body = resp.read(MAX_FACTS_BYTES + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise AgentUnreachable(f"agent at {address} did not answer: {exc}") from None
    finally:
        conn.close()
    if resp.status != 200:
        text = body.decode(errors="replace").strip()
        raise AgentUnreachable(f"agent at {address} answered {resp.status}: {brief(text, 200)}")
    try:
        return decode_facts(body)
    except HeddleError as exc:
        raise AgentUnreachable(f"agent at {address}: {exc}") from None
