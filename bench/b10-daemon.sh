#!/usr/bin/env bash
# B10 (PERFORMANCE.md), the daemon side: the daemon's RSS with BOXES running boxes.
# Target: daemon RSS <= 64 MB with 200 boxes (and <= 1 MB per user, daemon share + box).
#
# Builds the release binaries, starts the daemon on a throw-away state directory (API on a
# free loopback port, admin socket in the temp dir, its own cgroup subtree
# `boxes.cgroup = "orchd-b10-<pid>"`), creates BOXES member users with `orchestratorctl user
# add` (profile homelabber), starts each box with `POST /api/v1/boxes/{user}/start` over
# the admin socket, lets them settle, and reads the daemon's /proc/<pid>/status (VmRSS,
# VmHWM, RssAnon, RssFile) and smaps_rollup (Pss), plus the sum of the box cgroups' memory.
# Then it stops every box (`POST .../stop`), removes it (`DELETE /api/v1/boxes/{user}`),
# deletes the users and stops the daemon. On failure or Ctrl-C the same happens as far as
# it can, and whatever is left in the run's own cgroup subtree is killed and removed.
#
# Run as root from anywhere:  bench/b10-daemon.sh
# Knobs (environment): BOXES (200), SETTLE (2 seconds).
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/common.sh"

BOXES=${BOXES:-200}
SETTLE=${SETTLE:-2}

bench_require_root b10-daemon
for tool in curl ss; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "b10-daemon: $tool is missing; run scripts/install-deps" >&2
        exit 2
    }
done
cargo build --release --bins
./scripts/build-static release
bin=$TARGET_DIR/release

work=$(mktemp -d "${TMPDIR:-/tmp}/orchd-b10.XXXXXX")
subtree=orchd-b10-$$
sock=$work/orchestratord.sock
state=$work/state
daemon_pid=
created=()

api() { # METHOD PATH -> prints the HTTP status, body to $work/last.json
    curl -sS --unix-socket "$sock" -X "$1" -o "$work/last.json" -w '%{http_code}' \
        "http://localhost$2"
}

# The run's cgroup subtree directories (found from the daemon's own cgroups).
subtree_dirs() {
    local line path ctrl
    [[ -n $daemon_pid && -r /proc/$daemon_pid/cgroup ]] || return 0
    while IFS= read -r line; do
        ctrl=$(cut -d: -f2 <<<"$line")
        path=$(cut -d: -f3- <<<"$line")
        case $ctrl in
        "") [[ -f /sys/fs/cgroup/cgroup.controllers ]] && echo "/sys/fs/cgroup${path%/}/$subtree" ;;
        memory | cpu | cpuacct | pids | blkio) echo "/sys/fs/cgroup/$ctrl${path%/}/$subtree" ;;
        esac
    done </proc/"$daemon_pid"/cgroup | sort -u
}

