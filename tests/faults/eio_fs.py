"""A FUSE filesystem that passes everything through to the directory it is mounted over,
and answers EIO where it is told to: the kernel then hands the caller a real EIO, from the
same system call a failing disk would fail.

    unshare --mount --propagation private python -m tests.faults.eio_fs DIRECTORY CONTROL_FD

It opens DIRECTORY before mounting over it, and works through that descriptor from then on
(never through the mount, which would call itself). It is written on mfusepy, the kept fork
of fusepy: ctypes over libfuse 3, nothing to compile. Run it in a mount namespace of its own:
the mount is seen only by the processes that join it (``nsenter --target PID --mount``),
the directory outside keeps showing the real files, and the mount goes away with the last
process in the namespace, so no stale mount can outlive a test.

CONTROL_FD is one end of a socket pair (tests/faults/eio_mount.py holds the other). The
filesystem writes ``mounted`` on it once the kernel has initialised the mount, then reads
one JSON request per line and answers each with one JSON line:

* ``{"add": RULE}`` adds a rule; ``{"clear": null}`` removes them all. Both answer ``{}``.
* ``{"hits": null}`` answers ``{"hits": [N, ...]}``: how many calls each rule failed, in
  the order they were added.

A RULE is ``{"op": OP, "path": GLOB}`` with optional ``"after"`` (read and write: the
first ``after`` octets of the file go through, what lies beyond fails) and ``"count"``
(fail that many calls, then let them through). OP is a FUSE operation: ``open``,
``create``, ``read``, ``write``, ``fsync``, ``opendir``, ``readdir``, ``fsyncdir``,
``link``, ``unlink``, ``rename``, ``mkdir``, ``getattr``, ``utimens``; GLOB is matched
(``fnmatch``) against the path inside the mount (``/bob/Maildir/new/*``); ``link`` and
``rename`` match their new name or their old one. End of file on CONTROL_FD (the test is
gone) unmounts.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import mfusepy

_STAT_FIELDS = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks")
_STATVFS_FIELDS = (
    "f_bsize",
    "f_frsize",
    "f_blocks",
    "f_bfree",
    "f_bavail",
    "f_files",
    "f_ffree",
    "f_favail",
    "f_namemax",
)


@dataclass
class Rule:
    op: str
    path: str
    after: int | None = None
    count: int | None = None
    hits: int = 0

    def matches(self, op: str, paths: Iterable[str]) -> bool:
        if op != self.op or (self.count is not None and self.hits >= self.count):
            return False
        return any(fnmatch.fnmatchcase(path, self.path) for path in paths)


class Faults:
    """The rules in force; called from libfuse's threads and the control thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[Rule] = []

    def add(self, rule: dict[str, Any]) -> None:
        with self._lock:
            self._rules.append(Rule(**rule))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def hits(self) -> list[int]:
        with self._lock:
            return [rule.hits for rule in self._rules]

    def check(self, op: str, *paths: str) -> None:
        """EIO if a rule for ``op`` matches one of ``paths``."""
        with self._lock:
            for rule in self._rules:
                if rule.after is None and rule.matches(op, paths):
                    rule.hits += 1
                    raise OSError(errno.EIO, os.strerror(errno.EIO))

    def allowed(self, op: str, path: str, offset: int, size: int) -> int:
        """How much of a read or write of ``size`` octets at ``offset`` may go through:
        all of it, the part before a rule's ``after`` (a short read or write, as a disk
        gives before the bad block), or nothing (EIO)."""
        with self._lock:
            for rule in self._rules:
                if not rule.matches(op, (path,)):
                    continue
                limit = 0 if rule.after is None else rule.after
                if offset + size <= limit:
                    continue
                if offset < limit:
                    return limit - offset
                rule.hits += 1
                raise OSError(errno.EIO, os.strerror(errno.EIO))
        return size


