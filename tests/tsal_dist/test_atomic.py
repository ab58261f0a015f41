"""Atomic writes: complete or absent, temp names the resume cleanup recognises, modes kept."""

from __future__ import annotations

import json
import os
import stat

import pytest

from tsal_dist.atomic import (PLAIN, PRIVATE, atomic_path, atomic_write_bytes, atomic_write_json,
                              atomic_write_text, is_temp_name)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_writes_create_folders_and_replace(tmp_path):
    p = tmp_path / "a" / "b" / "x.txt"
    atomic_write_text(p, "one\n")
    atomic_write_text(p, "two\n")
    assert p.read_text() == "two\n"
    atomic_write_bytes(tmp_path / "y.bin", b"\x00\x01")
    assert (tmp_path / "y.bin").read_bytes() == b"\x00\x01"
    atomic_write_json(tmp_path / "z.json", {"a": 1.5})
    assert (tmp_path / "z.json").read_text() == json.dumps({"a": 1.5}, indent=2) + "\n"
    atomic_write_json(tmp_path / "w.json", {"a": 1}, indent=None, final_newline=False)
    assert (tmp_path / "w.json").read_text() == '{"a": 1}'
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a", "w.json", "y.bin", "z.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "x.json"
    atomic_write_text(p, "old")
    with pytest.raises(ValueError):
        atomic_write_json(p, {"a": float("nan")}, allow_nan=False)
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert p.read_text() == "old" and [f.name for f in tmp_path.iterdir()] == ["x.json"]


def test_temp_names_are_recognised_and_keep_ext(tmp_path):
    p = tmp_path / "ckpt-00000003.pt"
    with atomic_path(p, fsync=True) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".ckpt-00000003.pt.")
        assert tmp.name.endswith(".tmp") and is_temp_name(tmp.name)
        tmp.write_bytes(b"w")
    with atomic_path(tmp_path / "m.npz", ext=".npz") as tmp:
        assert tmp.name.endswith(".tmp.npz") and is_temp_name(tmp.name)
        tmp.write_bytes(b"z")
    assert p.read_bytes() == b"w" and (tmp_path / "m.npz").read_bytes() == b"z"
    for name in ("ckpt-00000003.pt", "x.tmp", ".x.tmp.", "notes.tmp.txt"):
        assert not is_temp_name(name), name


def test_modes(tmp_path):
    """Files come out as ``open()`` makes them (the umask decides; prepared lists and run folders
    on shared storage are read by other users), owner-only when asked."""
    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "default", "x")
        atomic_write_text(tmp_path / "private", "x", mode=PRIVATE)
        atomic_write_text(tmp_path / "plain", "x", mode=PLAIN)
    finally:
        os.umask(umask)
    assert _mode(tmp_path / "default") == 0o644 == _mode(tmp_path / "plain")
    assert _mode(tmp_path / "private") == PRIVATE


def test_a_link_is_written_through_and_a_device_or_pipe_is_never_replaced(tmp_path):
    """A rename over a path replaces whatever is there: a symlink would lose its target, and a
    device node (``--json /dev/stdout`` as root) would be replaced by a regular file."""
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    atomic_write_json(link, {"a": 1})
    assert link.is_symlink() and json.loads(real.read_text()) == {"a": 1}
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file") as e:
        atomic_write_bytes(fifo, b"x")
    assert e.value.filename == str(fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    with pytest.raises(OSError, match="not a regular file"):
        atomic_write_bytes(tmp_path, b"x")  # a folder
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
