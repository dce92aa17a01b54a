"""Import a Dovecot Maildir (with its ``dovecot-uidlist``) into a user's Maildir, keeping
each message's POP3 UIDL (issue 14).

* The UIDL kept is the uidlist's ``P<uidl>`` field where present, else what Dovecot's
  ``pop3_uidl_format`` produced (``%08Xu%08Xv`` by default: %u the UID, %v the
  UIDVALIDITY, %f the file name, %g the message's GUID (the uidlist's G field, else the
  base file name, as Dovecot's Maildir has it); ``0``/width padding and the X (hex,
  lower case as Dovecot prints it), L and U modifiers).
* Each message gets a new, deterministic unique part, ``<uidvalidity>.I<uid>V<uidvalidity>
  .dovecot`` (UID zero-padded, so messages list in UID order and before later deliveries),
  and the kept UIDL is recorded in ``pop3d-uidl`` beside it (``maildir.UIDL_MAP_NAME``).
  The unique part is never the UIDL itself: Dovecot's UIDLs do not sort in delivery order,
  and a UIDL need not be a valid Maildir name.
* The POP3 order is kept too. Dovecot's pop3 lists by the uidlist's ``O<n>`` field (what a
  migration into Dovecot wrote to keep the order of the server before it), those without
  one last, each group in UID order; such a message's unique part is
  ``<uidvalidity>.A<n>I<uid>V<uidvalidity>.dovecot`` ("A" sorts before "I"), so the message
  numbers a client saw at Dovecot are the ones it sees here.
* A file in ``new/`` or ``cur/`` the uidlist does not name (an MTA delivered it since
  Dovecot last listed the folder: no client has a UIDL for it) is imported after the
  others, keeping its unique part, with the UIDL pop3d gives any file.
* Order of writes, for a run that can be killed anywhere: the ``pop3d-uidl`` line (fsync),
  then the message in ``tmp/`` (fsync), linked into ``new/`` or ``cur/`` (fsync). A line
  without its message is ignored; a message is present only whole and with its line.
  A message ``pop3d-imported`` names (by its base file name; importing.ImportedRecord),
  or whose unique part is in the target, is skipped: a second run adds nothing, brings
  back nothing deleted since, and an interrupted one resumes.
* The source is only read: nothing there is written, renamed or locked. The whole uidlist
  is parsed before anything is written: a corrupt one stops the import with file:line and
  reason, the target unchanged. A message that cannot be read is reported and skipped.
* The source is a user's: nothing of it is opened through a symbolic link (storage/
  importing.py, SourcePath). A linked source folder, ``new/``, ``cur/`` or uidlist, or a
  uidlist that is no regular file or is over 64 MiB, stops the import before anything is
  written (SourceRefused); a message that is a link, no regular file or over
  ``MESSAGE_MAX`` is reported and skipped. ``new/`` and ``cur/`` are opened once: what is
  copied is what was listed, whatever is renamed in the source meanwhile.
* The bytes are copied exactly; flags (``:2,<flags>`` of a message in ``cur/``) are kept;
  so is the ``,W=`` size Dovecot's LIST gave (2 short for a message without a final line
  end, which Dovecot does not count), so LIST answers what it answered.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pop3d.storage.importing import (
    FOLDER,
    MESSAGE_MAX,
    REGULAR_FILE,
    ImportedRecord,
    ImportFailed,
    ImportReport,
    SourcePath,
    SourceRefused,
    locked_target,
    open_regular_file,
    open_source_directory,
    read_capped,
    refusal,
    source_error,
    source_key,
    write_message,
)
from pop3d.storage.maildir import (
    MaildirStore,
    _Folders,
    _open_directory,
    _open_message,
    size_hint,
    uidl_for,
    unique_part,
    valid_uidl,
)

DEFAULT_UIDL_FORMAT = "%08Xu%08Xv"
UIDLIST_NAME = "dovecot-uidlist"
# A uidlist line is some 60 octets: a million messages fit several times over.
UIDLIST_MAX = 64 * 1024 * 1024
UIDL_LONGEST = 70  # RFC 1939's unique-id: 1*70 characters
_VARIABLE = re.compile(r"%(0?)(\d*)([XLU]*)([uvfg%])")


@dataclass(frozen=True, slots=True)
class UidlistEntry:
    uid: int
    filename: str
    pop3_uidl: str | None
    line: int
    guid: str | None = None  # the G field; without one Dovecot's GUID is the base name
    pop3_order: int | None = None  # the O field: Dovecot's pop3 lists these first, by it

    def unique(self, uidvalidity: int) -> str:
        """The message's unique part here: deterministic, so a second run finds it."""
        order = "" if self.pop3_order is None else f"A{self.pop3_order:010d}"
        return f"{uidvalidity}.{order}I{self.uid:010d}V{uidvalidity}.dovecot"


