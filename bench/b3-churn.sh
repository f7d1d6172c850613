#!/usr/bin/env bash
# B3 (PERFORMANCE.md): 50 concurrent box starts, then 50 concurrent stops; p50/p99 per
# operation and wall time; then a leak check (no cgroup left under the run's subtree, no
# process, no mount, no unreaped child, no state under the box dirs but the log and the
# home mount point in the persistent upper). Exits non-zero if anything leaked.
# Reference: 50 concurrent `bwrap --unshare-all ... true` (one process each: start+exit).
#
# Run as root from anywhere:  bench/b3-churn.sh
# Knobs (environment): CONCURRENCY (50), RUNS (3: the run is repeated, each one checked).
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/common.sh"

CONCURRENCY=${CONCURRENCY:-50}
RUNS=${RUNS:-3}

bench_require_root b3
bench_ensure_pkgs bubblewrap
bench_build

bwrap_cmd="bwrap --unshare-all --die-with-parent --ro-bind /usr /usr --symlink usr/bin /bin \
--symlink usr/lib /lib --symlink usr/lib64 /lib64 --symlink usr/sbin /sbin --proc /proc \
--dev /dev --tmpfs /tmp true"

echo "B3 on $(bench_machine)" >&2
# box-start cleans up after itself (Drop guard, SIGINT/SIGTERM), so no trap is needed here.
for run in $(seq 1 "$RUNS"); do
    echo "--- run $run of $RUNS" >&2
    "$BOX_START" b3 --concurrency "$CONCURRENCY" --peer "bwrap=$bwrap_cmd"
done
