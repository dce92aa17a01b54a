"""Import an mbox (``/var/mail/<user>``) into a user's Maildir, keeping or fixing each
message's POP3 UIDL (issue 14).

* A message starts at a ``From_`` line (storage/mbox_from.py: ``From ``, a sender and a
  date, as Dovecot takes one) at the start of the file or after any line; that line is
  dropped, and so is the line end before the next one (or the end of the file), as
  Dovecot drops them: the empty line before a ``From_`` line is the separator's. Where the
  header has a ``Content-Length:`` that ends the body exactly there (at the end of the
  file, or at an empty line and a ``From `` line), the body is that many bytes, whatever
  lines it holds: Dovecot writes Content-Length and does not escape ``From `` lines. Body
  lines are never unescaped: ``>From `` stays as it is stored, as Dovecot (and UW-IMAP)
  served it.
* The mbox's own bookkeeping headers are dropped: ``Content-Length``, ``Status``,
  ``X-IMAP``, ``X-IMAPbase``, ``X-Keywords``, ``X-Status`` and ``X-UID``, the very list
  Dovecot hides when it serves an mbox (``mbox_hide_headers``; UW-IMAP hides the same), so
  the bytes and the size a client gets stay the old server's. Everything else is copied
  exactly, line ends included. A message carrying ``X-IMAP`` is the folder's pseudo-message
  ("DON'T DELETE THIS MESSAGE"), never served: it is not imported.
* The UIDL kept, in this order: with ``reuse_xuidl`` (the old site served them, Dovecot's
  ``pop3_reuse_xuidl = yes``) the ``X-UIDL:`` header's value where it is a valid RFC 1939
  unique-id and no earlier message of the mbox took it; else, where the mbox carries
  Dovecot's (or UW-IMAP's) UIDs, ``X-UID:`` and the UIDVALIDITY of ``X-IMAPbase:``/
  ``X-IMAP:``, what Dovecot's ``pop3_uidl_format`` made of them (``%08Xu%08Xv`` by default;
  %f and %g are empty for an mbox); else the SHA-256 of the copied bytes in hex, with
  ``-<n>`` added for the n-th identical copy. So the UIDL is a function of the mbox alone:
  a second import recognises each message.
* ``X-UIDL`` is not taken by default, as Dovecot does not take it (``pop3_reuse_xuidl =
  no``): any sender can write one, and one equal to a UIDL the target serves had the
  message taken for one already there, never imported (found probing).
* A message ``pop3d-imported`` names (by the SHA-256 of its bytes and which copy of them
  it is; importing.ImportedRecord), or whose UIDL or unique part the target has, is
  skipped: a second run adds nothing, brings back nothing deleted since, and an
  interrupted one resumes.
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
* The mbox is a user's: it is opened without following a link (nor any folder between it
  and the administrator's part of the path, storage/importing.py, SourcePath), and only a
  regular file is read (a FIFO cannot hang the import). Lines are read in pieces of at most
  ``_PIECE`` octets and a message is held whole only up to ``MESSAGE_MAX`` octets: a larger
  one (a sparse file costs a user no disk) is reported and skipped, never read into memory.
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

from pop3d.message import canonical_size
from pop3d.storage.dovecot_import import DEFAULT_UIDL_FORMAT, check_format, expand_format
from pop3d.storage.importing import (
    MESSAGE_MAX,
    ImportedRecord,
    ImportFailed,
    ImportReport,
    SourcePath,
    SourceRefused,
    locked_target,
    open_source_file,
    source_key,
    write_message,
)
from pop3d.storage.maildir import (
    MaildirStore,
    _Folders,
    read_uidl_map,
    uidl_for,
    unique_part,
    valid_uidl,
)
from pop3d.storage.mbox_from import is_from_line

_CONTENT_LENGTH = re.compile(rb"content-length:[ \t]*(\d{1,15})[ \t]*\r?\n", re.IGNORECASE)
_FIELD = re.compile(rb"[!-9;-~]+:")
_STATUS_FLAGS = {"R": "S"}
_X_STATUS_FLAGS = {"A": "R", "F": "F", "T": "D", "D": "T"}
# Dovecot's mbox_hide_headers (src/lib-storage/index/mbox/mbox-storage.c): never served
_HIDDEN = frozenset(b"content-length status x-imap x-imapbase x-keywords x-status x-uid".split())
# The most read at once: a longer line comes in pieces, so no line is ever held whole
_PIECE = 256 * 1024


def messages(handle: BinaryIO, limit: int = MESSAGE_MAX) -> Iterator[tuple[bytes, bytes | None]]:
    """(the ``From `` line, the message's bytes as stored, or None for one over ``limit``
    octets, which is never held whole), in file order. A message ends at a ``From_`` line
    (:func:`mbox_from.is_from_line`: a sender and a date, as Dovecot takes one, an empty
    line before it or not), except inside the body a valid ``Content-Length:`` gives
    (Dovecot writes one and escapes nothing in the body); the line end before it, or before
    the end of the file, is the separator's, as Dovecot has it. A body line that only
    began with ``From `` after an empty line split a message in two, and the report named
    a message Dovecot never had (found probing)."""
    separator: bytes | None = None
    lines: list[bytes] = []
    size = 0  # of the message so far; over limit, its lines are let go
    previous_empty = True
    line_start = True  # the next piece starts a line (not the rest of a long one)
    in_separator = False  # the rest of a long From line: dropped with it
    in_header = False
    length: int | None = None
    while raw := handle.readline(_PIECE):
        starts_line, line_start = line_start, raw.endswith(b"\n")
        if in_separator:
            in_separator = not line_start
            continue
        if starts_line and raw.startswith(b"From ") and (separator is None or is_from_line(raw)):
            if separator is not None:
                yield separator, None if size > limit else _without_line_end(lines)
            separator, lines, size = raw, [], 0
            previous_empty, in_header, length = False, True, None
            in_separator = not line_start
            continue
        if separator is None:
            raise ValueError("does not start with a 'From ' line")
        size += len(raw)
        if size > limit:
            lines = []
        else:
            lines.append(raw)
        previous_empty = starts_line and raw in (b"\n", b"\r\n")
        if in_header and starts_line and (match := _CONTENT_LENGTH.fullmatch(raw)):
            length = int(match[1])
        if in_header and previous_empty:
            in_header = False
            room = limit - size
            if length is not None and length > room and _skip_body(handle, length):
                # Too big to hold, yet a valid Content-Length: the whole body is this one
                # message, skipped; splitting it at "From " lines inside it imported a
                # message planted there (found probing).
                size, lines = limit + 1, []
                previous_empty, line_start = False, True
                continue
            body = None if length is None or length > room else _body(handle, length)
            if body:
                lines.append(body)
                size += len(body)
                previous_empty, line_start = False, True
    if separator is not None:
        yield separator, None if size > limit else _without_line_end(lines)


def _without_line_end(lines: list[bytes]) -> bytes:
    """The message of ``lines`` without its last line end (LF or CRLF): the separator's."""
    data = b"".join(lines)
    if data.endswith(b"\n"):
        data = data[:-2] if data.endswith(b"\r\n") else data[:-1]
    return data