@dataclass(frozen=True, slots=True)
class Uidlist:
    uidvalidity: int
    guid: str
    entries: tuple[UidlistEntry, ...]
    # "file:line: why", for each line Dovecot too would pass over (a file listed again)
    dropped: tuple[str, ...] = ()


def parse_uidlist(text: str, path: str) -> Uidlist:
    """A version 3 ``dovecot-uidlist``: ``3 V<uidvalidity> N<next> G<guid>``, then
    ``<uid> [<ext>...] :<filename>`` lines, each ended by LF or CRLF (a uidlist copied
    through a tool that wrote CRLF had every file name end in CR: no message was found).
    A file listed again keeps only its later line, as Dovecot keeps it (maildir-uidlist.c,
    "Duplicate file entry"): two lines for one file copied it twice. SourceRefused at the
    first line that does not parse."""
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise SourceRefused(f"{path}:1: empty uidlist")
    header = lines[0].split(" ")
    if header[0] != "3":
        raise SourceRefused(f"{path}:1: uidlist version {header[0]!r} (only 3 is supported)")
    fields = {item[:1]: item[1:] for item in header[1:] if item}
    if not fields.get("V", "").isdigit():
        raise SourceRefused(f"{path}:1: no V<uidvalidity> in the header")
    by_file: dict[str, UidlistEntry] = {}  # in UID order: a later line's is higher
    dropped: list[str] = []
    last = 0
    for number, line in enumerate(lines[1:], 2):
        head, sep, filename = line.partition(" :")
        parts = head.split(" ")
        if not sep or not parts[0].isdigit() or not filename or "/" in filename:
            raise SourceRefused(f"{path}:{number}: not '<uid> [ext...] :<filename>'")
        uid = int(parts[0])
        if uid <= last:
            raise SourceRefused(f"{path}:{number}: UID {uid} is not above the previous {last}")
        last = uid
        pop3 = next((p[1:] for p in parts[1:] if p.startswith("P")), None)
        guid = next((p[1:] for p in parts[1:] if p.startswith("G")), None)
        order = next((p[1:] for p in parts[1:] if p.startswith("O")), "")
        base = filename.partition(":")[0]
        earlier = by_file.pop(base, None)
        if earlier is not None:
            dropped.append(
                f"{path}:{number}: {base} listed again (UID {earlier.uid}, line "
                f"{earlier.line}): taken once, as UID {uid}, as Dovecot takes it"
            )
        by_file[base] = UidlistEntry(
            uid, filename, pop3 or None, number, guid or None, _pop3_order(order)
        )
    return Uidlist(int(fields["V"]), fields.get("G", ""), tuple(by_file.values()), tuple(dropped))


def _pop3_order(text: str) -> int | None:
    """An O field's value as Dovecot reads it (a 32-bit unsigned number); None where it
    has none: no field, one that is not such a number, or the largest, which Dovecot gives
    the messages without one."""
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value < 0xFFFFFFFF else None


_ORDERED = re.compile(r"(\d+\.)A\d{10}(I\d{10}V\d+\.dovecot)")


def _identity(unique: str) -> str:
    """A unique part without its POP3 order: the same message whatever order it was
    imported with (none, by a pop3d that did not read O fields, or one the uidlist has
    changed since), so a second run never copies it twice."""
    match = _ORDERED.fullmatch(unique)
    return match.group(1) + match.group(2) if match else unique


