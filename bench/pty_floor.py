#!/usr/bin/env python3
"""B6's floor: the same producer as B6 (`yes <62-byte line> | head -c BYTES` under bash) on
a bare PTY of the host, read by this process as fast as it can (64 KiB reads), cooked and
raw. No WebSocket, no daemon, no box: what the kernel's PTY gives on this machine now.
Prints one JSON line."""
import json
import os
import pty
import subprocess
import sys
import time
import tty

BYTES = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000_000
LINE = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVW"


def run(raw):
    master, slave = pty.openpty()
    if raw:
        tty.setraw(slave)
    proc = subprocess.Popen(
        ["bash", "-c", f"yes {LINE} | head -c {BYTES}"],
        stdin=slave, stdout=slave, stderr=slave, close_fds=True,
    )
    os.close(slave)
    got = reads = 0
    start = time.perf_counter()
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # EIO: the other end is gone
            break
        if not data:
            break
        got += len(data)
        reads += 1
    secs = time.perf_counter() - start
    proc.wait()
    os.close(master)
    return got / secs / 1e6, got // max(reads, 1)


cooked, cooked_read = run(False)
raw, raw_read = run(True)
print(json.dumps({"bench": "b6_floor", "proto": "bare-pty", "bytes": BYTES,
                  "cooked_mb_s": cooked, "raw_mb_s": raw,
                  "mean_read_bytes_cooked": cooked_read, "mean_read_bytes_raw": raw_read}))
print(f"b6 floor (bare PTY, python reader): cooked {cooked:.1f} MB/s, raw {raw:.1f} MB/s, "
      f"about {raw_read} bytes per read", file=sys.stderr)
