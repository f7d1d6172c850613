#!/usr/bin/env bash
# B1 (PERFORMANCE.md): start an isolated environment and run `true` in it, sequentially,
# ours side by side with bubblewrap, crun and systemd-nspawn in the same run.
# Targets: ours p50 within 2x of `bwrap --unshare-all`; faster than crun and nspawn.
#
# ours   = box-start b1: Command::Start of a homelabber member box, `true` through the exec
#          helper, Command::Stop (one restarted user; bench/README.md says why)
# bwrap  = bwrap --unshare-all ... true, the host's /usr read-only, merged-/usr symlinks
# crun   = crun run of an OCI bundle from `crun spec` (pid, net, ipc, uts, mount + cgroup
#          namespaces), rootfs = the same host-binds layout, process `true`
# nspawn = systemd-nspawn --register=no --keep-unit --as-pid2 --private-network, a minimal
#          rootfs with /usr bound read-only
# floor  = fork+exec of `true` on the host, with the same spawn code (the harness's floor)
#
# NETWORK=1: ours gets its network as the daemon gives it (the user's nftables rules
# applied, then a veth created inside the box with its address and route; deleted at
# stop), all inside a network namespace the run unshares for itself. The peers then run
# as before (bwrap and crun with an empty network namespace: neither creates links on
# its own), plus nspawn-veth = systemd-nspawn --network-veth (a veth pair to the host
# side, the closest peer); target: ours p50 <= 15 ms.
#
# All tools are timed by the same Rust loop (box-start b1 --peer), interleaved in ROUNDS
# rounds so drift on the shared machine hits each alike; p50/p90/p99 per tool and the
# ratios ours/peer are printed as a Markdown table (stderr) and JSON lines (stdout).
#
# Run as root from anywhere:  bench/b1-start.sh
# Knobs (environment): ITERATIONS (100), ROUNDS (5), FRESH_USERS (unset: same user),
# SAMPLES (set: one JSON line per iteration on stdout too), NETWORK (set: with network).
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/common.sh"

ITERATIONS=${ITERATIONS:-100}
ROUNDS=${ROUNDS:-5}

bench_require_root b1
bench_ensure_pkgs bubblewrap crun systemd-container
bench_build

