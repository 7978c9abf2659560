"""Progress bars and progress lines for work that can take more than a second.

Library code wraps long loops in :func:`track` and reports milestones (an epoch's loss and
accuracy) with :func:`note`. Both are silent unless a tool switched progress on with
:func:`enable` — the CLI does so when stderr is a terminal and ``-q`` is not given — so
library users, tests and pipes see nothing. Bars and lines go to stderr, keeping stdout for
results.
"""

from __future__ import annotations

import sys
from typing import Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")

_enabled = False


def enable(on: bool = True) -> None:
    """Switch progress output on (or off) for this process."""
    global _enabled
    _enabled = bool(on)


def enabled() -> bool:
    return _enabled


def want_progress(quiet: bool, stream=None) -> bool:
    """Whether a tool should show progress: not ``-q`` and ``stream`` (stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    return not quiet and hasattr(stream, "isatty") and stream.isatty()


def track(iterable: Iterable[T], *, total: Optional[int] = None, desc: str = "",
          unit: str = "it") -> Iterator[T]:
    """``iterable``, drawn as a tqdm bar on stderr when progress is on; plain otherwise."""
    if not _enabled:
        return iter(iterable)
    from tqdm import tqdm

    return iter(tqdm(iterable, total=total, desc=desc, unit=unit, leave=False,
                     file=sys.stderr, dynamic_ncols=True))


def note(text: str) -> None:
    """One progress line on stderr (above any bar) when progress is on."""
    if not _enabled:
        return
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)
