#!/usr/bin/env bash
# B7 (PERFORMANCE.md): add, change and remove one user's firewall rules with 10, 100 and
# 1000 users present. Target: flat in the number of users, <= 5 ms per user change.
#
# ours       = the daemon's path: one transaction (policy::nft::apply_user/remove_user)
#              handed to libnftables in-process (runtime::net::Firewall)
# nft batch  = the same transaction through one `nft -f -` process per change
# nft per-op = one `nft` process per command of that transaction
#
# Everything happens in a network namespace the benchmark unshares for itself: nothing is
# added to the machine's ruleset. Results: a Markdown table on stderr, JSON lines on stdout.
#
# Run as root from anywhere:  bench/b7-firewall.sh
# Knobs (environment): ITERATIONS (50), PER_OP_ITERATIONS (5), SIZES (10,100,1000).
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/common.sh"

bench_require_root b7
bench_ensure_pkgs nftables
cargo build --release --example net-rules
echo "B7 on $(bench_machine), $(nft --version)" >&2
"$TARGET_DIR/release/examples/net-rules" --iterations "${ITERATIONS:-50}" \
    --per-op-iterations "${PER_OP_ITERATIONS:-5}" --sizes "${SIZES:-10,100,1000}"
echo "target: flat in the number of users; <= 5 ms per user change" >&2