def _skip_body(handle: BinaryIO, length: int) -> bool:
    """Past the next ``length`` bytes, unread, if they end where a message may (as
    :func:`_body` checks); else False, the file position unchanged."""
    start = handle.tell()
    if start + length > os.fstat(handle.fileno()).st_size:
        return False
    handle.seek(start + length)
    if _ends_message(handle):
        handle.seek(start + length)
        return True
    handle.seek(start)
    return False


def _body(handle: BinaryIO, length: int) -> bytes | None:
    """The next ``length`` bytes if they end where a message may (the end of the file, or
    an empty line and a ``From `` line); else None, the file position unchanged."""
    start = handle.tell()
    if start + length > os.fstat(handle.fileno()).st_size:
        return None  # never read a bogus length's worth into memory
    body = handle.read(length)
    if len(body) == length and _ends_message(handle):
        handle.seek(start + length)
        return body
    handle.seek(start)
    return None


def _ends_message(handle: BinaryIO) -> bool:
    """Whether what is next ends a message: the end of the file, or a line end and then
    the end of the file or a ``From_`` line. Reads on: the caller seeks back."""
    after = handle.read(1)
    if after == b"\r":
        after = handle.read(1)
    return after == b"" or (after == b"\n" and _from_or_end(handle.readline(_PIECE)))


def _from_or_end(line: bytes) -> bool:
    return line == b"" or is_from_line(line)


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


def without_hidden(data: bytes) -> bytes:
    """``data`` without the mbox bookkeeping fields (:data:`_HIDDEN`) of its header and
    their continuation lines; the body is untouched."""
    lines = data.splitlines(keepends=True)
    out: list[bytes] = []
    dropping = False
    for index, line in enumerate(lines):
        if line in (b"\n", b"\r\n"):
            out.extend(lines[index:])
            break
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                out.append(line)
            continue
        dropping = line.partition(b":")[0].strip().lower() in _HIDDEN
        if not dropping:
            out.append(line)
    return b"".join(out)


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


def _served(folders: _Folders) -> tuple[set[str], set[str]]:
    """The unique parts in the target now, and every UIDL it serves."""
    kept = read_uidl_map(folders.root)
    uniques = {
        unique_part(name) for subdir in ("new", "cur") for name in os.listdir(folders.fds[subdir])
    }
    return uniques, {kept.get(unique) or uidl_for(unique) for unique in uniques}


