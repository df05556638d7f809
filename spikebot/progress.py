"""Progress bars that show on a terminal and stay silent in logs, CI and pipes."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None) -> Iterable[T]:
    return tqdm(iterable, desc=desc, total=total, disable=not sys.stderr.isatty(), leave=False)
