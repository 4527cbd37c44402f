"""The lab's record keeping (``controller/lab/state.py``'s ``LabBook``) and the docker lab's
cgroup removal (``controller/lab/sweep.py``), on plain files: no namespaces, no root."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.lab.nsutil import LabError, ProcRef
from controller.lab.state import HostRecord, LabBook, LabRecord
from controller.lab.sweep import remove_cgroup_tree


def _book(tmp_path: Path) -> LabBook:
    book = LabBook(tmp_path / "lab")
    book.save(LabRecord(prefix="t", mgmt_subnet="10.0.0.0/24", underlay_subnet="10.0.1.0/24"))
    return book


def test_no_record_is_an_error_that_says_what_to_do(tmp_path: Path) -> None:
    book = LabBook(tmp_path)
    assert book.load() is None
    with pytest.raises(LabError, match="heddle lab up"):
        _ = book.record


def test_every_object_is_in_the_record_read_back_from_disk(tmp_path: Path) -> None:
    book = _book(tmp_path)
    book.add_link("t-mg", bridge=True)
    book.add_link("t-h1m")
    book.add_netns("t-h1")
    book.add_netns("t-h1")  # recorded once
    book.add_netns("t-c1")
    book.add_host(HostRecord("h1", "t-h1", "10.0.1.1", "10.0.0.1", "ovs"))
    book.set_host("h1", agent=ProcRef(42, 7), ovs_dir="/run/t/ovs-h1")
    book.add_proc(ProcRef(43, 8))
    book.drop_netns("t-c1")

    rec = LabBook(book.workdir).record  # another handle: the truth is on disk
    assert rec.bridges == ("t-mg",)
    assert rec.root_links == ("t-h1m",)
    assert rec.netns == ("t-h1",)
    assert rec.host("h1").agent == ProcRef(42, 7)
    assert rec.host("h1").ovs_dir == "/run/t/ovs-h1"
    assert rec.procs == (ProcRef(43, 8),)
    book.set_host("h1", agent=None)
    assert book.record.host("h1").agent is None
    with pytest.raises(LabError, match="no host 'h9'"):
        book.record.host("h9")


def test_a_cgroup_tree_goes_deepest_first_and_what_stays_is_named(tmp_path: Path) -> None:
    top = tmp_path / "t-h1"
    (top / "a" / "b").mkdir(parents=True)
    (top / "c").mkdir()
    assert remove_cgroup_tree(top) == []
    assert not top.exists()

    busy = tmp_path / "t-h2"
    (busy / "a").mkdir(parents=True)
    (busy / "cgroup.procs").write_text("1\n")  # a plain directory with a file stays
    problems = remove_cgroup_tree(busy)
    assert len(problems) == 1 and str(busy) in problems[0]
    assert not (busy / "a").exists()
