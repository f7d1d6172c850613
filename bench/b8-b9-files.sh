#!/usr/bin/env bash
# B8 and B9 (PERFORMANCE.md), in one run:
#   B8: list a directory of 10k and of 100k entries through the file API, vs nginx
#       autoindex (json) on the same directory, vs the syscall floor (getdents + fstatat of
#       every entry, the `files-floor` example). Target: <= 2x the floor; 10k <= 80 ms.
#   B9: upload and download 1 GB through the file API vs nginx (PUT with the dav module,
#       GET of a static file) on loopback. Target: >= 80% of nginx's throughput.
#
# Builds the release daemon and the files-floor example, starts the daemon on a throw-away
# state directory (API on a free loopback port, admin socket in the temp dir, network off),
# creates a user, fills two directories in the user's home, and starts nginx (as root,
# on another free loopback port) whose root is that home. Every number is the median of
# RUNS runs (curl's time_total per request; the API's 100k listing is the sum of its
# pages, followed by cursor, 10000 entries a page). Everything is removed on exit.
#
# Run as root from anywhere:  bench/b8-b9-files.sh
# Knobs (environment): RUNS (5), SIZE_MB (1024), ONLY (b8 or b9: run just that one).
set -euo pipefail

# shellcheck source=bench/common.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/common.sh"
RUNS=${RUNS:-5}
SIZE_MB=${SIZE_MB:-1024}
ONLY=${ONLY:-}

if [[ $(id -u) -ne 0 ]]; then
    echo "b8-b9: must run as root" >&2
    exit 2
fi
for tool in curl ss nginx; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "b8-b9: $tool is missing; run scripts/install-deps" >&2
        exit 2
    }
done

cargo build --release --bin orchestratord --example files-floor

