"""Atomic writes: a failure leaves the old content (or nothing) and no temporary file; a
success replaces the target whole."""

import pytest

from pipelines import atomic


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_file_replaces_the_target_on_success(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with atomic.file(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"first")
        assert not target.exists(), "nothing under the real name before the end"
    assert target.read_bytes() == b"first"
    with atomic.file(target) as tmp:
        tmp.write_bytes(b"second")
        assert target.read_bytes() == b"first", "the old file stays until the rename"
    assert target.read_bytes() == b"second"
    assert _names(target.parent) == ["out.bin"]


@pytest.mark.parametrize("existing", [False, True])
def test_file_failure_leaves_no_file_and_no_temporary(tmp_path, existing):
    target = tmp_path / "out.db"
    if existing:
        target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic.file(target, companions=("-wal", "-shm")) as tmp:
            tmp.write_bytes(b"half")
            (tmp.parent / f"{tmp.name}-wal").write_bytes(b"log")
            raise RuntimeError("crash mid-write")
    assert _names(tmp_path) == (["out.db"] if existing else [])
    if existing:
        assert target.read_bytes() == b"old"


def test_file_companions_of_the_target_do_not_outlive_it(tmp_path):
    target = tmp_path / "out.db"
    target.write_bytes(b"old")
    (tmp_path / "out.db-wal").write_bytes(b"stale log")
    with atomic.file(target, companions=("-wal", "-shm")) as tmp:
        tmp.write_bytes(b"new")
        (tmp.parent / f"{tmp.name}-shm").write_bytes(b"index")
    assert _names(tmp_path) == ["out.db"] and target.read_bytes() == b"new"


def test_write_text(tmp_path):
    target = tmp_path / "a.txt"
    atomic.write_text(target, "one")
    atomic.write_text(target, "two")
    assert target.read_text() == "two" and _names(tmp_path) == ["a.txt"]


def test_write_text_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        atomic.write_text(target, "\udcff")  # a lone surrogate cannot be encoded
    assert target.read_text() == "old" and _names(tmp_path) == ["a.txt"]


def test_directory_replaces_on_success_and_cleans_up_on_failure(tmp_path):
    out = tmp_path / "model"
    with atomic.directory(out) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic.directory(out) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("crash mid-write")
    assert _names(tmp_path) == ["model"] and _names(out) == ["a"]
    with atomic.directory(out) as tmp:
        (tmp / "c").write_text("3")
    assert _names(tmp_path) == ["model"] and _names(out) == ["c"]


def test_directory_failure_without_a_previous_one_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic.directory(tmp_path / "model") as tmp:
            (tmp / "a").write_text("1")
            raise RuntimeError("crash mid-write")
    assert _names(tmp_path) == []
