"""bench/bench_filter_cpu.py's reading of ``perf script``: each sample charged to the hook whose
caller reached ``nf_hook_slow``. No root, no perf."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"

SCRIPT = """\
iperf3  6091 [001] 54752.697734:     250000 cpu-clock:pppH:
\tffffffff81fb48f6 nft_do_chain+0x186 ([kernel.kallsyms])
\tffffffff81fd1331 nft_do_chain_netdev+0x211 ([kernel.kallsyms])
\tffffffff81f783d3 nf_hook_slow+0x43 ([kernel.kallsyms])
\tffffffff81eaea27 __netif_receive_skb_core.constprop.0+0x847 ([kernel.kallsyms])

iperf3  6090 [000] 54752.697800:     250000 cpu-clock:pppH:
\tffffffff81fb48f6 nft_do_chain+0x186 ([kernel.kallsyms])
\tffffffff81f783d3 nf_hook_slow+0x43 ([kernel.kallsyms])
\tffffffff82040000 ip_local_deliver+0x20 ([kernel.kallsyms])

swapper     0 [000] 54752.697900:     250000 cpu-clock:pppH:
\tffffffff81000000 pv_native_safe_halt+0x6 ([kernel.kallsyms])

iperf3  6091 [001] 54752.698000:     250000 cpu-clock:pppH:
\tffffffff81000100 _copy_from_iter+0x10 ([kernel.kallsyms])
\tffffffff81000200 tcp_sendmsg_locked+0x10 ([kernel.kallsyms])

iperf3  6091 [001] 54752.698100:     250000 cpu-clock:pppH:
\tffffffff81f783d3 nf_hook_slow+0x43 ([kernel.kallsyms])
\tffffffff81f70000 br_nf_pre_routing+0x43 ([kernel.kallsyms])
"""


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("bench_filter_cpu")
    finally:
        sys.path.remove(str(BENCH))


def test_samples_are_charged_to_the_hook_that_called(bench: ModuleType) -> None:
    samples = bench.stacks(SCRIPT)
    assert [s[0] for s in samples] == [
        "nft_do_chain", "nft_do_chain", "pv_native_safe_halt", "_copy_from_iter", "nf_hook_slow",
    ]  # fmt: skip
    assert [bench.hook_of(s) for s in samples] == [
        "netdev ingress", "inet input", None, None, "bridge",
    ]  # fmt: skip
    got = bench.shares(samples)
    assert got["busy"] == 4  # the idle sample does not count
    assert got["inet input"] == got["netdev ingress"] == got["bridge"] == 25.0
    assert got["other"] == 0.0


def test_an_unknown_caller_is_other_and_no_samples_is_zero(bench: ModuleType) -> None:
    assert bench.hook_of(["nf_hook_slow", "something_else"]) == "other"
    assert bench.shares([])["inet input"] == 0.0
