"""heddle's CNI plugin: ``heddle-cni`` (``shim.py``, standard library only) and what the agent
serves it (``service.py``). Imports nothing itself: the executable must start fast."""