def check_format(template: str) -> None:
    """ValueError naming what Dovecot's pop3_uidl_format uses that this importer does not,
    or a width no UIDL has (RFC 1939: at most 70 characters; %999999999u built a string
    of a gigabyte, found probing)."""
    rest = _VARIABLE.sub("", template)
    if "%" in rest:
        raise ValueError(f"pop3_uidl_format {template!r}: only %u %v %f %g %% are supported")
    for _zero, width, _modifiers, _key in _VARIABLE.findall(template):
        if width and (len(width) > 3 or int(width) > UIDL_LONGEST):
            raise ValueError(
                f"pop3_uidl_format {template[:40]!r}: a width of {width[:10]}, where a UIDL "
                f"has at most {UIDL_LONGEST} characters"
            )


def expand_format(template: str, uid: int, uidvalidity: int, filename: str, guid: str) -> str:
    values = {"u": str(uid), "v": str(uidvalidity), "f": filename, "g": guid, "%": "%"}

    def one(match: re.Match[str]) -> str:
        zero, width, modifiers, key = match.groups()
        value = values[key]
        for modifier in modifiers:
            if modifier == "X":
                value = f"{int(value) if value.isdigit() else 0:x}"
            elif modifier == "L":
                value = value.lower()
            else:
                value = value.upper()
        if width:
            value = value.rjust(int(width), "0" if zero else " ")
        return value

    check_format(template)
    return _VARIABLE.sub(one, template)


def _source_folders(source: int, shown: str) -> dict[str, int]:
    """``new/`` and ``cur/`` of the source (directory fd ``source``), each a directory fd,
    never through a link; a missing one is left out."""
    folders: dict[str, int] = {}
    try:
        for subdir in ("new", "cur"):
            try:
                folders[subdir] = _open_directory(subdir, source)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise source_error(f"{shown}/{subdir}", subdir, source, exc, FOLDER) from None
    except BaseException:
        for fd in folders.values():
            os.close(fd)
        raise
    return folders


def _source_files(folders: dict[str, int], shown: str) -> dict[str, tuple[str, str]]:
    """base name (before ":") -> (subdir, file name) in the source's new/ and cur/."""
    found: dict[str, tuple[str, str]] = {}
    for subdir, fd in folders.items():
        try:
            names = os.listdir(fd)
        except OSError as exc:
            raise ImportFailed(f"cannot list {shown}/{subdir}: {exc.strerror}") from exc
        for name in names:
            found.setdefault(name.partition(":")[0], (subdir, name))
    return found


