"""Diagnostics: what an agent observes for one network (``facts``), the cluster's health
(``cluster``) and the hop-by-hop path between two endpoints (``trace``)."""
