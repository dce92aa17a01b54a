"""The saslname of RFC 5802 §5.1 and RFC 5801 §4 (SCRAM, GS2 and OAUTHBEARER headers): UTF-8
with "," and "=" written =2C and =3D. One strict decoder for every mechanism: invalid
UTF-8, an "=" that is not one of the two escapes, and control characters are refused."""

from __future__ import annotations

import re

from pop3d.sasl.mechanism import MalformedResponse

_BAD_ESCAPE = re.compile(r"=(?!2C|3D)")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")


def decode(value: bytes, what: str = "saslname") -> str:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedResponse(f"{what} is not UTF-8") from None
    if _BAD_ESCAPE.search(text):
        raise MalformedResponse(f"bad escape in {what}")
    if _CONTROLS.search(text):
        raise MalformedResponse(f"control character in {what}")
    return text.replace("=2C", ",").replace("=3D", "=")