def import_mbox(
    source: Path | SourcePath,
    store: MaildirStore,
    user: str,
    report: Callable[[str], None] = lambda _line: None,
    *,
    uidl_format: str = DEFAULT_UIDL_FORMAT,
    reuse_xuidl: bool = False,
) -> ImportReport:
    try:
        check_format(uidl_format)
    except ValueError as exc:
        raise ImportFailed(str(exc)) from None
    where = SourcePath.given(source) if isinstance(source, Path) else source
    source = Path(str(where))  # for messages only: it is opened once, here
    handle = open_source_file(where)
    with handle:
        try:
            first = handle.read(5)
        except OSError as exc:
            raise ImportFailed(f"{source}: {exc.strerror}") from None
        if first not in (b"", b"From "):
            raise SourceRefused(f"{source}: not an mbox (does not start with 'From ')")
        handle.seek(0)
        with locked_target(store, user) as folders:
            return _import(
                source, handle, folders, report, uidl_format=uidl_format, reuse_xuidl=reuse_xuidl
            )


def _uidvalidity(fields: dict[str, str]) -> int | None:
    """The UIDVALIDITY of Dovecot's ``X-IMAPbase: <uidvalidity> <uidnext> ...`` (or UW-IMAP's
    ``X-IMAP:``), None without one."""
    words = (fields.get("x-imapbase") or fields.get("x-imap") or "").split()
    return int(words[0]) if words and words[0].isdigit() else None


def _import(
    source: Path,
    handle: BinaryIO,
    folders: _Folders,
    report: Callable[[str], None],
    *,
    uidl_format: str,
    reuse_xuidl: bool,
) -> ImportReport:
    result = ImportReport()
    uidvalidity: int | None = None
    record = ImportedRecord(folders.root)
    uniques, served = _served(folders)
    taken: set[str] = set()  # UIDLs given to earlier messages of this mbox
    copies: dict[str, int] = {}  # of each digest, among the UIDLs made of it
    occurrences: dict[str, int] = {}  # of each digest, in the mbox
    lead = 0
    try:
        for number, (separator, stored) in enumerate(messages(handle), 1):
            lead = max(lead, from_line_time(separator))
            if stored is None:
                reason = f"larger than {MESSAGE_MAX} bytes"
                result.skipped.append(f"{source}: message {number}: {reason}")
                report(f"{source}: message {number}: skipped: {reason}")
                continue
            fields = header_fields(stored)
            if fields is None:
                reason = "the header does not parse"
                result.skipped.append(f"{source}: message {number}: {reason}")
                report(f"{source}: message {number}: skipped: {reason}")
                continue
            if number == 1 or "x-imap" in fields:
                uidvalidity = _uidvalidity(fields)
            if "x-imap" in fields:
                continue  # the folder's pseudo-message: bookkeeping, never served
            flags = maildir_flags(fields)
            data = without_hidden(stored)
            digest = hashlib.sha256(data).hexdigest()
            # The record names a message by its bytes (those a client is served), not its
            # UIDL, which --uidl-format and the X-UIDL choice change between two runs
            occurrences[digest] = occurrences.get(digest, 0) + 1
            key = source_key("mbox", f"{digest}-{occurrences[digest]}")
            uid = fields.get("x-uid", "")
            uidl = fields.get("x-uidl", "") if reuse_xuidl else ""
            if (not valid_uidl(uidl) or uidl in taken) and uidvalidity and uid.isdigit():
                uidl = expand_format(uidl_format, int(uid), uidvalidity, "", "")
            if not valid_uidl(uidl) or uidl in taken:
                copies[digest] = copies.get(digest, 0) + 1
                uidl = digest if copies[digest] == 1 else f"{digest}-{copies[digest]}"
            taken.add(uidl)
            unique = f"{lead}.I{number:010d}H{digest[:16]}.mbox"
            # its file, there under another UIDL (a run with other options, before the
            # record), is it too: copied again, it stopped the run on a name taken
            if record.has(key, in_target=uidl in served or unique in uniques):
                result.present += 1
                continue
            write_message(
                folders,
                unique,
                uidl,
                data,
                destination="cur" if flags else "new",
                info=f":2,{flags}" if flags else "",
                # Dovecot's LIST leaves out the line end RETR adds to a message without
                # one (the one before a From_ line or the end of the file is not its own)
                listed=None if data.endswith(b"\n") else canonical_size([data]) - 2,
            )
            record.add(key)
            served.add(uidl)
            result.imported += 1
    except ValueError as exc:
        raise SourceRefused(f"{source}: {exc}") from exc
    except OSError as exc:
        raise ImportFailed(f"{source}: {exc.strerror}") from exc
    return result