work=$(mktemp -d "${TMPDIR:-/tmp}/orchestratord-b8.XXXXXX")
daemon_pid=
nginx_pid=
cleanup() {
    for pid in $daemon_pid $nginx_pid; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$(bench_free_port)
nport=$(bench_free_port)
sock=$work/orchestratord.sock
state=$work/state
cat >"$work/config.toml" <<EOF
listen = "127.0.0.1:$port"
socket = "$sock"
state_dir = "$state"
[network]
enabled = false
[boxes]
cgroup = "orchd-b8-$$"
[files]
upload_limit = "$((SIZE_MB * 2))M"
EOF
RUST_LOG=warn "$TARGET_DIR/release/orchestratord" --config "$work/config.toml" \
    >"$work/daemon.log" 2>&1 &
daemon_pid=$!
base=http://127.0.0.1:$port
for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$base/healthz" 2>/dev/null && [[ -S $sock ]] && break
    kill -0 "$daemon_pid" 2>/dev/null || {
        cat "$work/daemon.log" >&2
        exit 1
    }
    sleep 0.1
done

admin() { # METHOD PATH [JSON]
    local args=(-fsS --unix-socket "$sock" -X "$1" "http://localhost$2")
    [[ $# -ge 3 ]] && args+=(-H 'content-type: application/json' -d "$3")
    curl "${args[@]}"
}
admin POST /api/v1/users '{"email": "bench@example.com", "displayName": "Bench",
  "role": "member", "osProfile": "homelabber"}' >/dev/null
token=$(admin POST /api/v1/tokens '{"kind": "user", "user": "bench", "name": "b8"}' |
    sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
auth=(-H "authorization: Bearer $token")
curl -fsS -o /dev/null "${auth[@]}" "$base/api/v1/users/bench/files"
home=$state/homes/bench
uid=$(stat -c %u "$home")

echo "b8-b9: making 10k and 100k files..." >&2
for n in 10000 100000; do
    mkdir "$home/d$n"
    (cd "$home/d$n" && seq -f "file-%06g.txt" 1 "$n" | xargs touch)
    chown -R "$uid:$uid" "$home/d$n"
done
if [[ $ONLY != b8 ]]; then
        echo "b8-b9: making a ${SIZE_MB} MB file..." >&2
        head -c "$((SIZE_MB * 1024 * 1024))" /dev/urandom >"$work/src.bin"
fi

mkdir -p "$work/nginx/tmp" "$work/nginx/up"
cat >"$work/nginx/nginx.conf" <<EOF
user root root;
worker_processes 2;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 256; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path $work/nginx/tmp;
    client_max_body_size 0;
    server {
        listen 127.0.0.1:$nport;
        location /home/ {
            alias $home/;
            autoindex on;
            autoindex_format json;
        }
        location /up/ {
            alias $work/nginx/up/;
            dav_methods PUT;
            create_full_put_path on;
        }
    }
}
EOF
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" &
nginx_pid=$!
nbase=http://127.0.0.1:$nport
for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$nbase/home/" 2>/dev/null && break
    sleep 0.1
done

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# One API listing, all pages; prints the summed time_total in seconds. The daemon keeps
# the sorted names of large directories (kept exact by inotify), so repeated walks are
# answered from that cache ("cached"). With "first", the walk is of a fresh copy of the
# directory (`cp -al`, untimed, removed after): the first page reads and caches it, the
# others use the cache. With "changing", a file is created in the directory and the one
# made before the previous page removed, before every page (untimed): every page finds
# the names changed and merges the changes first.
api_list() { # DIR [first|changing]
    local dir=$1 cursor="" total=0 out t code next k=0
    if [[ ${2:-} == first ]]; then
        dir=$1.first
        cp -al "$home/$1" "$home/$dir"
    fi
    while :; do
        if [[ ${2:-} == changing ]]; then
            : >"$home/$dir/churn-$k"
            rm -f "$home/$dir/churn-$((k - 1))"
            k=$((k + 1))
        fi
        # The body goes to a file (as nginx's does below), not through a pipe into bash.
        out=$(curl -sS "${auth[@]}" -o "$work/page.json" -w '%{time_total} %{http_code}' \
            "$base/api/v1/users/bench/files?path=$dir&limit=10000${cursor:+&cursor=$cursor}")
        read -r t code <<<"$out"
        [[ $code == 200 ]] || {
            echo "b8-b9: list answered $code" >&2
            exit 1
        }
        total=$(awk -v a="$total" -v b="$t" 'BEGIN {print a + b}')
        next=$(grep -o '"nextCursor":"[^"]*"' "$work/page.json" | cut -d'"' -f4 || true)
        [[ -n $next ]] || break
        cursor=$next
    done
    [[ ${2:-} == first ]] && rm -rf "${home:?}/$dir"
    [[ ${2:-} == changing ]] && rm -f "$home/$dir/churn-$((k - 1))"
    echo "$total"
}
api_count() { # DIR: entries over all pages (a sanity check of the walk)
    local cursor="" count=0 body next
    while :; do
        body=$(curl -fsS "${auth[@]}" \
            "$base/api/v1/users/bench/files?path=$1&limit=10000${cursor:+&cursor=$cursor}")
        count=$((count + $(grep -o '"name":' <<<"$body" | wc -l)))
        next=$(grep -o '"nextCursor":"[^"]*"' <<<"$body" | cut -d'"' -f4 || true)
        [[ -n $next ]] || break
        cursor=$next
    done
    echo "$count"
}

ms() { awk -v s="$1" 'BEGIN {printf "%.1f", s * 1000}'; }

if [[ $ONLY != b9 ]]; then
    printf '\nB8: list (median of %s runs, ms)\n' "$RUNS"
    printf '| entries | API cached | API first walk | API changing | nginx autoindex json | syscall floor | cached / floor | first / floor | changing / floor | cached / nginx |\n|---|---|---|---|---|---|---|---|---|---|\n'
    for n in 10000 100000; do
        got=$(api_count "d$n")
        [[ $got == "$n" ]] || {
            echo "b8-b9: the API listed $got of $n entries" >&2
            exit 1
        }
        # Interleaved, one sample of each per round, so that every figure and the floor
        # see the same machine (this VM's speed drifts by half within minutes).
        apis=() firsts=() colds=() ngxs=() floors=()
        for _ in $(seq 1 "$RUNS"); do
            apis+=("$(api_list "d$n")")
            floors+=("$("$TARGET_DIR/release/examples/files-floor" "$home/d$n" 3 |
                sed -n 's/.*"median_ms": \([0-9.]*\).*/\1/p')")
            firsts+=("$(api_list "d$n" first)")
            colds+=("$(api_list "d$n" changing)")
            ngxs+=("$(curl -fsS -o "$work/page.json" -w '%{time_total}\n' "$nbase/home/d$n/")")
        done
        api=$(printf '%s\n' "${apis[@]}" | median)
        first=$(printf '%s\n' "${firsts[@]}" | median)
        cold=$(printf '%s\n' "${colds[@]}" | median)
        ngx=$(printf '%s\n' "${ngxs[@]}" | median)
        floor=$(printf '%s\n' "${floors[@]}" | median)
        ratio() { awk -v a="$(ms "$1")" -v f="$floor" 'BEGIN {printf "%.2f", a / f}'; }
        printf '| %s | %s | %s | %s | %s | %s | %sx | %sx | %sx | %.2fx |\n' "$n" \
            "$(ms "$api")" "$(ms "$first")" "$(ms "$cold")" "$(ms "$ngx")" "$floor" \
            "$(ratio "$api")" "$(ratio "$first")" "$(ratio "$cold")" \
            "$(awk -v a="$api" -v g="$ngx" 'BEGIN {print a / g}')"
    done
fi

if [[ $ONLY != b8 ]]; then
    printf '\nB9: %s MB over loopback (median of %s runs, MB/s)\n' "$SIZE_MB" "$RUNS"
    printf '| direction | file API | nginx | API / nginx |\n|---|---|---|---|\n'
    rate() { awk -v mb="$SIZE_MB" -v s="$1" 'BEGIN {printf "%.0f", mb / s}'; }
    timed() { # CURL-ARGS...: prints time_total, fails on a non-2xx answer
        local r
        r=$(curl -sS -o /dev/null -w '%{time_total} %{http_code}' "$@")
        [[ ${r#* } == 2* ]] || {
            echo "b8-b9: curl $* answered ${r#* }" >&2
            exit 1
        }
        echo "${r% *}"
    }
    api_up=$(for _ in $(seq 1 "$RUNS"); do
        timed "${auth[@]}" -H 'Expect:' -T "$work/src.bin" \
            "$base/api/v1/users/bench/files/content?path=up.bin&overwrite=true"
    done | median)
    ngx_up=$(for _ in $(seq 1 "$RUNS"); do
        timed -H 'Expect:' -T "$work/src.bin" "$nbase/up/up.bin"
    done | median)
    cmp -s "$work/src.bin" "$home/up.bin" || {
        echo "b8-b9: the uploaded file differs" >&2
        exit 1
    }
    api_down=$(for _ in $(seq 1 "$RUNS"); do
        timed "${auth[@]}" "$base/api/v1/users/bench/files/content?path=up.bin"
    done | median)
    ngx_down=$(for _ in $(seq 1 "$RUNS"); do
        timed "$nbase/up/up.bin"
    done | median)
    for dir in upload download; do
        if [[ $dir == upload ]]; then a=$api_up g=$ngx_up; else a=$api_down g=$ngx_down; fi
        printf '| %s | %s | %s | %.0f%% |\n' "$dir" "$(rate "$a")" "$(rate "$g")" \
            "$(awk -v a="$a" -v g="$g" 'BEGIN {print 100 * g / a}')"
    done
fi
