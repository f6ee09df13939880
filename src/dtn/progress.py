"""tqdm progress bars that stay quiet when stderr is not a terminal or DTN_QUIET=1 (`--quiet`)."""
from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def quiet() -> bool:
    return os.environ.get("DTN_QUIET", "") not in ("", "0") or not sys.stderr.isatty()


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None, **kw) -> Iterable[T]:
    return tqdm(iterable, desc=desc, total=total, disable=quiet(), dynamic_ncols=True, leave=False, **kw)


def duration(seconds: float) -> str:
    """A time for a log line: seconds under two minutes, else whole minutes."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
