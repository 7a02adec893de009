"""One status line on stderr while a run builds and measures (runs take minutes).

On a terminal the line is rewritten in place (\\r); otherwise (a log file, CI) every
update is a plain line of its own."""
from __future__ import annotations

import shutil
import sys
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
