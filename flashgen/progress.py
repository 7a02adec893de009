"""One status line on stderr while something takes long: a benchmark run (minutes), a
kernel module compiling (seconds to a minute).

On a terminal the line is rewritten in place (\\r); otherwise (a log file, CI) every
update is a plain line of its own."""
from __future__ import annotations

import shutil
import sys
import threading
import time
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.in_place = self.stream.isatty()

    def update(self, text: str) -> None:
        """Replace the status line with `text`."""
        if self.in_place:
            width = shutil.get_terminal_size().columns - 1
            self.stream.write("\r" + text[:width] + "\x1b[K")    # ESC[K: clear to the end
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self, text: str) -> None:
        """A line that stays: replaces the status line on a terminal."""
        self.stream.write(("\r" + text + "\x1b[K" if self.in_place else text) + "\n")
        self.stream.flush()


class Ticker:
    """`text ... 3.2 s` on a terminal, the seconds counting while the block runs; the
    finished line stays. Off a terminal: the line once at the start, and once with the
    time at the end (a log shows both that it started and how long it took). Tickers of
    one process share the line: the oldest running one counts, with `(+N more)`."""

    _active: list["Ticker"] = []
    _lock = threading.Lock()

    def __init__(self, text: str, stream: TextIO | None = None, every: float = 0.5):
        self.text = text
        self.progress = Progress(stream)
        self.every = every
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.start = 0.0

    def _tick(self) -> None:
        while not self._done.wait(self.every):
            with Ticker._lock:
                if Ticker._active and Ticker._active[0] is self:
                    more = len(Ticker._active) - 1
                    self.progress.update(f"{self.text} ... {time.perf_counter() - self.start:.1f} s"
                                         + (f" (+{more} more)" if more else ""))

    def __enter__(self) -> "Ticker":
        self.start = time.perf_counter()
        with Ticker._lock:
            Ticker._active.append(self)
            self.progress.update(f"{self.text} ...")
        if self.progress.in_place:
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        seconds = time.perf_counter() - self.start
        with Ticker._lock:
            Ticker._active.remove(self)
            self.progress.finish(f"{self.text} ... {seconds:.1f} s"
                                 + ("" if kind is None else " (failed)"))
