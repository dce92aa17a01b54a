"""tests/faults/eio_fs.py mounted over a directory in a private mount namespace: start it,
tell it where to fail, run commands that see the mount, stop it. Every wait is bounded."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.lab import ROOT

START_TIMEOUT = 20.0


class FaultyMount:
    """``directory`` as the processes started with :attr:`enter` see it: the same files,
    and EIO where :meth:`fail` says. Outside (this process) it stays the real directory."""

    def __init__(self, directory: Path, log: Path) -> None:
        self.directory = directory
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._stream: Any = None

    @staticmethod
    def available() -> str | None:
        """Why a FUSE mount cannot be made here, or None."""
        if os.geteuid() != 0:
            return "needs root to mount in a private namespace"
        if not os.path.exists("/dev/fuse"):
            return "no /dev/fuse: the kernel or the container has no FUSE"
        for tool in ("unshare", "nsenter"):
            if shutil.which(tool) is None:
                return f"needs {tool} (util-linux)"
        return None

    def start(self) -> FaultyMount:
        ours, theirs = socket.socketpair()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", sys.executable, "-m"]
                + ["tests.faults.eio_fs", str(self.directory), str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        theirs.close()
        ours.settimeout(START_TIMEOUT)
        self._control = ours
        self._stream = ours.makefile("rwb")
        try:
            ready = self._stream.readline()
        except TimeoutError:
            ready = b""
        if ready != b"mounted\n":
            self.stop()
            raise RuntimeError(f"eio_fs did not mount:\n{self.log.read_text(errors='replace')}")
        return self

    @property
    def enter(self) -> tuple[str, ...]:
        """A command prefix that runs a command in the mount's namespace."""
        assert self.process is not None
        return ("nsenter", f"--target={self.process.pid}", "--mount", f"--wd={ROOT}", "--")

    def fail(
        self, op: str, path: str, *, after: int | None = None, count: int | None = None
    ) -> None:
        """From now on, ``op`` on a path matching ``path`` (inside the mount) gets EIO:
        after ``after`` octets (read, write), at most ``count`` times."""
        self._ask({"add": {"op": op, "path": path, "after": after, "count": count}})

    def clear(self) -> None:
        self._ask({"clear": None})

    def hits(self) -> list[int]:
        """How many calls each rule failed, in the order they were given."""
        hits: list[int] = self._ask({"hits": None})["hits"]
        return hits

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        self._stream.write(json.dumps(request).encode() + b"\n")
        self._stream.flush()
        line = self._stream.readline()
        if not line:
            raise RuntimeError(f"eio_fs is gone:\n{self.log.read_text(errors='replace')}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def stop(self) -> None:
        """Hang up: the filesystem unmounts and exits (killed if it does not in time). The
        mount itself ends with the namespace, when the last process in it has gone."""
        if self._stream is not None:
            with contextlib.suppress(OSError):
                self._stream.close()
        if self._control is not None:
            self._control.close()
        if self.process is None:
            return
        try:
            self.process.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=START_TIMEOUT)
