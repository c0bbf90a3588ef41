"""Whether two MATH answers are the same mathematical object, decided by math-verify
(LaTeX -> sympy: `\\frac{\\sqrt3}{2}` = `\\frac{\\sqrt{3}}{2}`, `x^2+1` = `1+x^2`, set order,
units and `\\text{}` dropped).

Sympy can run for hours on an answer such as `9^{9^{9}}`, and math-verify's own timeout is a
SIGALRM that works only in a main thread (graders run in worker threads), so the check runs
in one spawned worker process that is killed and replaced when a check overruns: an overrun
counts as "not equal".
"""

from __future__ import annotations

import multiprocessing
import threading
from multiprocessing.pool import Pool

CHECK_TIMEOUT_S = 5.0

_lock = threading.Lock()
_pool: Pool | None = None


def _verify(gold: str, answer: str) -> bool:
    """Runs in the worker (its main thread, so math-verify's own timeouts work too)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    parsed_gold = parse(f"${gold}$", extraction_config=config)
    parsed = parse(f"${answer}$", extraction_config=config)
    return bool(parsed_gold and parsed and verify(parsed_gold, parsed))


def _ready() -> bool:
    import math_verify  # noqa: F401  (the import is the slow part of a cold start)

    return True


def _worker() -> Pool:
    global _pool
    with _lock:
        if _pool is None:
            _pool = multiprocessing.get_context("spawn").Pool(1)
            _pool.apply(_ready)  # a cold start does not count against a check's timeout
        return _pool


def verified_equal(gold: str, answer: str) -> bool:
    """math-verify's verdict on `answer` against `gold`; False when it overruns."""
    global _pool
    pool = _worker()
    try:
        return pool.apply_async(_verify, (gold, answer)).get(CHECK_TIMEOUT_S)
    except multiprocessing.TimeoutError:
        with _lock:
            if _pool is pool:
                pool.terminate()
                _pool = None
        return False
