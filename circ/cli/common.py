"""What circ's command-line tools share.

:func:`run_tool` is the one place a :class:`~circ.errors.CircError` is caught: its message
becomes one line ``PROG: error: MESSAGE`` on stderr and the exit code is 2. Argument mistakes
take the same path (:class:`ArgumentParser` raises instead of printing usage). Anything else
escaping is a bug in circ and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional, Sequence

from circ.errors import CircError

EXIT_OK = 0
EXIT_USER_ERROR = 2


class UsageError(CircError):
    """Bad command-line arguments."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a mistake as a :class:`UsageError` (one line, exit 2)."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def one_line(message: str) -> str:
    """A message on one line: inner newlines become ``; ``."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


def run_tool(prog: str, body: Callable[[Sequence[str]], Optional[int]],
             argv: Optional[Sequence[str]] = None) -> int:
    """Run ``body(argv)`` and turn user errors into one stderr line and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return body(argv) or EXIT_OK
    except CircError as err:
        error(prog, str(err))
        return EXIT_USER_ERROR
    except OSError as err:
        if isinstance(err, BrokenPipeError):  # `circ-opt --list-passes | head`
            _silence_stdout()
            return EXIT_OK
        if err.filename is None:
            raise
        # A file the user named cannot be read or written (permissions, a folder, ...).
        error(prog, f"{err.filename}: {err.strerror or err}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        error(prog, "interrupted")
        return 130


def error(prog: str, message: str) -> None:
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)


def warning(prog: str, message: str) -> None:
    print(f"{prog}: warning: {one_line(message)}", file=sys.stderr)


def require_file(path: str, what: str, error_class=CircError) -> None:
    """Raise ``error_class`` naming ``path`` when it is missing or a folder."""
    if os.path.isdir(path):
        raise error_class(f"{path}: is a directory, not {what}")
    if not os.path.exists(path):
        raise error_class(f"{path}: no such file")


def check_writable(path: str, protect: Sequence[str] = ()) -> None:
    """Fail now, before any output is written, if ``path`` cannot be an output file."""
    from circ.fileio import FileWriteError, check_not_protected

    check_not_protected(path, [p for p in protect if p and os.path.exists(p)])
    if os.path.isdir(path):
        raise FileWriteError(f"{path}: is a directory")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileWriteError(f"{path}: folder {folder} does not exist")


def _silence_stdout() -> None:
    # Python flushes stdout at exit; after a broken pipe that would raise again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
