"""An independent SASL client for the CRAM-MD5 and DIGEST-MD5 tests: Cyrus SASL's own
client plugins (libsasl2, Debian's libsasl2-2 and libsasl2-modules), driven through
ctypes.

It runs as a child process, so a crash in C cannot take pytest down with it, and speaks a
line protocol on stdin/stdout::

    client: START <base64 initial response, or "-">
    server: <base64 challenge>          (repeated)
    client: STEP <base64 response>      more to come
            DONE <base64 response, or "-">   the client is satisfied (for DIGEST-MD5 this
                                             is where it has checked rspauth)
            FAIL <code> <detail>        the client refused, e.g. a wrong rspauth

``--cnonce`` fixes the client nonce (SASL_CB_CNONCE, which Cyrus has for testing), so an
exchange can be recorded as a vector.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import ctypes.util
import sys
from typing import Any

SASL_OK, SASL_CONTINUE = 0, 1
CB_LIST_END, CB_USER, CB_AUTHNAME, CB_PASS, CB_CNONCE, CB_GETREALM = (
    0,
    0x4001,
    0x4002,
    0x4004,
    0x4007,
    0x4008,
)

_GETSIMPLE = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.POINTER(ctypes.c_void_p),
    ctypes.POINTER(ctypes.c_uint),
)
_GETSECRET = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.POINTER(ctypes.c_void_p),
)
_GETREALM = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.POINTER(ctypes.c_void_p),
    ctypes.POINTER(ctypes.c_void_p),
)


class _Callback(ctypes.Structure):
    _fields_ = (("id", ctypes.c_ulong), ("proc", ctypes.c_void_p), ("context", ctypes.c_void_p))


def library_path() -> str | None:
    return ctypes.util.find_library("sasl2")


def _library() -> Any:
    path = library_path()
    if path is None:
        raise SystemExit("FAIL -1 libsasl2 not found")
    lib = ctypes.CDLL(path)
    p_void = ctypes.POINTER(ctypes.c_void_p)
    lib.sasl_client_init.argtypes = (ctypes.c_void_p,)
    lib.sasl_client_new.argtypes = (
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_void_p,
        ctypes.c_uint,
        p_void,
    )
    lib.sasl_client_start.argtypes = (
        ctypes.c_void_p,
        ctypes.c_char_p,
        p_void,
        p_void,
        ctypes.POINTER(ctypes.c_uint),
        ctypes.POINTER(ctypes.c_char_p),
    )
    lib.sasl_client_step.argtypes = (
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_uint,
        p_void,
        p_void,
        ctypes.POINTER(ctypes.c_uint),
    )
    lib.sasl_errdetail.argtypes = (ctypes.c_void_p,)
    lib.sasl_errdetail.restype = ctypes.c_char_p
    return lib


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mechanism", required=True)
    parser.add_argument("--service", default="pop")
    parser.add_argument("--host", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--authzid", default="")
    parser.add_argument("--cnonce")
    args = parser.parse_args()
    lib = _library()
    keep: list[object] = []  # C holds pointers into these until the process ends

    def c_string(value: bytes) -> int:
        buffer = ctypes.create_string_buffer(value)
        keep.append(buffer)
        return ctypes.addressof(buffer)

    simple = {
        CB_AUTHNAME: args.user.encode(),
        CB_USER: args.authzid.encode(),
    }
    if args.cnonce is not None:
        simple[CB_CNONCE] = args.cnonce.encode()

    @_GETSIMPLE
    def get_simple(_context: Any, which: int, result: Any, length: Any) -> int:
        value = simple.get(which)
        if value is None:
            return -1
        result[0] = c_string(value)
        if length:
            length[0] = len(value)
        return SASL_OK

    @_GETSECRET
    def get_secret(_conn: Any, _context: Any, _which: int, secret: Any) -> int:
        password = args.password.encode()
        size = ctypes.sizeof(ctypes.c_ulong)
        buffer = ctypes.create_string_buffer(size + len(password) + 1)
        ctypes.c_ulong.from_buffer(buffer).value = len(password)
        ctypes.memmove(ctypes.addressof(buffer) + size, password, len(password))
        keep.append(buffer)
        secret[0] = ctypes.addressof(buffer)
        return SASL_OK

    @_GETREALM
    def get_realm(_context: Any, _which: int, available: Any, result: Any) -> int:
        result[0] = available[0] if available and available[0] else c_string(args.host.encode())
        return SASL_OK

    entries = [(which, ctypes.cast(get_simple, ctypes.c_void_p)) for which in simple]
    entries += [
        (CB_PASS, ctypes.cast(get_secret, ctypes.c_void_p)),
        (CB_GETREALM, ctypes.cast(get_realm, ctypes.c_void_p)),
        (CB_LIST_END, ctypes.c_void_p()),
    ]
    callbacks = (_Callback * len(entries))(*(_Callback(w, p.value, None) for w, p in entries))

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    if lib.sasl_client_init(None) != SASL_OK:
        say("FAIL -1 sasl_client_init")
        return
    conn = ctypes.c_void_p()
    code = lib.sasl_client_new(
        args.service.encode(), args.host.encode(), None, None, callbacks, 0, ctypes.byref(conn)
    )
    if code != SASL_OK:
        say(f"FAIL {code} sasl_client_new")
        return
    prompts, out, out_len = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_uint()
    chosen = ctypes.c_char_p()

    def output() -> str:
        if not out.value:
            return "-"
        return base64.b64encode(ctypes.string_at(out.value, out_len.value)).decode() or "-"

    code = lib.sasl_client_start(
        conn,
        args.mechanism.encode(),
        ctypes.byref(prompts),
        ctypes.byref(out),
        ctypes.byref(out_len),
        ctypes.byref(chosen),
    )
    if code not in (SASL_OK, SASL_CONTINUE):
        say(f"FAIL {code} {lib.sasl_errdetail(conn).decode(errors='replace')}")
        return
    say(f"START {output()}")
    for line in sys.stdin:
        challenge = base64.b64decode(line.strip())
        out, out_len = ctypes.c_void_p(), ctypes.c_uint()
        code = lib.sasl_client_step(
            conn,
            challenge,
            len(challenge),
            ctypes.byref(prompts),
            ctypes.byref(out),
            ctypes.byref(out_len),
        )
        if code == SASL_CONTINUE:
            say(f"STEP {output()}")
        elif code == SASL_OK:
            say(f"DONE {output()}")
            return
        else:
            say(f"FAIL {code} {lib.sasl_errdetail(conn).decode(errors='replace')}")
            return


if __name__ == "__main__":
    main()
