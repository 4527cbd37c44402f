"""``heddle store upgrade``: bring a store written by an older release up to this layout
(``controller/store/upgrade.py``)."""

from __future__ import annotations

import argparse
import json

from controller.cli.parser import OK
from controller.store.kv import KV
from controller.store.upgrade import upgrade


def store(args: argparse.Namespace, kv: KV) -> int:
    """Run the upgrade and print what it did. Idempotent."""
    report = upgrade(kv)
    if args.output == "json":
        print(json.dumps({
            "indexed": report.indexed, "removed": report.removed, "already": report.already,
            "changed_meanwhile": report.changed_meanwhile,
            "layout_written": report.layout_written,
        }))  # fmt: skip
        return OK
    print(
        f"placement index: {report.indexed} key(s) added, {report.removed} stale key(s) "
        f"removed, {report.already} already in place"
    )
    if report.changed_meanwhile:
        print(f"{report.changed_meanwhile} endpoint(s) changed during the run: run it again")
    print("layout: placement index on" + (" (written now)" if report.layout_written else ""))
    return OK
