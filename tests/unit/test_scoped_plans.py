"""Scoped plans from the remembered state: a pass plans only the networks and the local
endpoints that changed (``plan_local``, controller/plan/ovs_incremental.py; ``plan_incremental``,
controller/plan/kernel_incremental.py), and returns what the full planner returns from the same
exact state (ovs: the same ops in the same order; kernel: up to the order of independent ops).
Fakes; no root."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st
from test_incremental import STEP, OvsWorld, World

from controller.model.kernel_state import KernelState
from controller.model.naming import veth_host_name
from controller.model.ovs_state import OvsState
from controller.model.view import HostView
from controller.plan.kernel import plan_kernel
from controller.plan.kernel_incremental import plan_incremental
from controller.plan.kernel_ops import EnsureVeth, GuardPort
from controller.plan.ovs import plan_ovs
from controller.plan.ovs_incremental import plan_local
from controller.plan.ovs_ops import EnsureOvsPort, EnsurePortVeth

S = TypeVar("S")
LOCAL_PUT = st.tuples(st.just("put"), st.integers(0, 2), st.just(0), st.integers(9, 17))
LOCAL_STEP = st.one_of(STEP, LOCAL_PUT, LOCAL_PUT)


class _Plane(Protocol[S]):
    def observe(self, view: HostView) -> S: ...
    def apply(self, ops: Any) -> None: ...


def _settle(
    view: HostView, plane: _Plane[S], plan: Callable[[HostView, S], tuple[Any, ...]]
) -> tuple[HostView, S]:
    """Realise ``view`` with the full planner ``plan``; the view and an exact observation."""
    for _ in range(3):
        ops = plan(view, plane.observe(view))
        if not ops:
            return view, plane.observe(view)
        plane.apply(ops)
    raise AssertionError("the full planner did not converge in three passes")


def _settle_ovs(w: OvsWorld) -> tuple[HostView, OvsState]:
    return _settle(w.view(), w.ovs, lambda v, s: plan_ovs(w.ovs.layout, v, s))


def _settle_kernel(w: World) -> tuple[HostView, KernelState]:
    return _settle(w.view(), w.fake, plan_kernel)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(LOCAL_STEP, min_size=1, max_size=3), min_size=1, max_size=15))
def test_a_local_plan_is_the_full_plan(rounds: list[list[tuple]]) -> None:  # type: ignore[type-arg]
    """After any sequence of changes, from the exact state of the last realised view: the
    same ops in the same order as ``plan_ovs`` (or ``None``, plan in full)."""
    w = OvsWorld()
    for net in range(3):
        w.put(net, 0, 9)
    last, state = _settle_ovs(w)
    scoped = 0
    for steps in rounds:
        for step in steps:
            w.step(*step)
        view = w.view()
        got = plan_local(w.ovs.layout, last, view, state)
        if got is not None:
            scoped += 1
            assert got == plan_ovs(w.ovs.layout, view, state), steps
        last, state = _settle_ovs(w)
    assert scoped == len(rounds)  # the host never changes here: never in full


def test_a_new_endpoint_does_not_look_at_the_other_endpoints() -> None:
    """Another endpoint's veth changed behind our back (drift, the full resync's to repair):
    the local plan for a new endpoint elsewhere builds the new one only; the full plan both."""
    w = OvsWorld()
    for net in range(3):
        for n in (9, 10):
            w.put(net, 0, n)
    last, state = _settle_ovs(w)
    w.fake.set_mtu(veth_host_name("n0", "e9"), 1280)
    state = w.ovs.observe(last)
    w.put(1, 0, 11)
    view = w.view()
    local = plan_local(w.ovs.layout, last, view, state)
    assert local is not None
    veths = [op for op in local if isinstance(op, EnsurePortVeth)]
    assert [op.host_name for op in veths] == [veth_host_name("n1", "e11")]
    assert sum(isinstance(op, EnsureOvsPort) for op in local) == 1
    full = plan_ovs(w.ovs.layout, view, state)
    assert sum(isinstance(op, EnsurePortVeth) for op in full) == 2


# -- the kernel backend ------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(LOCAL_STEP, min_size=1, max_size=3), min_size=1, max_size=15))
def test_a_kernel_incremental_plan_is_the_full_plan(rounds: list[list[tuple]]) -> None:  # type: ignore[type-arg]
    """The kernel's incremental plan, its local endpoints scoped to those that changed, holds
    the full plan's ops (their order differs only between independent ops)."""
    w = World()
    for net in range(3):
        w.put(net, 0, 9)
    last, state = _settle_kernel(w)
    for steps in rounds:
        for step in steps:
            w.step(*step)
        view = w.view()
        got = plan_incremental(last, view, state)
        if got is not None:
            assert sorted(map(repr, got)) == sorted(map(repr, plan_kernel(view, state))), steps
        last, state = _settle_kernel(w)


def test_a_new_kernel_endpoint_does_not_look_at_its_neighbours() -> None:
    """A neighbour's veth changed behind our back (drift): the incremental plan for a new
    endpoint in the same network builds the new one only; the full plan both."""
    w = World()
    for n in (9, 10):
        w.put(0, 0, n)
    last, state = _settle_kernel(w)
    w.fake.set_mtu(veth_host_name("n0", "e9"), 1280)
    state = w.fake.observe(last)
    w.put(0, 0, 11)
    view = w.view()
    got = plan_incremental(last, view, state)
    assert got is not None
    assert [op.host_name for op in got if isinstance(op, EnsureVeth)] == [
        veth_host_name("n0", "e11")
    ]
    assert [op.port for op in got if isinstance(op, GuardPort)] == [veth_host_name("n0", "e11")]
    assert sum(isinstance(op, EnsureVeth) for op in plan_kernel(view, state)) == 2
