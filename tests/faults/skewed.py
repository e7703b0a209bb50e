"""``python -m tests.faults.skewed ARGS``: ``streamq ARGS`` with this process's wall clock off by
``STREAMQ_TEST_CLOCK_SKEW_S`` seconds (say 300, or -300).

``time.time`` and ``time.time_ns`` are replaced before streamq is imported, so every reading
of the wall clock in streamq, the handler and the libraries sees the skewed time; monotonic
clocks (timeouts, sleeps) are untouched, as on a real machine whose clock is set wrong.
"""

from __future__ import annotations

import os
import sys
import time

SKEW_S = float(os.environ.get("STREAMQ_TEST_CLOCK_SKEW_S", "0"))
_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + SKEW_S
time.time_ns = lambda: _time_ns() + round(SKEW_S * 1e9)

from streamq.cli import main  # noqa: E402 - after the clock is skewed, on purpose

if __name__ == "__main__":
    main(sys.argv[1:])
