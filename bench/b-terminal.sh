#!/usr/bin/env bash
# B2, B5, B6 (PERFORMANCE.md): the web terminal, ours side by side with terminado and WeTTY.
#   B2  first prompt byte of a new shell over the WebSocket (p50, p99)
#   B5  keystroke echo round trip, idle and while another session floods (p50, p99)
#   B6  `yes | head -c N` throughput to a greedy client and to one consuming at 30 MB/s,
#       the server's peak RSS meanwhile, and Ctrl-C to quiet during a flood
# Ours: the release daemon on a throw-away state dir, a `homelabber` user's box, the shell
# in the box over /api/v1/boxes/<user>/terminal with a user token. terminado: Debian's
# python3-terminado, `bash -l` on a host PTY (no box), /websocket. WeTTY: npm (locked in
# bench/peers/wetty, node-pty rebuilt from source: npm runs no install scripts), `bash` on
# a host PTY, socket.io at /wetty/socket.io.
# Run as root from anywhere:  bench/b-terminal.sh
# Knobs: SAMPLES (B2, 30), ECHO_SAMPLES (B5, 500), BYTES (B6, 100000000), ONLY ("b2 b5 b6"),
# WINDOW (our terminal.window, 256K).
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/common.sh"
bench_require_root b-terminal
bench_ensure_pkgs python3-terminado curl

SAMPLES=${SAMPLES:-30}
ECHO_SAMPLES=${ECHO_SAMPLES:-500}
BYTES=${BYTES:-100000000}

cargo build --release --bins --example terminal-bench
# The static helper (target/release/static/), as a deployment uses it.
./scripts/build-static release
BENCH=$TARGET_DIR/release/examples/terminal-bench
wetty_dir=$BENCH_ROOT/bench/peers/wetty
if [[ ! -e $wetty_dir/node_modules/node-pty/build/Release/pty.node ]]; then
    (cd "$wetty_dir" && npm ci --no-audit --no-fund --loglevel=error && npm rebuild node-pty >/dev/null)
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/orchestratord-bterm.XXXXXX")
daemon_pid= terminado_pid= wetty_pid=
cgroup=orchd-bterm-$$
cleanup() {
    for p in $wetty_pid $terminado_pid $daemon_pid; do
        kill -TERM "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    # The box outlives the daemon by design: kill what is left in our cgroup subtree.
    for t in $(find /sys/fs/cgroup -path "*$cgroup*" -name cgroup.procs 2>/dev/null); do
        xargs -r kill -9 <"$t" 2>/dev/null || true
    done
    sleep 0.5
    find /sys/fs/cgroup -depth -type d -path "*$cgroup*" -exec rmdir {} \; 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$(bench_free_port)
tport=$(bench_free_port)
wport=$(bench_free_port)
sock=$work/o.sock
cat >"$work/config.toml" <<CFG
listen = "127.0.0.1:$port"
socket = "$sock"
state_dir = "$work/state"
[network]
enabled = false
[boxes]
cgroup = "$cgroup"
[terminal]
window = "${WINDOW:-256K}"
CFG
RUST_LOG=warn "$TARGET_DIR/release/orchestratord" --config "$work/config.toml" >"$work/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null && [[ -S $sock ]] && break
    sleep 0.1
done
admin() { curl -fsS --unix-socket "$sock" -H 'content-type: application/json' -X "$1" "http://localhost$2" ${3:+-d "$3"}; }
admin POST /api/v1/users '{"email":"bench@example.com","displayName":"Bench","role":"member","osProfile":"homelabber"}' >/dev/null
admin POST /api/v1/boxes/bench/start >/dev/null
token=$(admin POST /api/v1/tokens '{"kind":"user","user":"bench"}' | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')

/usr/bin/python3 "$BENCH_ROOT/bench/terminado_server.py" "$tport" >"$work/terminado.log" 2>&1 &
terminado_pid=$!
for _ in $(seq 1 100); do grep -q ready "$work/terminado.log" 2>/dev/null && break; sleep 0.1; done
node "$wetty_dir/node_modules/.bin/wetty" -p "$wport" --host 127.0.0.1 -c bash --log-level warn \
    >"$work/wetty.log" 2>&1 &
wetty_pid=$!
for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://127.0.0.1:$wport/wetty/" 2>/dev/null && break; sleep 0.1; done

run() { # NAME ARGS...
    "$BENCH" --samples "$SAMPLES" --echo-samples "$ECHO_SAMPLES" --bytes "$BYTES" "$@"
}
# Interleaved per benchmark, so both see the same moment of a noisy machine.
for b in ${ONLY:-b2 b5 b6}; do
    # B6's floor in the same minute: the same producer on a bare PTY, no WebSocket.
    [[ $b == b6 ]] && /usr/bin/python3 "$BENCH_ROOT/bench/pty_floor.py" "$BYTES"
    run --only "$b" --proto ours --url "ws://127.0.0.1:$port/api/v1/boxes/bench/terminal" \
        --header "authorization: Bearer $token" --pid "$daemon_pid"
    run --only "$b" --proto terminado --url "ws://127.0.0.1:$tport/websocket" --pid "$terminado_pid"
    run --only "$b" --proto wetty --pid "$wetty_pid" \
        --url "ws://127.0.0.1:$wport/wetty/socket.io/?EIO=4&transport=websocket"
done
