"""Where the test-suite finds its shared Redis: 127.0.0.1:6379 unless SPOTTUNE_TEST_REDIS_PORT says
otherwise (so that two checkouts can run their suites at once, each against a Redis of its own)."""

from __future__ import annotations

import os

REDIS_PORT = int(os.environ.get("SPOTTUNE_TEST_REDIS_PORT", "6379"))