work=$(mktemp -d "${TMPDIR:-/tmp}/orchd-b1.XXXXXX")
crun_cg=orchd-bench-crun-$$
nspawn_cg=
cleanup() {
    # crun: a container left by an interrupted run, then the cgroups it made for us.
    if [[ -d $work/crun-state ]]; then
        crun --root "$work/crun-state" delete -f "orchd-b1-$$" >/dev/null 2>&1 || true
    fi
    local d
    for d in /sys/fs/cgroup/*/"$crun_cg" /sys/fs/cgroup/"$crun_cg" $nspawn_cg; do
        if [[ -d $d ]]; then find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The host-binds layout of Debian 12 (merged /usr): /usr read-only, the rest symlinks.
make_rootfs() { # DIR
    mkdir -p "$1"/{usr,proc,dev,sys,tmp,run,etc,var,root}
    local l
    for l in bin lib lib64 sbin; do ln -sfn "usr/$l" "$1/$l"; done
}

# --- crun: `crun spec` defaults, made to run `true` on the host-binds rootfs.
bundle=$work/bundle
mkdir -p "$bundle" "$work/crun-state"
make_rootfs "$bundle/rootfs"
(cd "$bundle" && crun spec)
python3 - "$bundle/config.json" "$crun_cg" <<'EOF'
import json, sys
path, cg = sys.argv[1], sys.argv[2]
c = json.load(open(path))
c["process"]["terminal"] = False
c["process"]["args"] = ["true"]
c["root"] = {"path": "rootfs", "readonly": True}
c["mounts"].append({"destination": "/usr", "type": "bind", "source": "/usr",
                    "options": ["rbind", "ro", "nosuid", "nodev"]})
ns = c["linux"]["namespaces"]
if not any(n["type"] == "cgroup" for n in ns):
    ns.append({"type": "cgroup"})
# Relative: crun places it below the hierarchies' roots; removed on exit.
c["linux"]["cgroupsPath"] = cg + "/b1"
json.dump(c, open(path, "w"), indent=1)
EOF

# --- nspawn: a minimal OS tree (it insists on os-release) with /usr bound at run time.
nroot=$work/nspawn-root
make_rootfs "$nroot"
cp /etc/os-release "$nroot/etc/os-release"

bwrap_cmd="bwrap --unshare-all --die-with-parent --ro-bind /usr /usr --symlink usr/bin /bin \
--symlink usr/lib /lib --symlink usr/lib64 /lib64 --symlink usr/sbin /sbin --proc /proc \
--dev /dev --tmpfs /tmp true"
crun_cmd="crun --root $work/crun-state run --bundle $bundle orchd-b1-$$"
nspawn_cmd="systemd-nspawn -q --register=no --keep-unit --as-pid2 --private-network \
--resolv-conf=off --timezone=off --link-journal=no -D $nroot --bind-ro=/usr true"

# crun refuses cgroup "hybrid" mode (v1 controllers plus a v2 mount that holds any
# controller: here the unified mount holds hugetlb). The whole run therefore happens in a
# private mount namespace without the unified mount: nothing changes on the host, and ours
# uses the v1 controllers either way (Cgroups::detect picks v2 only when it has memory,
# pids and cpu). systemd-nspawn --keep-unit makes `payload` and `supervisor` cgroups
# beside its own, so the run joins a name=systemd (or v2) cgroup of our own first.
hybrid=
if [[ $(stat -f -c %T /sys/fs/cgroup) == tmpfs ]] && mountpoint -q /sys/fs/cgroup/unified; then
    hybrid=1
fi
if [[ -d /sys/fs/cgroup/systemd ]]; then
    nspawn_cg=/sys/fs/cgroup/systemd/orchd-bench-nspawn-$$
elif [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    own=$(awk -F: '$1 == "0" {print $3}' /proc/self/cgroup)
    nspawn_cg=/sys/fs/cgroup${own%/}/orchd-bench-nspawn-$$
fi
[[ -n $nspawn_cg ]] && mkdir "$nspawn_cg"

# With NETWORK set, everything (peers and their probes included) runs in a network
# namespace of its own: links the tools create never appear on the host.
unshare_net=()
[[ -n ${NETWORK:-} ]] && unshare_net=(-n)
in_bench_env() { # COMMAND...
    # shellcheck disable=SC2016 # expanded by the inner bash
    unshare -m "${unshare_net[@]}" --propagation private -- bash -c '
        set -e
        if [[ -n $1 ]]; then umount /sys/fs/cgroup/unified; fi
        if [[ -n $2 ]]; then echo $$ >"$2/cgroup.procs"; fi
        shift 2
        exec "$@"' _ "$hybrid" "$nspawn_cg" "$@"
}

# Each peer once: a peer that cannot run here is reported and left out, not fatal.
peers=()
probe() { # NAME COMMAND
    local out
    # shellcheck disable=SC2086 # the command is split on whitespace on purpose
    if out=$(in_bench_env $2 2>&1); then
        peers+=(--peer "$1=$2")
    else
        echo "b1: $1 cannot run here, left out: $out" >&2
    fi
}
probe floor-true "true"
probe bwrap "$bwrap_cmd"
probe crun "$crun_cmd"
probe nspawn "$nspawn_cmd"
if [[ -n ${NETWORK:-} ]]; then
    probe nspawn-veth "${nspawn_cmd/--private-network/--network-veth}"
fi

echo "B1 on $(bench_machine)" >&2
extra=()
[[ -n ${FRESH_USERS:-} ]] && extra+=(--fresh-users)
[[ -n ${SAMPLES:-} ]] && extra+=(--samples)
[[ -n ${NETWORK:-} ]] && extra+=(--network)
in_bench_env "$BOX_START" b1 --iterations "$ITERATIONS" --rounds "$ROUNDS" \
    "${extra[@]}" "${peers[@]}"
if [[ -n ${NETWORK:-} ]]; then
    echo "target: ours p50 <= 15 ms with network" >&2
else
    echo "target: ours p50 <= 2x bwrap p50, and below crun and nspawn" >&2
fi
