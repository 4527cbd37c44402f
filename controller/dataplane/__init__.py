"""Data-plane drivers: observe owned kernel/OVS objects, apply planned ops; stateful fakes.

Drivers are the only modules that perform network I/O on the host. Planning stays pure (see
``controller.plan``); a driver only observes and applies.
"""
