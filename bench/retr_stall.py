"""How long does one big RETR stall the other sessions of its worker?

One worker (prefork=1), two clients: A retrieves a large message whose pages were evicted
from the page cache first (posix_fadvise DONTNEED: a cold read from disk), B, logged in
beside it, sends NOOP in a loop and times each answer. Reported: A's MB/s and B's answer
times during A's RETR (median, p99, max). Run from the checkout root:

    .venv/bin/python bench/retr_stall.py [--size-mb 200] [--repeat 3]

It measures whichever pop3d the checkout holds, so comparing two ways of reading (on the
event loop, or in a thread) means running it on both trees.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.lab import Lab, start_server


def login(port: int, user: str, password: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    reader = sock.makefile("rb")
    reader.readline()
    for line in (f"USER {user}", f"PASS {password}"):
        sock.sendall(line.encode() + b"\r\n")
        assert reader.readline().startswith(b"+OK")
    return sock


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def one_run(lab: Lab, port: int, big: Path, size: int) -> tuple[float, list[float]]:
    evict(big)
    b = login(port, "alice", "wonderland")
    b_reader = b.makefile("rb")
    a = login(port, "bob", "builder")
    timings: list[float] = []
    done = threading.Event()

    def noop_loop() -> None:
        while not done.is_set():
            start = time.perf_counter()
            b.sendall(b"NOOP\r\n")
            b_reader.readline()
            timings.append(time.perf_counter() - start)
            time.sleep(0.002)

    thread = threading.Thread(target=noop_loop)
    start = time.perf_counter()
    thread.start()
    a.sendall(b"RETR 4\r\n")
    received = 0
    tail = b""
    while not tail.endswith(b"\r\n.\r\n"):
        chunk = a.recv(1 << 20)
        assert chunk
        received += len(chunk)
        tail = (tail + chunk)[-5:]
    elapsed = time.perf_counter() - start
    done.set()
    thread.join()
    for sock in (a, b):
        sock.sendall(b"QUIT\r\n")
        sock.close()
    return size / elapsed / 1e6, timings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP", "/var/tmp")) as tmp:
        lab = Lab(Path(tmp)).create()
        big = lab.maildir("bob") / "new" / "1800000001.M1P1.big"
        line = b"y" * 998 + b"\r\n"
        with big.open("wb") as handle:
            handle.write(b"Subject: big\r\n\r\n")
            for _ in range(args.size_mb * 1000):
                handle.write(line)
        size = big.stat().st_size
        server = start_server(lab)
        try:
            for run in range(args.repeat):
                rate, timings = one_run(lab, server.port, big, size)
                timings.sort()
                p99 = timings[int(len(timings) * 0.99) - 1] if timings else float("nan")
                print(
                    f"run {run + 1}: RETR {size / 1e6:.0f} MB at {rate:.0f} MB/s; "
                    f"NOOP beside it: n={len(timings)} median "
                    f"{statistics.median(timings) * 1e3:.2f} ms, p99 {p99 * 1e3:.1f} ms, "
                    f"max {timings[-1] * 1e3:.1f} ms"
                )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
