"""Whether a line is an mbox ``From_`` line, as Dovecot decides it (``mbox_from_parse`` in
src/lib-storage/index/mbox/mbox-from.c): ``From ``, a sender, then a date. A body line that
only begins with ``From `` ("From the desk of Bob: greetings") does not part two messages,
whether or not an empty line comes before it; one with a sender and a date does, even
without the empty line. Dovecot reads an mbox this way, so the import splits it where
Dovecot did and finds the very messages Dovecot's POP3 served.

The sender is everything up to a space (a quoted part first, if it begins with a quote);
after it and its spaces, one of the two dates Dovecot reads:

* asctime's ``Www Mmm dd hh:mm[:ss] [zone] yyyy`` (a one-digit day after one space or two;
  a zone is any word that is not four digits), or
* ``Www, d[d] Mmm yyyy hh:mm[:ss]``.

Only whether it parses matters here (mbox_import.from_line_time reads the time).
"""

from __future__ import annotations

_MONTHS = frozenset(b"jan feb mar apr may jun jul aug sep oct nov dec ???".split())
# What a date needs at the least (Dovecot's 29 - 3 - 5 octets): shorter is no date
_SHORTEST_DATE = 21


def is_from_line(line: bytes) -> bool:
    """Whether ``line`` (its line end included or not) is a ``From_`` line Dovecot takes."""
    if not line.startswith(b"From "):
        return False
    end = _sender_end(line, 5)
    if end is None:
        return False
    while line[end : end + 1] == b" ":
        end += 1
    return _Date(line[end:]).parses()


def _sender_end(line: bytes, at: int) -> int | None:
    """Where the sender starting at ``at`` ends: at the first space after its quoted part,
    if any; None where a line end comes first."""
    if line[at : at + 1] == b'"':
        at += 1
        escaped = False
        while at < len(line) and (line[at] != ord('"') or escaped):
            if line[at] in b"\r\n":
                return None
            escaped = line[at] == ord("\\")
            at += 1
        at += 1
    space = line.find(b" ", at)
    end = len(line) if space < 0 else space
    return None if b"\r" in line[at:end] or b"\n" in line[at:end] else end


class _Date:
    """A cursor over the date's octets, read as Dovecot reads them."""

    def __init__(self, text: bytes) -> None:
        self.text = text
        self.at = 0

    def octets(self, count: int) -> bytes:
        return self.text[self.at : self.at + count]

    def digits(self, count: int) -> bool:
        taken = self.octets(count)
        if len(taken) == count and taken.isdigit():
            self.at += count
            return True
        return False

    def literal(self, octet: bytes) -> bool:
        if self.octets(1) == octet:
            self.at += 1
            return True
        return False

    def month(self) -> bool:
        word = self.octets(4)
        if word[:3].lower() in _MONTHS and word[3:] == b" ":
            self.at += 4
            return True
        return False

    def parses(self) -> bool:
        if len(self.text) < _SHORTEST_DATE:
            return False
        self.at = 4  # the weekday and its space, unread
        if self.month():
            alternate = False
            self.literal(b" ")
            one_digit = self.text[self.at + 1 : self.at + 2] == b" "
            if not (self.digits(1) if one_digit else self.digits(2)) or not self.literal(b" "):
                return False
        else:  # "Thu, 9 Nov 2002 22:33:52": the comma was the weekday's fourth octet
            alternate = True
            self.at += 1
            if not self.digits(1):
                return False
            self.digits(1)
            if not (self.literal(b" ") and self.month() and self.digits(4)):
                return False
            self.at += 1
        if not (self.digits(2) and self.literal(b":") and self.digits(2)):
            return False
        if self.literal(b":") and not self.digits(2):
            return False
        if alternate:
            return True
        return self.literal(b" ") and self._zone() and self.digits(4)

    def _zone(self) -> bool:
        """A word that is not four digits, and its space, passed over (Dovecot ignores a
        named zone, and a numeric one too, as it comes this way)."""
        if self.octets(4).isdigit() and len(self.octets(4)) == 4:
            return True
        space = self.text.find(b" ", self.at)
        word_end = len(self.text) if space < 0 else space
        if b"\r" in self.text[self.at : word_end] or b"\n" in self.text[self.at : word_end]:
            return False
        if word_end + 5 > len(self.text):
            return False
        self.at = word_end + 1
        return True
