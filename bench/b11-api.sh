#!/usr/bin/env bash
# B11 (PERFORMANCE.md): authenticated API GET throughput and p99 on 2 cores.
# Target: >= 20k req/s and p99 <= 5 ms.
#
# Builds the release daemon, starts it on a throw-away state directory (API on a free
# loopback port, admin socket inside the temp dir), creates users and a service over the
# admin socket, mints a `user` token, then runs wrk (2 threads, 32 connections, 10 s) against
#   a) GET /api/v1/users/<login>                              admin token
#   b) GET /api/v1/users/<login>/services/<svc>/access        the user's own token
#   c) GET /healthz                                           no auth: the floor
# and prints one table row per endpoint. The daemon and the temp dir are always cleaned up.
#
# Run as root from anywhere:  bench/b11-api.sh
# Knobs (environment): DURATION (10s), THREADS (2), CONNECTIONS (32).
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}

if [[ $(id -u) -ne 0 ]]; then
    echo "b11: must run as root (the admin socket serves uid 0 only)" >&2
    exit 2
fi
command -v cargo >/dev/null 2>&1 || export PATH="${HOME:-/root}/.cargo/bin:$PATH"
for tool in wrk curl ss; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "b11: $tool is missing; run scripts/install-deps" >&2
        exit 2
    }
done

cargo build --release --bin orchestratord

work=$(mktemp -d "${TMPDIR:-/tmp}/orchestratord-b11.XXXXXX")
daemon_pid=
cleanup() {
    if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free loopback port: random picks until `ss` shows nobody listening there.
port=
for _ in $(seq 1 50); do
    candidate=$((20000 + RANDOM % 40000))
    if [[ -z $(ss -Htln "sport = :$candidate") ]]; then
        port=$candidate
        break
    fi
done
[[ -n $port ]] || {
    echo "b11: no free port found" >&2
    exit 1
}

sock=$work/orchestratord.sock
state=$work/state
cat >"$work/config.toml" <<EOF
listen = "127.0.0.1:$port"
socket = "$sock"
state_dir = "$state"

# The host's own network namespace: no firewall table, no forwarding change.
[network]
enabled = false
EOF

# Logs at warn: the benchmark measures the API, not the terminal it logs to.
RUST_LOG=warn ./target/release/orchestratord --config "$work/config.toml" \
    >"$work/daemon.log" 2>&1 &
daemon_pid=$!

base=http://127.0.0.1:$port
for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$base/healthz" 2>/dev/null && [[ -S $sock ]] && break
    kill -0 "$daemon_pid" 2>/dev/null || {
        echo "b11: the daemon exited:" >&2
        cat "$work/daemon.log" >&2
        exit 1
    }
    sleep 0.1
done
curl -fsS -o /dev/null "$base/healthz"

# Admin calls over the root-only socket (no token needed there).
admin() { # METHOD PATH [JSON]
    local args=(-fsS --unix-socket "$sock" -X "$1" "http://localhost$2")
    if [[ $# -ge 3 ]]; then
        args+=(-H 'content-type: application/json' -d "$3")
    fi
    curl "${args[@]}"
}

admin POST /api/v1/services '{"name": "jellyfin", "category": "media",
  "url": "https://jellyfin.lab.example.com", "upstream": "192.168.1.10:8096",
  "requiredRole": "member"}' >/dev/null
admin POST /api/v1/users '{"email": "alice@example.com", "displayName": "Alice",
  "role": "member", "osProfile": "homelabber", "services": ["jellyfin"]}' >/dev/null
admin POST /api/v1/users '{"email": "bob@example.com", "displayName": "Bob",
  "role": "member", "osProfile": "developer"}' >/dev/null
admin POST /api/v1/users '{"email": "carol@example.com", "displayName": "Carol",
  "role": "admin", "osProfile": "admin"}' >/dev/null
admin POST /api/v1/users '{"email": "dave@example.com", "displayName": "Dave",
  "role": "demo", "osProfile": "demo"}' >/dev/null

admin_token=$(tr -d '\n' <"$state/admin.token")
user_token=$(admin POST /api/v1/tokens '{"kind": "user", "user": "alice", "name": "b11"}' |
    sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
[[ $user_token == orch_* ]] || {
    echo "b11: could not create a user token" >&2
    exit 1
}

# Sanity: each endpoint answers 200 with its credentials before it is measured.
check() { # URL [TOKEN]
    local code
    if [[ $# -ge 2 ]]; then
        code=$(curl -sS -o /dev/null -w '%{http_code}' -H "authorization: Bearer $2" "$1")
    else
        code=$(curl -sS -o /dev/null -w '%{http_code}' "$1")
    fi
    [[ $code == 200 ]] || {
        echo "b11: $1 answered $code, expected 200" >&2
        exit 1
    }
}
check "$base/api/v1/users/alice" "$admin_token"
check "$base/api/v1/users/alice/services/jellyfin/access" "$user_token"
check "$base/healthz"

# wrk's --latency distribution prints "50%  1.23ms"; normalise units to ms.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000
        printf "%.2f", n
    }'
}

run() { # ID NAME URL [TOKEN]
    local id=$1 name=$2 url=$3 out
    local args=(-t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency)
    if [[ $# -ge 4 ]]; then
        args+=(-H "Authorization: Bearer $4")
    fi
    out=$(wrk "${args[@]}" "$url")
    echo "$out" >"$work/wrk-$id.txt"
    if grep -q 'Non-2xx' <<<"$out"; then
        echo "b11: $name got non-2xx responses; numbers would be meaningless:" >&2
        echo "$out" >&2
        exit 1
    fi
    local rps p50 p99
    rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$out")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    printf '| %s | %s | %s | %s |\n' "$name" "$rps" "$p50" "$p99"
}

echo
echo "B11 on $(nproc) cores, wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "| endpoint | req/s | p50 ms | p99 ms |"
echo "|---|---|---|---|"
run user "GET /api/v1/users/alice (admin token)" "$base/api/v1/users/alice" "$admin_token"
run access "GET /api/v1/users/alice/services/jellyfin/access (user token)" \
    "$base/api/v1/users/alice/services/jellyfin/access" "$user_token"
run healthz "GET /healthz (no auth, floor)" "$base/healthz"
echo
echo "target: >= 20000 req/s and p99 <= 5 ms for the authenticated rows"
