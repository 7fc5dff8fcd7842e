"""Peak resident memory of a benchmark's child processes, sampled from a background thread."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import psutil


class TreeMemory(threading.Thread):
    """Samples the resident memory of this process's descendants every ``interval_s`` until stopped.

    ``peak_total`` is the peak of their sum; ``peak_by_kind`` the peak of any one process of each kind, a kind
    being the first of ``kinds`` its command line contains ("other" for none).
    """

    def __init__(self, kinds: Sequence[str], interval_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.kinds, self.interval_s, self.peak_total = list(kinds), interval_s, 0
        self.peak_by_kind: dict[str, int] = {}
        self._done = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self._done.wait(self.interval_s):
            total = 0
            for proc in me.children(recursive=True):
                try:
                    rss, cmd = proc.memory_info().rss, " ".join(proc.cmdline())
                except psutil.Error:  # ended between listing and reading
                    continue
                kind = next((k for k in self.kinds if k in cmd), "other")
                total += rss
                self.peak_by_kind[kind] = max(self.peak_by_kind.get(kind, 0), rss)
            self.peak_total = max(self.peak_total, total)

    def stop(self) -> None:
        self._done.set()
        self.join()
