"""Progress bars for long-running native calls (used by ``Embeddings.quantize``).

The native code calls ``bar(desc)`` once, then ``update_to(done, total)`` every ~100 ms and
``close()`` at the end. tqdm is used when it is installed; otherwise a one-line bar is drawn
on stderr (only when stderr is a terminal).
"""

from __future__ import annotations

import sys
import time


class _TqdmBar:
    def __init__(self, desc: str) -> None:
        from tqdm.auto import tqdm

        # delay: nothing is drawn for work that ends within a second
        self._bar = tqdm(total=0, desc=desc, unit="step", leave=True, delay=1.0)

    def update_to(self, done: int, total: int) -> None:
        if total and self._bar.total != total:
            self._bar.total = total
        n = min(done, total) if total else done
        # update() (not refresh()): it keeps tqdm's own record of what it drew, so that
        # close() ends a drawn bar with a newline (and draws nothing within the delay)
        if n > self._bar.n:
            self._bar.update(n - self._bar.n)

    def close(self) -> None:
        self._bar.close()


class _TextBar:
    def __init__(self, desc: str, stream=None) -> None:
        self._desc = desc
        self._stream = stream if stream is not None else sys.stderr
        self._start = time.monotonic()
        self._shown = False

    def update_to(self, done: int, total: int) -> None:
        if not total:
            return
        frac = min(1.0, done / total)
        width = 30
        fill = int(frac * width)
        elapsed = time.monotonic() - self._start
        self._stream.write(f"\r{self._desc}: [{'#' * fill}{'.' * (width - fill)}] {frac:6.1%} {elapsed:6.1f}s")
        self._stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self._stream.write("\n")
            self._stream.flush()


class _NoBar:
    def update_to(self, done: int, total: int) -> None:
        pass

    def close(self) -> None:
        pass


def bar(desc: str):
    """A progress reporter with ``update_to(done, total)`` and ``close()``."""
    try:
        return _TqdmBar(desc)
    except ImportError:
        pass
    if sys.stderr is not None and sys.stderr.isatty():
        return _TextBar(desc)
    return _NoBar()
