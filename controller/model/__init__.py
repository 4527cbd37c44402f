"""Frozen, validated records of desired state, their JSON codec and interface naming."""
