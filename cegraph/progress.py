"""One live line for long model work: done/total, passes so far, generated tok/s, ETA.

Shown from the first second (a model still loading shows `0/12`), refreshed by a daemon
thread so a line appears even while no input has finished, and used the same way by the
CLI (a terminal status line) and by Prefect tasks (a log line every few seconds)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cegraph.trace import Trace


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@dataclass
class Progress:
    """Counts for a batch of `total` inputs; `tokens` reads the generated tokens so far (an
    LLM meter's `tokens_out`)."""

    total: int
    label: str = ""
    tokens: Callable[[], int] = lambda: 0
    done: int = 0
    passed: int = 0
    started: float = field(default_factory=time.monotonic)
    # a meter shared with earlier batches already counts their tokens: rate only this one's
    tokens_before: int = field(init=False)

    def __post_init__(self) -> None:
        self.tokens_before = self.tokens()

    def advance(self, passed: bool | None = None) -> None:
        """One more input finished (`passed` None: it has no verdict)."""
        self.done += 1
        self.passed += bool(passed)

    def run_done(self, trace: Trace) -> None:
        """An executor's `on_done`: one more run, passed when its outcome says so."""
        self.advance(trace.outcome is not None and trace.outcome.passed)

    def rate(self) -> float:
        """Generated tokens per second since the start, this batch's tokens only."""
        elapsed = time.monotonic() - self.started
        return (self.tokens() - self.tokens_before) / elapsed if elapsed > 0 else 0.0

    def eta(self) -> str:
        """Time left at the pace so far ("?" before the first input is done)."""
        left = self.total - self.done
        if left <= 0:
            return "done"
        return _duration((time.monotonic() - self.started) / self.done * left) if self.done \
            else "?"

    def line(self) -> str:
        head = f"{self.label}: " if self.label else ""
        return (f"{head}{self.done}/{self.total} done, {self.passed} passed, "
                f"{self.rate():.1f} tok/s, {_duration(time.monotonic() - self.started)} "
                f"elapsed, ETA {self.eta()}")


@contextlib.contextmanager
def live(progress: Progress, show: Callable[[str], None], *,
         every_s: float = 1.0) -> Iterator[Progress]:
    """Call `show(progress.line())` now, every `every_s` seconds, and once at the end."""
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(every_s):
            show(progress.line())

    show(progress.line())
    ticker = threading.Thread(target=tick, name="cegraph-progress", daemon=True)
    ticker.start()
    try:
        yield progress
    finally:
        stop.set()
        ticker.join()
        show(progress.line())
