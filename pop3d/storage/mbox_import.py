"""Import an mbox (``/var/mail/<user>``) into a user's Maildir, keeping or fixing each
message's POP3 UIDL (issue 14).

* Read as **mboxrd**: a message starts at a line beginning ``From `` at the start of the
  file or after an empty line; that line is dropped, and so is the empty line before the
  next one; in the body, ``>From ``, ``>>From `` ... lose one ``>``. An mboxo file reads the
  same, except that a body line that really began ``>From `` loses its ``>`` (mboxo cannot
  tell the two apart). Content-Length (mboxcl) is not read. Otherwise the bytes are copied
  exactly, line ends included, so sizes may differ from what a server that hid its
  ``Status``/``X-UID``... headers reported.
* The UIDL kept is the ``X-UIDL:`` header's value where it is a valid RFC 1939 unique-id
  (Dovecot's ``pop3_reuse_xuidl``) and no earlier message of the mbox took it; else the
  SHA-256 of the copied bytes in hex, with ``-<n>`` added for the n-th identical copy. So
  the UIDL is a function of the mbox alone: a second import recognises each message.
* A message whose UIDL the target already serves (its ``pop3d-uidl`` line with its file,
  or a file's own UIDL) is skipped: a second run adds nothing, an interrupted one resumes.
  The write order, lock and sidecar are those of the Dovecot import.
* Each message gets the unique part ``<time>.I<n>H<digest>.mbox``: the ``From `` line's
  date (UTC; kept non-decreasing, so mbox order holds) and its position, so it lists in
  mbox order and before later deliveries.
* Flags, the simple ones only: ``Status:`` R is seen (S); ``X-Status:`` A answered (R),
  F flagged (F), T draft (D), D deleted (T); other letters are ignored. A message with a
  flag goes to ``cur/``, else to ``new/``.
* A message whose header does not parse (empty, or a line before the blank line that is
  neither a field nor a continuation) is reported and skipped. A file that does not start
  with ``From `` stops the import before anything is written. The source is only read.
"""

from __future__ import annotations

import calendar
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from pop3d.storage.importing import ImportFailed, ImportReport, locked_target, write_message
from pop3d.storage.maildir import (
    MaildirStore,
    _Folders,
    read_uidl_map,
    uidl_for,
    unique_part,
    valid_uidl,
)

_ESCAPED = re.compile(rb">+From ")
_FIELD = re.compile(rb"[!-9;-~]+:")
_STATUS_FLAGS = {"R": "S"}
_X_STATUS_FLAGS = {"A": "R", "F": "F", "T": "D", "D": "T"}


def messages(handle: BinaryIO) -> Iterator[tuple[bytes, bytes]]:
    """(the ``From `` line, the message's bytes, unescaped), in file order."""
    separator: bytes | None = None
    lines: list[bytes] = []
    previous_empty = True
    for raw in handle:
        if raw.startswith(b"From ") and previous_empty:
            if separator is not None:
                yield separator, b"".join(lines[:-1] if lines else lines)
            elif lines:
                raise ValueError("does not start with a 'From ' line")
            separator, lines = raw, []
            previous_empty = False
            continue
        if separator is None:
            raise ValueError("does not start with a 'From ' line")
        line = raw[1:] if _ESCAPED.match(raw) else raw
        lines.append(line)
        previous_empty = line in (b"\n", b"\r\n")
    if separator is not None:
        if lines and lines[-1] in (b"\n", b"\r\n"):
            lines.pop()
        yield separator, b"".join(lines)


def header_fields(data: bytes) -> dict[str, str] | None:
    """The header's fields (lower-case name -> unfolded value, the first of each name), or
    None when the header does not parse."""
    fields: dict[str, str] = {}
    name: str | None = None  # the field a continuation line extends (None: a repeated one)
    count = 0
    for line in data.splitlines():
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if not count:
                return None
            if name is not None:
                fields[name] = f"{fields[name]} {line.strip().decode('latin-1')}".strip()
            continue
        if not _FIELD.match(line):
            return None
        raw, _, value = line.partition(b":")
        count += 1
        key = raw.decode("ascii").lower()
        name = None if key in fields else key
        if name is not None:
            fields[name] = value.strip().decode("latin-1")
    return fields if count else None


def from_line_time(line: bytes) -> int:
    """The asctime date at the end of a ``From `` line as UTC seconds, 0 if there is none."""
    words = line.decode("latin-1").split()
    for start in (-5, -6):  # "... Thu Nov  2 10:00:00 2023", or with a zone after it
        try:
            stamp = " ".join(words[start:][:5])
            return calendar.timegm(time.strptime(stamp, "%a %b %d %H:%M:%S %Y"))
        except (ValueError, OverflowError):
            continue
    return 0


def maildir_flags(fields: dict[str, str]) -> str:
    flags = {_STATUS_FLAGS[c] for c in fields.get("status", "") if c in _STATUS_FLAGS}
    flags |= {_X_STATUS_FLAGS[c] for c in fields.get("x-status", "") if c in _X_STATUS_FLAGS}
    return "".join(sorted(flags))


def _served(folders: _Folders) -> set[str]:
    """Every UIDL the target serves now."""
    kept = read_uidl_map(folders.root)
    uniques = {
        unique_part(name) for subdir in ("new", "cur") for name in os.listdir(folders.fds[subdir])
    }
    return {kept.get(unique) or uidl_for(unique) for unique in uniques}


def import_mbox(
    source: Path,
    store: MaildirStore,
    user: str,
    report: Callable[[str], None] = lambda _line: None,
) -> ImportReport:
    try:
        handle = open(source, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ImportFailed(f"{source}: {exc.strerror}") from None
    with handle:
        try:
            first = handle.read(5)
        except OSError as exc:
            raise ImportFailed(f"{source}: {exc.strerror}") from None
        if first not in (b"", b"From "):
            raise ImportFailed(f"{source}: not an mbox (does not start with 'From ')")
        handle.seek(0)
        with locked_target(store, user) as folders:
            return _import(source, handle, folders, report)


def _import(
    source: Path, handle: BinaryIO, folders: _Folders, report: Callable[[str], None]
) -> ImportReport:
    result = ImportReport()
    served = _served(folders)
    taken: set[str] = set()  # UIDLs given to earlier messages of this mbox
    copies: dict[str, int] = {}
    lead = 0
    try:
        for number, (separator, data) in enumerate(messages(handle), 1):
            lead = max(lead, from_line_time(separator))
            digest = hashlib.sha256(data).hexdigest()
            fields = header_fields(data)
            if fields is None:
                reason = "the header does not parse"
                result.skipped.append(f"{source}: message {number}: {reason}")
                report(f"{source}: message {number}: skipped: {reason}")
                continue
            uidl = fields.get("x-uidl", "")
            if not valid_uidl(uidl) or uidl in taken:
                copies[digest] = copies.get(digest, 0) + 1
                uidl = digest if copies[digest] == 1 else f"{digest}-{copies[digest]}"
            taken.add(uidl)
            if uidl in served:
                result.present += 1
                continue
            flags = maildir_flags(fields)
            unique = f"{lead}.I{number:010d}H{digest[:16]}.mbox"
            write_message(
                folders,
                unique,
                uidl,
                data,
                destination="cur" if flags else "new",
                info=f":2,{flags}" if flags else "",
            )
            served.add(uidl)
            result.imported += 1
    except ValueError as exc:
        raise ImportFailed(f"{source}: {exc}") from exc
    except OSError as exc:
        raise ImportFailed(f"{source}: {exc.strerror}") from exc
    return result
