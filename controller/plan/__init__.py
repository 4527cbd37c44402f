"""Pure planners: desired host view + observed state -> ordered, idempotent operations.

Nothing in this package performs I/O. The op vocabularies live next to their planners
(``kernel_ops`` for the Linux bridge/VXLAN backend).
"""