cleanup() {
    set +e
    local dirs u d
    dirs=$(subtree_dirs)
    if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        for u in "${created[@]}"; do
            api POST "/api/v1/boxes/$u/stop" >/dev/null 2>&1
            api DELETE "/api/v1/boxes/$u" >/dev/null 2>&1
        done
        kill -TERM "$daemon_pid" 2>/dev/null
        wait "$daemon_pid" 2>/dev/null
    fi
    # Safety net, only inside this run's subtree: kill what is left, remove the cgroups.
    for d in $dirs; do
        [[ -d $d ]] || continue
        find "$d" -name cgroup.procs -print0 | xargs -0 -r cat 2>/dev/null | xargs -r kill -KILL 2>/dev/null
        sleep 0.2
        find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
        [[ -d $d ]] && echo "b10-daemon: could not remove $d" >&2
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=
for _ in $(seq 1 50); do
    candidate=$((20000 + RANDOM % 40000))
    if [[ -z $(ss -Htln "sport = :$candidate") ]]; then
        port=$candidate
        break
    fi
done
[[ -n $port ]] || {
    echo "b10-daemon: no free port found" >&2
    exit 1
}
cat >"$work/config.toml" <<EOF
listen = "127.0.0.1:$port"
socket = "$sock"
state_dir = "$state"

[boxes]
cgroup = "$subtree"
stop_grace = "2s"

# The host's own network namespace: no firewall table, no forwarding change, no links.
[network]
enabled = false
EOF

RUST_LOG=warn "$bin/orchestratord" --config "$work/config.toml" >"$work/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 1 100); do
    [[ -S $sock ]] && curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null && break
    kill -0 "$daemon_pid" 2>/dev/null || {
        echo "b10-daemon: the daemon exited:" >&2
        cat "$work/daemon.log" >&2
        exit 1
    }
    sleep 0.1
done

status_kb() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$daemon_pid/status"; }
pss_kb() { awk '$1 == "Pss:" {print $2}' "/proc/$daemon_pid/smaps_rollup"; }
snapshot() { # LABEL
    printf '| %s | %d | %d | %d | %d | %d | %d |\n' "$1" "$(status_kb VmRSS)" \
        "$(pss_kb)" "$(status_kb RssAnon)" "$(status_kb RssFile)" "$(status_kb VmHWM)" \
        "$(status_kb Threads)"
}

rows=()
rows+=("$(snapshot "started, no users")")

ctl=("$bin/orchestratorctl" --socket "$sock")
for i in $(seq 1 "$BOXES"); do
    u=b10u$i
    "${ctl[@]}" user add "$u@example.com" --login "$u" --role member \
        --profile homelabber >/dev/null
    created+=("$u")
done
rows+=("$(snapshot "$BOXES users, no box")")

t0=$(date +%s%N)
for u in "${created[@]}"; do
    code=$(api POST "/api/v1/boxes/$u/start")
    [[ $code == 200 ]] || {
        echo "b10-daemon: start $u answered $code: $(cat "$work/last.json")" >&2
        exit 1
    }
done
t1=$(date +%s%N)
sleep "$SETTLE"
rows+=("$(snapshot "$BOXES boxes running")")

# The boxes' own memory, from their cgroups (v1 memory.usage_in_bytes, v2 memory.current).
box_bytes=0
for d in $(subtree_dirs); do
    for f in "$d"/box-*/memory.usage_in_bytes "$d"/box-*/memory.current; do
        [[ -f $f ]] && box_bytes=$((box_bytes + $(cat "$f")))
    done
done

t2=$(date +%s%N)
for u in "${created[@]}"; do
    code=$(api POST "/api/v1/boxes/$u/stop")
    [[ $code == 200 ]] || {
        echo "b10-daemon: stop $u answered $code: $(cat "$work/last.json")" >&2
        exit 1
    }
done
t3=$(date +%s%N)
rows+=("$(snapshot "all boxes stopped")")
for u in "${created[@]}"; do
    code=$(api DELETE "/api/v1/boxes/$u")
    [[ $code == 200 ]] || echo "b10-daemon: remove box $u answered $code" >&2
    "${ctl[@]}" user rm "$u" >/dev/null
done
created=()
rows+=("$(snapshot "boxes removed, users deleted")")

echo
echo "B10 (daemon) on $(bench_machine)"
echo
echo "| daemon with | VmRSS KiB | Pss KiB | RssAnon KiB | RssFile KiB | VmHWM KiB | threads |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
awk -v n="$BOXES" -v b="$box_bytes" -v s="$(((t1 - t0) / 1000000))" \
    -v p="$(((t3 - t2) / 1000000))" 'BEGIN {
    printf "box cgroups: %.1f MiB for %d boxes, %.0f KiB per box\n", b / 1048576, n, b / n / 1024
    printf "API starts: %d in %d ms (%.1f ms each, sequential); stops: %d ms (%.1f ms each)\n", n, s, s / n, p, p / n
}'
echo "target: daemon VmRSS <= 64 MB with 200 boxes; daemon share + box <= 1 MB per user"
