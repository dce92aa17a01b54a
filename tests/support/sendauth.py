"""A KPOP client exactly as fetchmail's: MIT ``krb5_sendauth`` through ctypes, on a socket.

fetchmail (driver.c ``kerberos5_auth``) calls::

    krb5_sname_to_principal(ctx, host, "pop", KRB5_NT_UNKNOWN, &server);
    krb5_sendauth(ctx, &auth_context, &fd, "KPOPV1.0", client, server,
                  AP_OPTS_MUTUAL_REQUIRED, NULL /* no checksum */, 0, ccache, &err_ret, 0, NULL);

:func:`sendauth` does the same (``service``, ``version`` and ``checksum_data`` can be
changed to make bad clients). It blocks on the socket, so tests run it in a thread against
the handshake on the other end of a socket pair. It runs in-process: KRB5_CONFIG must be in
``os.environ``.
"""

from __future__ import annotations

import ctypes
import socket
import threading
import time
from ctypes import POINTER, byref, c_char_p, c_int, c_int32, c_void_p
from dataclasses import dataclass

from pop3d.kerberos.mit import SONAME, _Data

KRB5_NT_UNKNOWN = 0
AP_OPTS_MUTUAL_REQUIRED = 0x20000000


class _Error(ctypes.Structure):
    _fields_ = (
        ("magic", c_int32),
        ("ctime", c_int32),
        ("cusec", c_int32),
        ("susec", c_int32),
        ("stime", c_int32),
        ("error", ctypes.c_uint32),
        ("client", c_void_p),
        ("server", c_void_p),
        ("text", _Data),
        ("e_data", _Data),
    )


def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(SONAME)  # our own handle: argtypes here do not touch pop3d's
    lib.krb5_init_context.argtypes = [POINTER(c_void_p)]
    lib.krb5_free_context.argtypes = [c_void_p]
    lib.krb5_free_context.restype = None
    lib.krb5_set_real_time.argtypes = [c_void_p, c_int32, c_int32]
    lib.krb5_cc_resolve.argtypes = [c_void_p, c_char_p, POINTER(c_void_p)]
    lib.krb5_cc_close.argtypes = [c_void_p, c_void_p]
    lib.krb5_sname_to_principal.argtypes = [c_void_p, c_char_p, c_char_p, c_int32]
    lib.krb5_sname_to_principal.argtypes += [POINTER(c_void_p)]
    lib.krb5_free_principal.argtypes = [c_void_p, c_void_p]
    lib.krb5_free_principal.restype = None
    lib.krb5_auth_con_free.argtypes = [c_void_p, c_void_p]
    lib.krb5_free_error.argtypes = [c_void_p, POINTER(_Error)]
    lib.krb5_free_error.restype = None
    lib.krb5_free_ap_rep_enc_part.argtypes = [c_void_p, c_void_p]
    lib.krb5_free_ap_rep_enc_part.restype = None
    lib.krb5_get_error_message.argtypes = [c_void_p, c_int32]
    lib.krb5_get_error_message.restype = c_void_p
    lib.krb5_free_error_message.argtypes = [c_void_p, c_void_p]
    lib.krb5_free_error_message.restype = None
    lib.krb5_sendauth.argtypes = [
        c_void_p, POINTER(c_void_p), POINTER(c_int), c_char_p, c_void_p, c_void_p, c_int32,
        c_void_p, c_void_p, c_void_p, POINTER(POINTER(_Error)), POINTER(c_void_p), c_void_p,
    ]  # fmt: skip
    return lib


@dataclass
class SendauthResult:
    code: int  # 0: the server accepted (and, with mutual auth, its AP-REP checked out)
    message: str  # MIT's text for code
    server_error: int | None = None  # the KRB-ERROR's error-code, when the server sent one
    server_text: bytes | None = None  # and its e-text


def sendauth(
    sock: socket.socket,
    ccache: str,
    *,
    host: str = "localhost",
    service: str = "pop",
    version: str = "KPOPV1.0",
    options: int = AP_OPTS_MUTUAL_REQUIRED,
    clock_offset: int = 0,
    checksum_data: bytes | None = None,
) -> SendauthResult:
    """``clock_offset``: seconds added to the client's clock (its authenticator's time and
    which cached tickets it still takes for valid). ``checksum_data``: sendauth's
    ``in_data``, which puts a checksum over it in the authenticator (fetchmail passes
    NULL)."""
    lib = _lib()
    ctx = c_void_p()
    assert lib.krb5_init_context(byref(ctx)) == 0
    if clock_offset:
        assert lib.krb5_set_real_time(ctx, int(time.time()) + clock_offset, 0) == 0
    cc, server, auth_context = c_void_p(), c_void_p(), c_void_p()
    error = POINTER(_Error)()
    rep = c_void_p()
    fd = c_int(sock.fileno())
    in_data = None
    if checksum_data is not None:
        storage = ctypes.create_string_buffer(checksum_data, len(checksum_data))
        in_data = byref(_Data(0, len(checksum_data), ctypes.cast(storage, c_void_p)))
    try:
        assert lib.krb5_cc_resolve(ctx, ccache.encode(), byref(cc)) == 0
        code = lib.krb5_sname_to_principal(
            ctx, host.encode(), service.encode(), KRB5_NT_UNKNOWN, byref(server)
        )
        assert code == 0, code
        code = lib.krb5_sendauth(
            ctx, byref(auth_context), byref(fd), version.encode(), None, server, options,
            in_data, None, cc, byref(error), byref(rep), None,
        )  # fmt: skip
        pointer = lib.krb5_get_error_message(ctx, code)
        message = ctypes.string_at(pointer).decode()
        lib.krb5_free_error_message(ctx, pointer)
        result = SendauthResult(code, message)
        if error:
            result.server_error = error.contents.error
            text = error.contents.text
            result.server_text = ctypes.string_at(text.data, text.length) if text.length else b""
        return result
    finally:
        if error:
            lib.krb5_free_error(ctx, error)
        if rep:
            lib.krb5_free_ap_rep_enc_part(ctx, rep)
        if auth_context:
            lib.krb5_auth_con_free(ctx, auth_context)
        if server:
            lib.krb5_free_principal(ctx, server)
        if cc:
            lib.krb5_cc_close(ctx, cc)
        lib.krb5_free_context(ctx)


class SendauthThread(threading.Thread):
    """:func:`sendauth` on ``sock`` in a thread; ``result`` once joined."""

    def __init__(self, sock: socket.socket, ccache: str, **options: object) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.ccache = ccache
        self.options = options
        self.result: SendauthResult | None = None
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = sendauth(self.sock, self.ccache, **self.options)  # type: ignore[arg-type]
        except BaseException as exc:
            self.failure = exc
