"""Atomic snapshot publishing: CURRENT always names a complete directory."""

from __future__ import annotations

import pytest

from storage import snapshots


def test_publish_moves_current_and_keeps_a_few(tmp_path):
    base = tmp_path / "features"
    assert snapshots.current(base) is None
    published = []
    for i in range(5):

        def write(d, i=i):
            d.mkdir()
            (d / "part.txt").write_text(str(i))

        published.append(snapshots.publish(base, write, keep=2, version=f"{i:03d}"))
    cur = snapshots.current(base)
    assert cur == published[-1]
    assert (cur / "part.txt").read_text() == "4"
    assert sorted(p.name for p in base.glob("v=*")) == ["v=003", "v=004"]
    assert not list(base.glob("_tmp-*"))


def test_failed_write_leaves_current_untouched(tmp_path):
    base = tmp_path / "view"
    snapshots.publish(base, lambda d: d.mkdir(), version="001")

    def broken(d):
        d.mkdir()
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        snapshots.publish(base, broken, version="002")
    assert snapshots.current(base).name == "v=001"
