"""Safe file handling: atomic writes and paths that must stay inside a folder.

Every file circ writes (ONNX models, ``.circ`` containers, reports, CLI outputs) goes through
:func:`atomic_open` / :func:`atomic_write`: the bytes go to a temporary file in the destination
folder, are flushed and fsync'ed, and only then renamed over the destination with
:func:`os.replace`. A reader therefore sees either the old file or the complete new one, and a
failure at any point (an exception in the writer, a full disk, Ctrl-C) leaves no partial output
behind. ``protect`` names files that must never be overwritten (typically the input model), so
``circ optimize m.onnx -o m.onnx`` is refused instead of destroying the input.

:func:`resolve_inside` resolves a relative path against a folder and refuses anything that
would leave it (absolute paths, ``..`` climbing out, symlinks pointing out); the ONNX importer
uses it for external-data locations, the container reader for its members.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
from typing import Callable, Iterable, Iterator, Union

from circ.errors import CircError

PathLike = Union[str, os.PathLike]


class FileWriteError(CircError):
    """An output file cannot be written (or would overwrite a protected file)."""


class UnsafePathError(ValueError):
    """A relative path from a file would resolve outside the folder it must stay in."""


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when ``a`` and ``b`` name the same file (after symlinks; hard links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_not_protected(path: PathLike, protect: Iterable[PathLike]) -> None:
    """Raise :class:`FileWriteError` if ``path`` is one of the ``protect`` files."""
    for other in protect:
        if other is not None and same_file(path, other):
            raise FileWriteError(f"{os.fspath(path)}: refusing to overwrite the input file {os.fspath(other)}")


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", *, protect: Iterable[PathLike] = ()) -> Iterator:
    """Context manager yielding a file object whose contents replace ``path`` on success.

    ``mode`` is ``"wb"`` or ``"w"`` (text, UTF-8). On an exception inside the block the
    temporary file is removed, ``path`` is left as it was, and the exception propagates
    (an :class:`OSError` becomes :class:`FileWriteError` naming the file).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open supports modes 'wb' and 'w', not {mode!r}")
    path = os.fspath(path)
    check_not_protected(path, protect)
    if os.path.isdir(path):
        raise FileWriteError(f"{path}: is a directory")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileWriteError(f"{path}: folder {folder} does not exist")
    temp_path, handle = _create_temp(path, folder)
    stream = handle if mode == "wb" else io.TextIOWrapper(handle, encoding="utf-8", newline="")
    try:
        with stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        _copy_mode(path, temp_path)
        os.replace(temp_path, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(temp_path)
        if isinstance(err, OSError):
            raise FileWriteError(f"{path}: cannot write ({err.strerror or err})") from err
        raise
    _fsync_folder(folder)


def atomic_write(path: PathLike, writer: Union[Callable, bytes, str], *,
                 protect: Iterable[PathLike] = ()) -> None:
    """Write ``path`` atomically. ``writer`` is bytes, text, or a function ``writer(file)``
    called with a binary file object."""
    if isinstance(writer, bytes):
        data = writer
        writer = lambda handle: handle.write(data)  # noqa: E731
    elif isinstance(writer, str):
        data = writer.encode("utf-8")
        writer = lambda handle: handle.write(data)  # noqa: E731
    with atomic_open(path, "wb", protect=protect) as handle:
        writer(handle)


def _create_temp(path: str, folder: str):
    """A new hidden file next to ``path``, created with the default permissions (umask
    applies, unlike :func:`tempfile.mkstemp`'s 0600)."""
    base = os.path.basename(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        temp_path = os.path.join(folder, f".{base}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(temp_path, flags, 0o666)
        except FileExistsError:
            continue
        except OSError as err:
            raise FileWriteError(f"{path}: cannot write ({err.strerror or err})") from err
        return temp_path, os.fdopen(fd, "wb")
    raise FileWriteError(f"{path}: cannot create a temporary file in {folder}")


def _copy_mode(path: str, temp_path: str) -> None:
    """Keep the permissions of a file being replaced."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    os.chmod(temp_path, mode & 0o7777)


def _fsync_folder(folder: str) -> None:
    """Make the rename durable (POSIX); harmless where folders cannot be opened."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def resolve_inside(folder: PathLike, relative: str) -> str:
    """The real path of ``relative`` inside ``folder``; :class:`UnsafePathError` when it is
    absolute or would resolve (through ``..`` or symlinks) to somewhere outside ``folder``."""
    if not relative:
        raise UnsafePathError("the location is empty")
    if "\x00" in relative:
        raise UnsafePathError("the location contains a NUL character")
    # Both spellings of absolute: POSIX '/x', and Windows drive or UNC paths written on any OS.
    if (os.path.isabs(relative) or relative.startswith(("/", "\\"))
            or (len(relative) > 1 and relative[1] == ":")):
        raise UnsafePathError(f"the location {relative!r} is absolute; it must be relative to the model's folder")
    root = os.path.realpath(folder)
    target = os.path.realpath(os.path.join(root, relative))
    if os.path.commonpath([root, target]) != root:
        raise UnsafePathError(f"the location {relative!r} resolves to {target}, outside the model's folder {root}")
    return target
