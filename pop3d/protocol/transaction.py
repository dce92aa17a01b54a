"""TRANSACTION state handlers (RFC 1939 §5) and QUIT's UPDATE (§6): the only place a
deletion is committed."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from pop3d.protocol import commands, login_delay
from pop3d.protocol.events import (
    CommitResult,
    CommitUpdate,
    FailureKind,
    MeasureMessages,
    RetrieveMessage,
    StorageFailure,
)
from pop3d.protocol.states import HandlerResult, Outcome, Task
from pop3d.requests import Request

if TYPE_CHECKING:
    from pop3d.protocol.session import Session


def _sizes(session: Session, indexes: list[int]) -> Generator[Request, Any, list[int] | None]:
    """Sizes of ``indexes``, measuring those that had no hint. None if that failed.

    A message that cannot be measured (another agent removed it after the login, or it
    cannot be read) costs only itself: it keeps its number, as RFC 1939 fixes the
    listing at login (a STAT count one short would have clients that fetch 1..count miss
    the last message), and counts 0 octets, all it can give in this session (RETR of it
    answers -ERR). The size stands for the session, as every size announced does."""
    drop = session.maildrop
    sizes = drop.sizes
    missing = tuple(index for index in indexes if sizes[index] is None)
    if missing:
        measured = yield MeasureMessages(missing)
        if isinstance(measured, StorageFailure):
            session.err("[SYS/TEMP] Unable to read the maildrop")
            return None
        for index, size in zip(missing, measured, strict=True):
            drop.set_size(index, 0 if size is None else size)
    return [size for size in (sizes[index] for index in indexes) if size is not None]


def stat(session: Session, argument: bytes) -> Task:
    commands.no_arguments(argument)
    drop = session.maildrop
    totals = drop.totals
    if totals is None:
        sizes = yield from _sizes(session, drop.live())
        if sizes is None:
            return Outcome.FAIL
        totals = drop.totals = (len(sizes), sum(sizes))
    session.ok(f"{totals[0]} {totals[1]}")
    drop.sizes_shown = True
    return Outcome.OK


def list_(session: Session, argument: bytes) -> Task:
    number = commands.optional_message_number(argument)
    drop = session.maildrop
    if number is not None:
        index = drop.index_of(number)
        sizes = yield from _sizes(session, [index])
        if sizes is None:
            return Outcome.FAIL
        session.ok(f"{number} {sizes[0]}")
        drop.sizes_shown = True
        return Outcome.OK
    live = drop.live()
    sizes = yield from _sizes(session, live)
    if sizes is None:
        return Outcome.FAIL
    session.ok(f"{_count(len(live), 'message')} ({sum(sizes)} octets)")
    session.lines(f"{index + 1} {size}" for index, size in zip(live, sizes, strict=True))
    drop.sizes_shown = True
    return Outcome.OK


def uidl(session: Session, argument: bytes) -> Outcome:
    number = commands.optional_message_number(argument)
    drop = session.maildrop
    if number is not None:
        session.ok(f"{number} {drop.uids[drop.index_of(number)]}")
        return Outcome.OK
    session.ok("Unique-id listing follows")
    session.lines(f"{index + 1} {drop.uids[index]}" for index in drop.live())
    return Outcome.OK


def retr(session: Session, argument: bytes) -> Task:
    number = commands.message_number(argument)
    return _retrieve(session, number, session.maildrop.index_of(number), None)


def top(session: Session, argument: bytes) -> Task:
    number, lines = commands.top_arguments(argument)
    return _retrieve(session, number, session.maildrop.index_of(number), lines)


def _retrieve(session: Session, number: int, index: int, body_lines: int | None) -> Task:
    what = "Message" if body_lines is None else "Top of message"
    drop = session.maildrop
    preamble = f"+OK {what} follows\r\n".encode()
    result = yield RetrieveMessage(
        index, body_lines, preamble, drop.sizes[index], announced=drop.sizes_shown
    )
    if isinstance(result, StorageFailure):
        if result.kind is FailureKind.PERMANENT:
            session.err(f"Message {number} is no longer in the maildrop")
        else:
            session.err(f"[SYS/TEMP] Unable to read message {number}")
        return Outcome.FAIL
    if isinstance(result, int):  # its size was wrong, and the client had not been told it
        drop.set_size(index, result)
    if body_lines is None:
        drop.retrieved[index] = 1
    return Outcome.OK


def dele(session: Session, argument: bytes) -> Outcome:
    number = commands.message_number(argument)
    if session.settings.readonly:
        session.err("[SYS/PERM] This maildrop is read-only here")
        return Outcome.FAIL
    drop = session.maildrop
    drop.delete(drop.index_of(number))
    session.ok(f"Message {number} deleted")
    return Outcome.OK


def rset(session: Session, argument: bytes) -> Outcome:
    commands.no_arguments(argument)
    drop = session.maildrop
    drop.undelete_all()
    # and what was retrieved, which popuseimapflags marks seen at QUIT: Cyrus's RSET
    # clears both (pop3d.c:966-969)
    drop.retrieved[:] = bytes(len(drop.retrieved))
    session.ok()
    return Outcome.OK


def noop(session: Session, argument: bytes) -> Outcome:
    commands.no_arguments(argument)
    session.ok()
    return Outcome.OK


def quit_update(session: Session, argument: bytes) -> HandlerResult:
    commands.no_arguments(argument)
    return _update(session)


def _update(session: Session) -> Task:
    drop = session.maildrop
    settings = session.settings
    deleted = tuple(index for index, gone in enumerate(drop.deleted) if gone)
    record = login_delay.next_record(
        settings.min_poll_seconds, settings.poll_padding, drop.login_time, drop.last_login
    )
    seen: tuple[int, ...] = ()
    if settings.mark_seen:
        seen = tuple(i for i, sent in enumerate(drop.retrieved) if sent and not drop.deleted[i])
    result = yield CommitUpdate(deleted, record, seen)
    assert isinstance(result, CommitResult)
    if result.failed:
        session.err(
            f"[SYS/TEMP] {result.failed} of {len(deleted)} deleted messages could not be removed"
        )
        session.close("QUIT (update failed)", client_asked=True)
        return Outcome.FAIL
    removed = _count(result.removed, "message")
    session.ok(f"Logging out, {removed} deleted" if deleted else "Logging out")
    session.close("QUIT", client_asked=True)
    return Outcome.OK


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