def _read_uidlist(source: int, shown: str) -> str:
    with open_regular_file(UIDLIST_NAME, source, shown) as handle:
        try:
            data = read_capped(handle, UIDLIST_MAX, shown)
        except OSError as exc:
            raise ImportFailed(f"{shown}: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SourceRefused(f"{shown}: not UTF-8") from None


def import_dovecot(
    source: Path | SourcePath,
    store: MaildirStore,
    user: str,
    uidl_format: str = DEFAULT_UIDL_FORMAT,
    report: Callable[[str], None] = lambda _line: None,
) -> ImportReport:
    """``source``: a Path is one named on the command line (SourcePath.given)."""
    try:
        check_format(uidl_format)
    except ValueError as exc:
        raise ImportFailed(str(exc)) from None
    where = SourcePath.given(source) if isinstance(source, Path) else source
    shown = str(where)
    folder = open_source_directory(where)
    try:
        text = _read_uidlist(folder, f"{shown}/{UIDLIST_NAME}")
        uidlist = parse_uidlist(text, f"{shown}/{UIDLIST_NAME}")
        subfolders = _source_folders(folder, shown)
    finally:
        os.close(folder)
    try:
        files = _source_files(subfolders, shown)
        with locked_target(store, user) as folders:
            return _import(
                shown,
                uidlist,
                files,
                sources=subfolders,
                folders=folders,
                uidl_format=uidl_format,
                report=report,
            )
    finally:
        for fd in subfolders.values():
            os.close(fd)


def _import(
    shown: str,
    uidlist: Uidlist,
    files: dict[str, tuple[str, str]],
    *,
    sources: dict[str, int],
    folders: _Folders,
    uidl_format: str,
    report: Callable[[str], None],
) -> ImportReport:
    result = ImportReport()
    for line in uidlist.dropped:
        report(line)
    record = ImportedRecord(folders.root)
    present = {
        _identity(unique_part(name))
        for subdir in ("new", "cur")
        for name in os.listdir(folders.fds[subdir])
    }
    for entry in uidlist.entries:
        where = f"{shown}: UID {entry.uid} ({entry.filename})"
        unique = entry.unique(uidlist.uidvalidity)
        key = source_key("dovecot", entry.filename.partition(":")[0])
        if record.has(key, in_target=_identity(unique) in present):
            result.present += 1
            continue
        uidl = entry.pop3_uidl or expand_format(
            uidl_format,
            entry.uid,
            uidlist.uidvalidity,
            entry.filename,
            entry.guid or entry.filename.partition(":")[0],
        )
        located = files.get(entry.filename.partition(":")[0])
        reason = None
        if not valid_uidl(uidl):
            reason = f"UIDL {uidl!r} is not a valid POP3 unique-id"
        elif located is None:
            reason = "no such file in new/ or cur/"
        if reason is None and located is not None:
            reason = _copy(sources[located[0]], located, unique, uidl, folders)
        if reason is not None:
            result.skipped.append(f"{where}: {reason}")
            report(f"{where}: skipped: {reason}")
            continue
        record.add(key)
        present.add(_identity(unique))
        result.imported += 1
    listed = {entry.filename.partition(":")[0] for entry in uidlist.entries}
    for base, located in sorted(files.items()):
        if base not in listed and not located[1].startswith("."):
            _copy_unlisted(
                shown,
                located,
                sources=sources,
                folders=folders,
                present=present,
                record=record,
                result=result,
                report=report,
            )
    return result


def _copy_unlisted(
    shown: str,
    located: tuple[str, str],
    *,
    sources: dict[str, int],
    folders: _Folders,
    present: set[str],
    record: ImportedRecord,
    result: ImportReport,
    report: Callable[[str], None],
) -> None:
    """A message the uidlist does not name: delivered (by Postfix, procmail) since Dovecot
    last listed the folder, so no client has its UIDL yet. It keeps its unique part and
    gets the UIDL pop3d gives any file (maildir.uidl_for); it was passed over, and the
    import said it was done (found probing)."""
    subdir, name = located
    unique = unique_part(name)
    where = f"{shown}: {subdir}/{name} (not in {UIDLIST_NAME})"
    key = source_key("dovecot", name.partition(":")[0])
    if record.has(key, in_target=unique in present):
        result.present += 1
        return
    reason = (
        _copy(sources[subdir], located, unique, uidl_for(unique), folders)
        if unique
        else "no Maildir unique part in its name"
    )
    if reason is not None:
        result.skipped.append(f"{where}: {reason}")
        report(f"{where}: skipped: {reason}")
        return
    record.add(key)
    present.add(unique)
    result.imported += 1
    result.unlisted += 1


def _copy(
    directory: int, located: tuple[str, str], unique: str, uidl: str, folders: _Folders
) -> str | None:
    """Copy one message from ``directory`` (the source's new/ or cur/); None, or why it was
    skipped (a source that cannot be read: a link, no regular file, too large). Errors
    writing the target propagate: the import stops."""
    subdir, name = located
    try:
        with _open_message(name, directory) as handle:
            if os.fstat(handle.fileno()).st_size > MESSAGE_MAX:
                return f"{subdir}/{name}: larger than {MESSAGE_MAX} bytes"
            data = handle.read(MESSAGE_MAX + 1)  # whole: copied complete or not at all
    except OSError as exc:
        return f"cannot read {subdir}/{name}: {refusal(name, directory, exc, REGULAR_FILE)[1]}"
    if len(data) > MESSAGE_MAX:
        return f"{subdir}/{name}: larger than {MESSAGE_MAX} bytes"
    _, sep, info = name.partition(":")
    destination = "cur" if subdir == "cur" and sep else "new"
    write_message(
        folders,
        unique,
        uidl,
        data,
        destination=destination,
        info=f":{info}" if sep else "",
        listed=size_hint(name),
    )
    return None
