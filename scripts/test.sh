#!/usr/bin/env bash
# Set up if needed, then run the whole test suite (core and every plugin).
# One pytest worker per core, each with one torch thread: the tests use tiny models that a second
# thread barely speeds up, so two workers of one thread take about half the wall time of one
# worker of two threads (6.5 vs 12.6 min on 2 Xeon cores); two-thread workers oversubscribe the
# cores and are slower still. A module's tests stay on one worker (--dist loadscope), so module
# fixtures run once. Pass -n 0 to run serially; other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
exec .venv/bin/python -m pytest -q -n auto --dist loadscope "$@"
