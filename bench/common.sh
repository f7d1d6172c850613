# shellcheck shell=bash
# Shared by the benchmarks (bench/b1-start.sh, b3-churn.sh, b10-memory.sh, b10-daemon.sh,
# b7-firewall.sh, b-terminal.sh, b8-b9-files.sh): sourced, not run. Expects `set -euo pipefail` in the caller.

# The repository root, whatever the caller's working directory.
BENCH_ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
cd "$BENCH_ROOT" || exit 1
command -v cargo >/dev/null 2>&1 || export PATH="${HOME:-/root}/.cargo/bin:$PATH"
TARGET_DIR=${CARGO_TARGET_DIR:-$BENCH_ROOT/target}

# A loopback TCP port nothing listens on (a random try among 20000-59999, up to 50).
bench_free_port() {
    local c
    for _ in $(seq 1 50); do
        c=$((20000 + RANDOM % 40000))
        [[ -z $(ss -Htln "sport = :$c") ]] && { echo "$c"; return; }
    done
    echo "no free port found" >&2
    return 1
}

bench_require_root() { # NAME
    if [[ $(id -u) -ne 0 ]]; then
        echo "$1: must run as root (boxes need cgroups and namespaces)" >&2
        exit 2
    fi
}

# Installs the Debian packages that are missing (idempotent: nothing is fetched when all
# are installed).
bench_ensure_pkgs() { # PKG...
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$p")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        echo "installing peers: ${missing[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
}

# Builds the release binaries and the box-start example; sets BOX_START to its path.
bench_build() {
    cargo build --release --bins --example box-start
    # The static helper and init (target/release/static/), as a deployment uses them.
    ./scripts/build-static release
    # shellcheck disable=SC2034 # used by the scripts that source this file
    BOX_START=$TARGET_DIR/release/examples/box-start
}

# One line saying where and when, for the results table.
bench_machine() {
    local kernel cgv
    kernel=$(uname -r)
    if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then cgv=v2; else cgv="v1 (hybrid)"; fi
    echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(. /etc/os-release && echo "$PRETTY_NAME"), kernel $kernel, cgroup $cgv"
}
