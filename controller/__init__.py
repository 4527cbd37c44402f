"""heddle: an etcd-backed overlay network controller.

Desired overlay networks and endpoints live in etcd (see ``controller.store.keys``); an agent
on every host reconciles them into kernel objects. See README.md and docs/platform.md.
"""

__version__ = "0.1.0"
