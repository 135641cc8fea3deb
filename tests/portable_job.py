"""Runs one `detrec preprocess` through Beam's portable Job API, as the README tells users to:
`detrec beam-service job-service` and `detrec beam-service worker-pool` started from a shell
whose PATH has no venv, then the job with --runner PortableRunner and an EXTERNAL environment.

Meant to run in a network namespace of its own (tests/test_portable_runner.py starts it with
`unshare -rn`): Beam's servers listen on every interface, and there they reach nothing. It
brings the namespace's loopback up itself (no `ip` needed), uses the documented default ports,
and prints the launcher's stdout, stderr and exit code as one JSON object.

    python tests/portable_job.py -- <detrec preprocess flags>
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading

DETREC = os.path.join(os.path.dirname(sys.executable), "detrec")
FRESH_SHELL = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
               "TF_CPP_MIN_LOG_LEVEL": "2"}
READY_SECONDS = 120


def loopback_up() -> None:
    """`ip link set lo up`, by ioctl (SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, request)[:18])[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 0x1))


def start(*argv: str) -> tuple[subprocess.Popen, str]:
    """A `detrec beam-service` server, once it has printed its ready line."""
    proc = subprocess.Popen([DETREC, "beam-service", *argv], env=FRESH_SHELL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()

    def read() -> None:  # the server's output, then None when it closes
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    seen = []
    while True:
        line = lines.get(timeout=READY_SECONDS)
        if line is None:
            raise SystemExit(f"{argv[0]} ended before it was ready: {''.join(seen)}")
        seen.append(line)
        if " ready on port " in line:
            return proc, line.strip()


def main(flags: list[str]) -> int:
    loopback_up()
    servers, ready = [], []
    try:
        for role in ("job-service", "worker-pool"):
            proc, line = start(role)
            servers.append(proc)
            ready.append(line)
        job = subprocess.run([DETREC, "preprocess", "--runner", "PortableRunner", "--job_endpoint", "localhost:8099",
                              "--environment_type", "EXTERNAL", "--environment_config", "localhost:50000", *flags],
                             env=FRESH_SHELL, capture_output=True, text=True, timeout=600)
    finally:
        for proc in servers:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(60) for proc in servers]
    print(json.dumps({"rc": job.returncode, "stdout": job.stdout, "stderr": job.stderr, "ready": ready,
                      "server_exit_codes": codes}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[sys.argv.index("--") + 1:]))
