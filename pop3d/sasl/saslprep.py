"""SASLprep (RFC 4013), the stringprep profile SCRAM applies to user names and passwords.

Built on the stdlib ``stringprep`` tables (RFC 3454): map (B.1 to nothing, C.1.2 to a
space), normalise with NFKC, refuse the prohibited tables, check bidirectional text.
"""

from __future__ import annotations

import stringprep
import unicodedata

_PROHIBITED = (
    stringprep.in_table_c12,
    stringprep.in_table_c21,
    stringprep.in_table_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
    stringprep.in_table_a1,  # unassigned code points: refused for stored strings
)


class SASLprepError(ValueError):
    pass


def saslprep(text: str) -> str:
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in text if not stringprep.in_table_b1(ch)
    )
    normalized = unicodedata.normalize("NFKC", mapped)
    for ch in normalized:
        if any(table(ch) for table in _PROHIBITED):
            raise SASLprepError(f"prohibited character U+{ord(ch):04X}")
    rand_al = [stringprep.in_table_d1(ch) for ch in normalized]
    if any(rand_al):
        if any(stringprep.in_table_d2(ch) for ch in normalized):
            raise SASLprepError("mixed right-to-left and left-to-right text")
        if not (rand_al[0] and rand_al[-1]):
            raise SASLprepError("right-to-left text must start and end right-to-left")
    return normalized
