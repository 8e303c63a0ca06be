"""A request's stop strings as the local decode loops apply them (llama.cpp's and torch's).

A decode loop streams text as soon as it is sure of it: text that contains a stop string is cut there,
and text whose end could still grow into one is held back until the next tokens tell. Standard library
only: llama.cpp's loop imports this in its engine process.
"""

from __future__ import annotations

from collections.abc import Iterable


class StopStrings:
    """The non-empty stop strings of one request; false when there are none."""

    __slots__ = ("longest", "strings")

    def __init__(self, strings: Iterable[str] | None):
        self.strings = [s for s in strings or () if s]
        self.longest = max((len(s) for s in self.strings), default=0)

    def __bool__(self) -> bool:
        return bool(self.strings)

    def first(self, text: str, new_from: int = 0) -> int:
        """Where the first stop string in ``text`` starts, or -1; ``new_from``: text before it was searched
        before (only a stop string ending at or after it can be new)."""
        window = max(0, new_from - self.longest + 1)
        found = [at for at in (text.find(s, window) for s in self.strings) if at >= 0]
        return min(found) if found else -1

    def held_back(self, text: str) -> int:
        """How many characters at the end of ``text`` could start a stop string (``text`` holds none)."""
        longest = 0
        for stop in self.strings:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
