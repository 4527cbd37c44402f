"""The level-triggered reconcile loop: trigger, pass, status."""
