#!/usr/bin/env bash
# B10 (PERFORMANCE.md), the box side: memory per idle box. Starts BOXES idle homelabber
# boxes through the runtime, lets them settle, and reports the sum and per-box mean of
#   - the box cgroups' memory usage (v1 memory.usage_in_bytes / v2 memory.current, through
#     BoxRuntime::usage), split into anonymous, page cache (tmpfs) and kernel memory,
#   - the PSS and RSS of each box's processes (the idle box has only its init),
# then stops them all. The daemon's share (RSS with 200 boxes) is bench/b10-daemon.sh.
# Target: <= 1 MB per user (daemon share + box overhead, excluding the user's shell).
#
# Run as root from anywhere:  bench/b10-memory.sh
# Knobs (environment): BOXES (200), SETTLE (2 seconds).
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/common.sh"

BOXES=${BOXES:-200}
SETTLE=${SETTLE:-2}

bench_require_root b10
bench_build

echo "B10 (boxes) on $(bench_machine)" >&2
# box-start cleans up after itself (Drop guard, SIGINT/SIGTERM), so no trap is needed here.
"$BOX_START" b10 --boxes "$BOXES" --settle "$SETTLE"