class Passthrough(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True  # times in nanoseconds, as os.stat gives them

    def __init__(self, root: int, faults: Faults, control: socket.socket) -> None:
        self.root = root  # O_PATH descriptor of the directory under the mount
        self.faults = faults
        self.control = control

    @staticmethod
    def _rel(path: str) -> str:
        return path.lstrip("/") or "."

    def init(self, _path: str) -> None:
        self.control.sendall(b"mounted\n")

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        self.faults.check("getattr", path)
        info = os.stat(self._rel(path), dir_fd=self.root, follow_symlinks=False)
        attrs = {name: getattr(info, name) for name in _STAT_FIELDS}
        for name in ("st_atime", "st_mtime", "st_ctime"):
            attrs[name] = getattr(info, name + "_ns")
        return attrs

    def readlink(self, path: str) -> str:
        return os.readlink(self._rel(path), dir_fd=self.root)

    def mkdir(self, path: str, mode: int) -> int:
        self.faults.check("mkdir", path)
        os.mkdir(self._rel(path), mode, dir_fd=self.root)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._rel(path), dir_fd=self.root)
        return 0

    def unlink(self, path: str) -> int:
        self.faults.check("unlink", path)
        os.unlink(self._rel(path), dir_fd=self.root)
        return 0

    def symlink(self, target: str, source: str) -> int:
        os.symlink(source, self._rel(target), dir_fd=self.root)
        return 0

    def rename(self, old: str, new: str) -> int:
        self.faults.check("rename", new, old)
        os.rename(self._rel(old), self._rel(new), src_dir_fd=self.root, dst_dir_fd=self.root)
        return 0

    def link(self, target: str, source: str) -> int:
        self.faults.check("link", target, source)
        os.link(
            self._rel(source),
            self._rel(target),
            src_dir_fd=self.root,
            dst_dir_fd=self.root,
            follow_symlinks=False,
        )
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._rel(path), mode, dir_fd=self.root)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._rel(path), uid, gid, dir_fd=self.root, follow_symlinks=False)
        return 0

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        if fh is not None:
            os.ftruncate(fh, length)
            return 0
        fd = os.open(self._rel(path), os.O_WRONLY, dir_fd=self.root)
        try:
            os.ftruncate(fd, length)
        finally:
            os.close(fd)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        self.faults.check("utimens", path)
        os.utime(self._rel(path), ns=times, dir_fd=self.root, follow_symlinks=False)
        return 0

    def open(self, path: str, flags: int) -> int:
        self.faults.check("open", path)
        return os.open(self._rel(path), flags, dir_fd=self.root)

    def create(self, path: str, mode: int, flags: int) -> int:
        self.faults.check("create", path)
        return os.open(self._rel(path), flags | os.O_CREAT, mode, dir_fd=self.root)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, self.faults.allowed("read", path, offset, size), offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        allowed = self.faults.allowed("write", path, offset, len(data))
        return os.pwrite(fh, data[:allowed], offset)

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self.faults.check("fsync", path)
        os.fsync(fh)
        return 0

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    def opendir(self, path: str) -> int:
        self.faults.check("opendir", path)
        return os.open(self._rel(path), os.O_RDONLY | os.O_DIRECTORY, dir_fd=self.root)

    def readdir(self, path: str, fh: int) -> list[str]:
        self.faults.check("readdir", path)
        fd = os.open(self._rel(path), os.O_RDONLY | os.O_DIRECTORY, dir_fd=self.root)
        try:
            return [".", "..", *os.listdir(fd)]
        finally:
            os.close(fd)

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        self.faults.check("fsyncdir", path)
        os.fsync(fh)
        return 0

    def releasedir(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        info = os.statvfs(self.root)
        return {name: getattr(info, name) for name in _STATVFS_FIELDS}


def serve_control(control: socket.socket, faults: Faults) -> None:
    """Answer the test's requests; when it hangs up, unmount (libfuse exits on SIGTERM)."""
    with control, control.makefile("rwb") as stream:
        for line in stream:
            request = json.loads(line)
            answer: dict[str, Any] = {}
            if "add" in request:
                faults.add(request["add"])
            elif "clear" in request:
                faults.clear()
            else:
                answer["hits"] = faults.hits()
            stream.write(json.dumps(answer).encode() + b"\n")
            stream.flush()
    os.kill(os.getpid(), signal.SIGTERM)


def main(directory: str, control_fd: str) -> int:
    root = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    control = socket.socket(fileno=int(control_fd))
    faults = Faults()
    threading.Thread(target=serve_control, args=(control, faults), daemon=True).start()
    operations = Passthrough(root, faults, control)
    try:
        mfusepy.FUSE(
            operations,
            directory,
            foreground=True,
            fsname="eio_fs",
            # Every read and write reaches us with the caller's offset and size (no page
            # cache, no read-ahead: "fails after N octets" means N), and no name or
            # attribute is cached, so files the test changes outside show at once.
            direct_io=True,
            # An open file unlinked is unlinked below too (the descriptor we hold keeps it
            # readable), not renamed to a .fuse_hidden file in the Maildir.
            hard_remove=True,
            entry_timeout=0,
            attr_timeout=0,
            negative_timeout=0,
        )
    except RuntimeError:
        pass  # libfuse reports the SIGTERM that unmounted it as an error
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
