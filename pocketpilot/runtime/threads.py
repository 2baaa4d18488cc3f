"""How many CPU threads the model may use now: the cores other programs leave free.

Two cores oversubscribe at once: with four other CPU-bound jobs beside it, a completion that
takes 1 s on a quiet machine was measured at 68 s, because torch's (or llama.cpp's) thread pool
keeps spinning threads that the scheduler keeps preempting. :class:`FreeCores` measures, between
two requests, how much CPU time the *other* processes took on the cores this process may run on
(``psutil``'s system-wide CPU times minus this process's own), and gives the model the cores
left over, at least one. It never gives more threads than the cores this process may use
(``os.sched_getaffinity`` where the platform has it).
"""

from __future__ import annotations

import os
import time

import psutil

#: shortest measuring window (s); asked again sooner, the last answer stands
MIN_WINDOW_S = 0.2


def usable_cores() -> list[int]:
    """Indexes of the CPUs this process may run on (all of them where affinity is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(psutil.cpu_count() or 1))


class FreeCores:
    """Measures the cores other programs leave free, between calls of :meth:`threads`.

    Args:
        cores: CPU indexes to consider (default :func:`usable_cores`).

    Attributes:
        others: CPU load of other processes in the last window (cores busy, 0.0 .. ``len(cores)``).
    """

    def __init__(self, cores: list[int] | None = None) -> None:
        self.cores = cores if cores is not None else usable_cores()
        self._proc = psutil.Process()
        self.others = 0.0
        self._last = len(self.cores)
        self._mark = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        """``(wall s, busy CPU-s summed over the cores, this process's CPU-s)`` now."""
        per_cpu = psutil.cpu_times(percpu=True)
        busy = 0.0
        for i in self.cores:
            if i < len(per_cpu):
                t = per_cpu[i]
                busy += sum(t) - t.idle - getattr(t, "iowait", 0.0)
        mine = self._proc.cpu_times()
        return time.monotonic(), busy, mine.user + mine.system

    def threads(self) -> int:
        """Threads to use now (1 .. ``len(cores)``): the cores not busy with other processes in the
        window since the previous call, rounded to the nearest whole core."""
        now = self._sample()
        wall = now[0] - self._mark[0]
        if wall < MIN_WINDOW_S:
            return self._last
        others = max(0.0, (now[1] - self._mark[1]) - (now[2] - self._mark[2])) / wall
        self.others = min(float(len(self.cores)), others)
        self._mark = now
        self._last = max(1, min(len(self.cores), int(len(self.cores) - self.others + 0.5)))
        return self._last
