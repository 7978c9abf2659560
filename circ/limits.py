"""The size limit that keeps a small hostile file from making circ allocate gigabytes.

Every reader checks what a file *declares* against this limit before it allocates or reads:
an ONNX tensor's bytes (``circ.onnx_import``), a ``.circ`` tensor's decoded size
(``circ.container``, counted as float32) and the arrays of an ``.npz`` file together
(``circ.npzio``). The default, 4 GiB, admits any model a 24 GiB machine can work on; set the
environment variable ``CIRC_MAX_TENSOR_BYTES`` (a byte count, with an optional K, M or G
suffix) to raise or lower it for every tool, or pass the readers' keyword arguments from Python.
"""

from __future__ import annotations

import os

from circ.errors import CircError

ENV = "CIRC_MAX_TENSOR_BYTES"
DEFAULT_MAX_TENSOR_BYTES = 4 << 30
_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


class LimitError(CircError):
    """A badly written limit setting."""


def max_tensor_bytes() -> int:
    """The limit in bytes: ``CIRC_MAX_TENSOR_BYTES`` when set, else the default."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return DEFAULT_MAX_TENSOR_BYTES
    number, suffix = text.upper().rstrip("IB"), ""
    if number and number[-1] in "KMG":
        number, suffix = number[:-1], number[-1]
    try:
        value = int(number) * _SUFFIXES[suffix]
    except ValueError:
        value = 0
    if value < 1:
        raise LimitError(f"environment variable {ENV}={text!r}: expected a positive byte count "
                         f"such as 4294967296 or 512M")
    return value


def hint() -> str:
    """What to tell a user whose file exceeds the limit."""
    return f"(raise it with the environment variable {ENV})"
