"""Atomic writes and path containment."""

from __future__ import annotations

import os
import stat

import pytest

from circ.errors import CircError
from circ.fileio import FileWriteError, UnsafePathError, atomic_open, atomic_write, resolve_inside, same_file


def test_atomic_write_bytes_text_and_writer(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    atomic_write(target, "héllo")
    assert target.read_text(encoding="utf-8") == "héllo"
    atomic_write(target, lambda handle: handle.write(b"abc"))
    assert target.read_bytes() == b"abc"
    with atomic_open(target, "w") as handle:
        handle.write("línea\n")
    assert target.read_bytes() == "línea\n".encode("utf-8")
    assert os.listdir(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_error_in_writer_leaves_old_file_and_no_temporary(tmp_path, error):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def writer(handle):
        handle.write(b"partial new contents")
        raise error

    with pytest.raises(type(error)):
        atomic_write(target, writer)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_error_leaves_no_new_file(tmp_path):
    with pytest.raises(ValueError):
        with atomic_open(tmp_path / "new.bin") as handle:
            handle.write(b"x")
            raise ValueError("stop")
    assert os.listdir(tmp_path) == []


def test_protected_files_are_refused(tmp_path):
    source = tmp_path / "in.onnx"
    source.write_bytes(b"input")
    os.symlink(source, tmp_path / "alias.onnx")
    os.link(source, tmp_path / "hard.onnx")
    for target in (source, tmp_path / "alias.onnx", tmp_path / "hard.onnx", tmp_path / "sub" / ".." / "in.onnx"):
        with pytest.raises(FileWriteError, match="refusing to overwrite the input"):
            atomic_write(target, b"clobber", protect=[source])
    assert source.read_bytes() == b"input"
    atomic_write(tmp_path / "other.onnx", b"fine", protect=[source, None])
    assert sorted(os.listdir(tmp_path)) == ["alias.onnx", "hard.onnx", "in.onnx", "other.onnx"]


def test_bad_destinations_are_circ_errors(tmp_path):
    with pytest.raises(FileWriteError, match="is a directory"):
        atomic_write(tmp_path, b"x")
    with pytest.raises(FileWriteError, match="does not exist"):
        atomic_write(tmp_path / "missing" / "f", b"x")
    assert issubclass(FileWriteError, CircError)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores folder permissions")
def test_unwritable_folder_is_a_circ_error(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(FileWriteError, match="cannot write"):
            atomic_write(folder / "f", b"x")
    finally:
        folder.chmod(0o700)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_permissions_follow_umask_and_existing_file(tmp_path):
    old_umask = os.umask(0o022)
    try:
        atomic_write(tmp_path / "new", b"x")
        assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o644
        existing = tmp_path / "existing"
        existing.write_bytes(b"x")
        existing.chmod(0o600)
        atomic_write(existing, b"y")
        assert stat.S_IMODE(os.stat(existing).st_mode) == 0o600
    finally:
        os.umask(old_umask)


def test_same_file(tmp_path):
    a = tmp_path / "a"
    a.write_bytes(b"")
    assert same_file(a, tmp_path / "." / "a")
    assert not same_file(a, tmp_path / "b")
    assert same_file(tmp_path / "b", tmp_path / "b")  # neither exists: compared by path


def test_resolve_inside_accepts_paths_that_stay_inside(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.bin").write_bytes(b"")
    os.symlink("sub/w.bin", tmp_path / "link.bin")
    assert resolve_inside(tmp_path, "sub/w.bin") == os.path.realpath(tmp_path / "sub" / "w.bin")
    assert resolve_inside(tmp_path, "sub/../sub/w.bin") == os.path.realpath(tmp_path / "sub" / "w.bin")
    assert resolve_inside(tmp_path, "link.bin") == os.path.realpath(tmp_path / "sub" / "w.bin")
    assert resolve_inside(tmp_path, "not_yet.bin") == os.path.join(os.path.realpath(tmp_path), "not_yet.bin")


@pytest.mark.parametrize("location", ["", "/etc/passwd", "\\\\server\\share\\x", "C:\\weights.bin", "c:w.bin",
                                      "../x.bin", "sub/../../x.bin", "a\x00b", "outlink.bin", "outlink.bin/.."])
def test_resolve_inside_refuses_escapes(tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    os.symlink(tmp_path, folder / "outlink.bin")
    with pytest.raises(UnsafePathError):
        resolve_inside(folder, location)
