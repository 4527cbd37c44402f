"""``heddle lab up --secure``: the lab's etcd with TLS client certificates and per-host
identities, as the Ansible rollout builds them (``controller/store/access.py``).

The lab issues, from a throw-away CA in ``<workdir>/pki``: etcd's server certificate (for its
management address and 127.0.0.1), one client certificate per host (CN = the host name, its
agent's identity), one for the operator (CN ``heddle-operator``: what the CLI and the tests
use) and one for etcd's ``root`` (CN ``root``: only ``heddle access apply`` needs it). After
etcd is up, ``secure_etcd`` creates the roles and users and turns authentication on.

The lab's probe client talks to etcd's JSON gateway, which authenticates a request by a token,
not by the client's certificate (it refuses a certificate with a CN: the probe's has none); so
``root`` gets a password here (kept in ``root.password``,
mode 0600, for the probe) where a real rollout throws it away.
"""

from __future__ import annotations

import os
import secrets
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from controller.lab.etcd_server import identity_files, make_test_pki
from controller.store.access import OPERATOR_USER, ROOT_USER, plan_access
from controller.store.etcd import EtcdKV, TLSFiles
from controller.store.etcd_access import apply_access

PKI_DIR = "pki"
_PASSWORD_FILE = "root.password"
_PROBE = "heddle-lab-probe"  # a certificate without CN, for etcd's JSON gateway


@dataclass(frozen=True, slots=True)
class LabIdentities:
    """The certificates of one secure lab, in ``directory`` (see the module docstring)."""

    directory: Path

    @classmethod
    def issue(cls, workdir: Path, etcd_ip: str, hosts: Sequence[str]) -> LabIdentities:
        """Create the CA and every certificate. Raises ``RuntimeError`` if openssl fails."""
        d = workdir / PKI_DIR
        make_test_pki(
            d,
            host=f"{etcd_ip},127.0.0.1",
            identities=(ROOT_USER, OPERATOR_USER, *hosts),
            nameless=(_PROBE,),
        )
        (d / _PASSWORD_FILE).touch(mode=0o600)
        (d / _PASSWORD_FILE).write_text(secrets.token_urlsafe(24))
        return cls(d)

    @classmethod
    def of(cls, workdir: Path) -> LabIdentities:
        return cls(workdir / PKI_DIR)

    def files(self, name: str) -> TLSFiles:
        """The TLS files of identity ``name`` (a host, the operator or root)."""
        ca, cert, key = identity_files(self.directory, name)
        return TLSFiles(str(ca), str(cert), str(key))

    def flags(self, name: str) -> list[str]:
        """``heddle`` global flags that make a command run as identity ``name``."""
        t = self.files(name)
        return ["--cacert", str(t.cacert), "--cert", str(t.cert), "--key", str(t.key)]

    @property
    def root_password(self) -> str:
        return (self.directory / _PASSWORD_FILE).read_text().strip()

    def probe_context(self) -> ssl.SSLContext:
        """TLS for the lab's probe client: verifies etcd, presents a certificate without a CN
        (the gateway refuses one with a CN; the probe logs in as root instead)."""
        t = self.files(_PROBE)
        ctx = ssl.create_default_context(cafile=t.cacert)
        assert t.cert is not None and t.key is not None
        ctx.load_cert_chain(t.cert, t.key)
        return ctx

    def server_dir(self) -> str:
        """What ``controller.lab.etcd_keeper --tls-dir`` takes."""
        return os.fspath(self.directory)


def secure_etcd(url: str, ids: LabIdentities, hosts: Sequence[str]) -> list[str]:
    """Create the hosts' and the operator's roles and users on the lab's etcd at ``url`` and
    turn authentication on (``apply_access`` as ``root``). Returns what changed."""
    with EtcdKV([url], ids.files(ROOT_USER)) as kv:
        return apply_access(kv, plan_access(hosts), passwords={ROOT_USER: ids.root_password})
