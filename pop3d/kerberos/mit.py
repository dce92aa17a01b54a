"""The Kerberos half of KPOP: check an AP-REQ against the keytab with MIT krb5 itself.

A fenced ctypes binding to ``libkrb5.so.3`` (MIT; Heimdal's is ``libkrb5.so.26`` and lays its
structs out differently). It does what ``recvauth_common()`` in MIT's
src/lib/krb5/krb/recvauth.c does after the version strings, and nothing else:

* ``krb5_rd_req`` with our keytab and an explicit server principal ``pop/<host>`` (type
  NT-SRV-HST, empty realm: any realm the keytab holds a key for, and any host when none is
  configured). MIT therefore checks the ticket's times against the clock skew of krb5.conf,
  the enctype policy, the kvno, the authenticator, and the replay cache. We then check the
  ticket's server components again ourselves (fetchmail sends its sname as NT-UNKNOWN, so
  compare components, never the name type).
* the authenticator must carry no checksum. KPOP clients call ``krb5_sendauth`` with no
  application data, and MIT's mk_req_ext.c makes a checksum only over such data, so
  theirs never has one (kpop.md §1.2). A GSSAPI initial token always has one, of type
  0x8003 (RFC 4121 §4.1.1), over the channel bindings and the flags the client asked
  for: without this rule the AP-REQ cut out of a client's ``AUTH GSSAPI`` token logs in
  here, and whoever cut it gets a session without the confidentiality layer the client
  asked for. Any other type would be over data KPOP does not have (``krb5_rd_req``
  never checks an authenticator's checksum; recvauth leaves that to the application), so
  it too means an AP-REQ made for another protocol.
* ``krb5_mk_rep`` only when the client asked for mutual authentication (fetchmail always
  does: ``AP_OPTS_MUTUAL_REQUIRED``).
* ``krb5_mk_error`` on failure, with MIT's error code but a generic e-text (MIT sends
  ``error_message()``, which can name the keytab path).

Why ctypes over MIT, and not the alternatives (draft for SECURITY.md):
python-gssapi accepts the raw AP-REQ once wrapped in a GSS header, but gives no AP-REP for an
authenticator without a checksum, and fetchmail requires one, so it would hang; building the
AP-REP ourselves would mean decrypting the authenticator in Python. pykrb5 has no ``rd_req``,
``mk_rep`` or auth context. A pure-Python AP-REQ verifier (RFC 3961/3962/8009 crypto, our own
DER, replay cache and ticket-time rules) would re-implement exactly the security-critical
code MIT has hardened for decades. ``krb5_recvauth`` on the socket would do blocking I/O
inside C with no size cap. With ctypes the network framing, size caps and timeouts stay in
Python and every cryptographic and policy decision is MIT's own code. cffi in ABI mode
would be the same binding with an extra dependency; API mode needs a compiler at install.

The fence:

* six MIT structs are mirrored (``krb5_data``, ``krb5_principal_data``, the head of
  ``krb5_ticket``, ``krb5_authenticator``'s head, ``krb5_checksum``, ``krb5_error``);
  :func:`library` probes the layout once at load (a parsed principal must read back with
  MIT's magic numbers), so a Heimdal or otherwise foreign library is refused before any
  ticket is touched;
* a fresh ``krb5_context`` per call: no state is shared between threads, so the driver may
  run any number of checks at once;
* every pointer read is bounds-checked against the struct's own length field, and every
  object is freed in ``finally`` blocks, failure paths included;
* the binding never raises on a bad ticket: any AP-REQ, however malformed, becomes a
  :class:`~pop3d.kpop.handshake.Rejected`; only a broken installation (no library, no
  keytab context) raises :class:`KerberosUnavailable`.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from ctypes import POINTER, Structure, byref, c_char_p, c_int32, c_uint, c_uint32, c_void_p
from dataclasses import dataclass, replace

SONAME = "libkrb5.so.3"

ERROR_TABLE_BASE_KRB5 = -1765328384
KRB5KRB_AP_ERR_NOT_US = ERROR_TABLE_BASE_KRB5 + 35
# The keytab holds the ticket's server principal, but not under the ticket's kvno or
# enctype: MIT's "kvno N not found in keytab; keytab (or ticket) is likely out of date".
KRB5KRB_AP_ERR_BADKEYVER = ERROR_TABLE_BASE_KRB5 + 44
KRB5KRB_AP_ERR_INAPP_CKSUM = ERROR_TABLE_BASE_KRB5 + 50
KRB_ERR_GENERIC = 60
KV5M_PRINCIPAL = -1760647423
KV5M_DATA = -1760647422
KV5M_KEYTAB_ENTRY = -1760647389
KRB5_KT_END = -1765328202
KRB5_NT_SRV_HST = 3
KRB5_PRINCIPAL_PARSE_NO_REALM = 0x1
AP_OPTS_MUTUAL_REQUIRED = 0x20000000

MAX_COMPONENTS = 16  # a principal with more is not one we could ever accept
MAX_FIELD = 4096  # longest realm or component we read back
GENERIC_TEXT = b"KPOP authentication failed"

# Why an authenticator with a checksum is refused, by checksum type (the log's words; the
# client gets the generic KRB-ERROR like every refusal). See the module docstring.
GSS_CHECKSUM = 0x8003
CHECKSUM_REFUSALS = {
    GSS_CHECKSUM: "the AP-REQ of a GSSAPI token (GSS checksum 0x8003), not of a KPOP client",
}
OTHER_CHECKSUM = "a checksum of type {type}: KPOP clients send none, so made for another protocol"


@dataclass(frozen=True, slots=True)
class Accepted:
    client: str  # the client principal, MIT's unparsed form ("alice@EXAMPLE.COM")
    ap_rep: bytes | None  # for mutual authentication; None when the client did not ask
    default_realm: str | None  # the acceptor's default realm (for principal -> user)


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str  # for the log: MIT's error text
    krb_error: bytes  # a KRB-ERROR for the client (generic e-text); b"" if none could be made
    # Our keytab could not be read (gone, unreadable, corrupt, empty since the start-up
    # check): the server's fault, whatever the client sent; the log must not blame it.
    unavailable: bool = False


class KerberosUnavailable(Exception):
    """libkrb5 is missing, not MIT, or cannot give us a context: a configuration fault."""


# --- mirrored MIT structs (krb5.h, stable since 1.0) -----------------------------------


class _Data(Structure):
    _fields_ = (("magic", c_int32), ("length", c_uint), ("data", c_void_p))


class _Principal(Structure):
    _fields_ = (
        ("magic", c_int32),
        ("realm", _Data),
        ("data", POINTER(_Data)),
        ("length", c_int32),
        ("type", c_int32),
    )


class _Ticket(Structure):
    """Only the head: we read ``server`` and never the encrypted parts."""

    _fields_ = (("magic", c_int32), ("server", POINTER(_Principal)))


class _Checksum(Structure):
    _fields_ = (
        ("magic", c_int32),
        ("checksum_type", c_int32),
        ("length", c_uint),
        ("contents", c_void_p),
    )


class _Authenticator(Structure):
    """Only the head: the client principal and the checksum (NULL when there is none)."""

    _fields_ = (
        ("magic", c_int32),
        ("client", POINTER(_Principal)),
        ("checksum", POINTER(_Checksum)),
    )


class _Error(Structure):
    _fields_ = (
        ("magic", c_int32),
        ("ctime", c_int32),
        ("cusec", c_int32),
        ("susec", c_int32),
        ("stime", c_int32),
        ("error", c_uint32),
        ("client", POINTER(_Principal)),
        ("server", POINTER(_Principal)),
        ("text", _Data),
        ("e_data", _Data),
    )


class _Keyblock(Structure):
    _fields_ = (
        ("magic", c_int32),
        ("enctype", c_int32),
        ("length", c_uint),
        ("contents", c_void_p),
    )


class _KeytabEntry(Structure):
    """Mirrored whole (``krb5_kt_next_entry`` writes into it); we read the principal only,
    never the key."""

    _fields_ = (
        ("magic", c_int32),
        ("principal", POINTER(_Principal)),
        ("timestamp", c_int32),
        ("vno", c_uint),
        ("key", _Keyblock),
    )


_P = POINTER
_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "krb5_init_context": (c_int32, [_P(c_void_p)]),
    "krb5_free_context": (None, [c_void_p]),
    "krb5_set_real_time": (c_int32, [c_void_p, c_int32, c_int32]),
    "krb5_us_timeofday": (c_int32, [c_void_p, _P(c_int32), _P(c_int32)]),
    "krb5_get_error_message": (c_void_p, [c_void_p, c_int32]),
    "krb5_free_error_message": (None, [c_void_p, c_void_p]),
    "krb5_get_default_realm": (c_int32, [c_void_p, _P(c_void_p)]),
    "krb5_free_default_realm": (None, [c_void_p, c_void_p]),
    "krb5_kt_resolve": (c_int32, [c_void_p, c_char_p, _P(c_void_p)]),
    "krb5_kt_default": (c_int32, [c_void_p, _P(c_void_p)]),
    "krb5_kt_close": (c_int32, [c_void_p, c_void_p]),
    "krb5_kt_default_name": (c_int32, [c_void_p, c_char_p, c_int32]),
    "krb5_kt_start_seq_get": (c_int32, [c_void_p, c_void_p, _P(c_void_p)]),
    "krb5_kt_next_entry": (c_int32, [c_void_p, c_void_p, _P(_KeytabEntry), _P(c_void_p)]),
    "krb5_kt_end_seq_get": (c_int32, [c_void_p, c_void_p, _P(c_void_p)]),
    "krb5_free_keytab_entry_contents": (c_int32, [c_void_p, _P(_KeytabEntry)]),
    "krb5_parse_name_flags": (c_int32, [c_void_p, c_char_p, c_int32, _P(_P(_Principal))]),
    "krb5_unparse_name": (c_int32, [c_void_p, _P(_Principal), _P(c_void_p)]),
    "krb5_free_unparsed_name": (None, [c_void_p, c_void_p]),
    "krb5_free_principal": (None, [c_void_p, _P(_Principal)]),
    "krb5_auth_con_free": (c_int32, [c_void_p, c_void_p]),
    "krb5_rd_req": (
        c_int32,
        [
            c_void_p,
            _P(c_void_p),
            _P(_Data),
            _P(_Principal),
            c_void_p,
            _P(c_int32),
            _P(_P(_Ticket)),
        ],
    ),
    "krb5_free_ticket": (None, [c_void_p, _P(_Ticket)]),
    "krb5_auth_con_getauthenticator": (c_int32, [c_void_p, c_void_p, _P(_P(_Authenticator))]),
    "krb5_free_authenticator": (None, [c_void_p, _P(_Authenticator)]),
    "krb5_mk_rep": (c_int32, [c_void_p, c_void_p, _P(_Data)]),
    "krb5_mk_error": (c_int32, [c_void_p, _P(_Error), _P(_Data)]),
    "krb5_free_data_contents": (None, [c_void_p, _P(_Data)]),
    "krb5_aname_to_localname": (c_int32, [c_void_p, _P(_Principal), c_int32, c_char_p]),
}


@functools.cache
def library() -> ctypes.CDLL:
    """libkrb5, typed and checked to be MIT's (once per process). -> KerberosUnavailable"""
    try:
        lib = ctypes.CDLL(SONAME)
        for name, (restype, argtypes) in _SIGNATURES.items():
            function = getattr(lib, name)
            function.restype = restype
            function.argtypes = argtypes
    except (OSError, AttributeError) as exc:
        raise KerberosUnavailable(f"{SONAME}: {exc}") from None
    _self_check(lib)
    return lib


def _self_check(lib: ctypes.CDLL) -> None:
    """Parse a known principal and read it back through our struct mirror: MIT's magic
    numbers at the offsets we expect, or we refuse to go near a ticket."""
    with _context(lib) as ctx:
        principal = POINTER(_Principal)()
        code = lib.krb5_parse_name_flags(ctx, b"svc/host.example@EXAMPLE.TEST", 0, byref(principal))
        if code:
            raise KerberosUnavailable(f"{SONAME}: self-check parse failed ({code})")
        try:
            p = principal.contents
            seen = (p.magic, p.realm.magic, p.length, _components(principal))
        finally:
            lib.krb5_free_principal(ctx, principal)
    expected = (KV5M_PRINCIPAL, KV5M_DATA, 2, ("EXAMPLE.TEST", ("svc", "host.example")))
    if seen != expected:
        raise KerberosUnavailable(f"{SONAME} is not MIT krb5 as built against ({seen!r})")


def cannot_start(reason: str) -> str:
    """What to say when the Kerberos library will not start: the configuration it read
    (``KRB5_CONFIG``, else the system's) and its reason, in the SASL keytab check and KPOP's
    alike."""
    where = os.environ.get("KRB5_CONFIG") or "/etc/krb5.conf"
    return f"the Kerberos library cannot start ({where}): {reason}"


@contextmanager
def _context(lib: ctypes.CDLL) -> Iterator[c_void_p]:
    ctx = c_void_p()
    code = lib.krb5_init_context(byref(ctx))
    if code or not ctx:
        # Without a context MIT still has the text (com_err's): say why, not just a number;
        # a krb5.conf that does not parse is the usual cause.
        reason = _message(lib, c_void_p(), code) if code else "no context"
        raise KerberosUnavailable(cannot_start(reason))
    try:
        yield ctx
    finally:
        lib.krb5_free_context(ctx)


def _bytes(data: _Data, limit: int = MAX_FIELD) -> bytes:
    if data.length > limit:
        raise ValueError(f"krb5_data of {data.length} bytes")
    if data.length == 0:
        return b""
    if not data.data:
        raise ValueError("krb5_data without storage")
    return ctypes.string_at(data.data, data.length)


def _text(data: _Data) -> str:
    return _bytes(data).decode("utf-8", "surrogateescape")


def _components(principal: ctypes._Pointer[_Principal]) -> tuple[str, tuple[str, ...]]:
    """(realm, components) of a principal, every length checked."""
    if not principal:
        raise ValueError("no principal")
    p = principal.contents
    if not 0 <= p.length <= MAX_COMPONENTS or (p.length and not p.data):
        raise ValueError(f"principal with {p.length} components")
    return _text(p.realm), tuple(_text(p.data[i]) for i in range(p.length))


@dataclass(frozen=True, slots=True)
class Acceptor:
    """What ``pop3d -k`` accepts: tickets for ``service/host`` whose key is in ``keytab``.

    ``keytab``: a keytab name (``FILE:/path`` or a path); None means KRB5_KTNAME or the
    default keytab. ``host``: the host part of the service principal; None accepts any host
    (the keytab still limits which keys exist), like Heimdal's popper. ``pinned_time``: for
    replaying recorded vectors only, the acceptor's clock is set to this Unix time.

    :meth:`verify` is the blocking call the handshake hands to the driver as an Offload."""

    keytab: str | None = None
    service: str = "pop"
    host: str | None = None
    pinned_time: int | None = None

    def verify(self, ap_req: bytes) -> Accepted | Rejected:
        lib = library()
        with _context(lib) as ctx:
            if self.pinned_time is not None:
                lib.krb5_set_real_time(ctx, self.pinned_time, 0)
            keytab = c_void_p()
            if self.keytab is None:
                code = lib.krb5_kt_default(ctx, byref(keytab))
            else:
                code = lib.krb5_kt_resolve(ctx, self.keytab.encode(), byref(keytab))
            if code:
                return replace(self._reject(lib, ctx, code, "keytab"), unavailable=True)
            try:
                result = self._verify(lib, ctx, keytab, ap_req)
                if isinstance(result, Rejected):
                    # Only now, off the good path: is it our keytab rather than the ticket?
                    fault = _keytab_fault(lib, ctx, keytab)
                    if fault is not None:
                        return replace(result, reason=f"keytab: {fault}", unavailable=True)
                return result
            finally:
                lib.krb5_kt_close(ctx, keytab)

    def _server(self, lib: ctypes.CDLL, ctx: c_void_p) -> ctypes._Pointer[_Principal]:
        """``service/host`` with an empty realm and type NT-SRV-HST: the form MIT's
        krb5_sname_match treats as "this service, this host (or any), any realm"."""
        principal = POINTER(_Principal)()
        name = f"{self.service}/{self.host or ''}".encode()
        code = lib.krb5_parse_name_flags(ctx, name, KRB5_PRINCIPAL_PARSE_NO_REALM, byref(principal))
        if code:
            raise KerberosUnavailable(f"cannot make the server principal {name!r} ({code})")
        if not self.host:
            # "pop/" parses as two components, the second empty: the wildcard host
            _components(principal)
        principal.contents.type = KRB5_NT_SRV_HST
        return principal

    def _verify(
        self, lib: ctypes.CDLL, ctx: c_void_p, keytab: c_void_p, ap_req: bytes
    ) -> Accepted | Rejected:
        server = self._server(lib, ctx)
        auth_context = c_void_p()
        ticket = POINTER(_Ticket)()
        authenticator = POINTER(_Authenticator)()
        buffer = ctypes.create_string_buffer(ap_req, len(ap_req))
        data = _Data(0, len(ap_req), ctypes.cast(buffer, c_void_p))
        options = c_int32(0)
        try:
            code = lib.krb5_rd_req(
                ctx, byref(auth_context), byref(data), server, keytab, byref(options),
                byref(ticket),
            )  # fmt: skip
            if code == KRB5KRB_AP_ERR_BADKEYVER:
                # Our principal, sealed under a key the keytab lacks: a key changed at the
                # KDC and not here (or dropped here while tickets for it live). No verdict
                # on the client, whose ticket the KDC issued (found probing: every login
                # during a key rotation was a failure fail2ban counted). The kvno is in
                # clear, so anyone can have this answer: it gives nothing (SECURITY.md).
                rejected = self._reject(lib, ctx, code, "rd_req")
                reason = f"keytab lacks the ticket's key: {rejected.reason}"
                return replace(rejected, reason=reason, unavailable=True)
            if code:
                return self._reject(lib, ctx, code, "rd_req")
            _realm, components = _components(ticket.contents.server)
            if (
                components[:1] != (self.service,)
                or len(components) != 2
                or (self.host and components[1] != self.host)
            ):
                return self._reject(lib, ctx, KRB5KRB_AP_ERR_NOT_US, f"ticket for {components}")
            code = lib.krb5_auth_con_getauthenticator(ctx, auth_context, byref(authenticator))
            if code:
                return self._reject(lib, ctx, code, "getauthenticator")
            refusal = _checksum_refusal(authenticator)
            if refusal is not None:
                return self._reject(lib, ctx, KRB5KRB_AP_ERR_INAPP_CKSUM, "checksum", refusal)
            client = _unparse(lib, ctx, authenticator.contents.client)
            ap_rep = None
            if options.value & AP_OPTS_MUTUAL_REQUIRED:
                out = _Data()
                code = lib.krb5_mk_rep(ctx, auth_context, byref(out))
                if code:
                    return self._reject(lib, ctx, code, "mk_rep")
                try:
                    ap_rep = _bytes(out, 65536)
                finally:
                    lib.krb5_free_data_contents(ctx, byref(out))
            return Accepted(client, ap_rep, _default_realm(lib, ctx))
        except ValueError as exc:  # a struct that failed our bounds checks
            return self._reject(lib, ctx, KRB_ERR_GENERIC + ERROR_TABLE_BASE_KRB5, str(exc))
        finally:
            if authenticator:
                lib.krb5_free_authenticator(ctx, authenticator)
            if ticket:
                lib.krb5_free_ticket(ctx, ticket)
            if auth_context:
                lib.krb5_auth_con_free(ctx, auth_context)
            lib.krb5_free_principal(ctx, server)

    def _reject(
        self, lib: ctypes.CDLL, ctx: c_void_p, code: int, step: str, why: str | None = None
    ) -> Rejected:
        """``why``: our reason for the log, when MIT's text for ``code`` is not the reason."""
        reason = why if why is not None else _message(lib, ctx, code)
        return Rejected(f"{step}: {reason}", self._krb_error(lib, ctx, code))

    def _krb_error(self, lib: ctypes.CDLL, ctx: c_void_p, code: int) -> bytes:
        """A KRB-ERROR as recvauth sends it (error code relative to the krb5 table, 60 when
        outside it; server principal; no client), with our generic text. b"" if even that
        cannot be made (no default realm): the driver then just closes."""
        server = POINTER(_Principal)()
        name = f"{self.service}/{self.host or '????'}".encode()
        if lib.krb5_parse_name_flags(ctx, name, 0, byref(server)):
            return b""
        text = ctypes.create_string_buffer(GENERIC_TEXT, len(GENERIC_TEXT))
        relative = code - ERROR_TABLE_BASE_KRB5
        error = _Error(
            error=relative if 0 <= relative <= 127 else KRB_ERR_GENERIC,
            server=server,
            text=_Data(KV5M_DATA, len(GENERIC_TEXT), ctypes.cast(text, c_void_p)),
        )
        stime, susec = c_int32(), c_int32()
        out = _Data()
        try:
            if lib.krb5_us_timeofday(ctx, byref(stime), byref(susec)):
                return b""
            error.stime, error.susec = stime.value, susec.value
            if lib.krb5_mk_error(ctx, byref(error), byref(out)):
                return b""
            try:
                return _bytes(out, 65536)
            finally:
                lib.krb5_free_data_contents(ctx, byref(out))
        finally:
            lib.krb5_free_principal(ctx, server)


def _keytab_fault(lib: ctypes.CDLL, ctx: c_void_p, keytab: c_void_p) -> str | None:
    """Why ``keytab`` gives no key at all (MIT's text), or None when its first entry reads.
    (``krb5_kt_have_content`` would not do: it takes a keytab it cannot open for a full one.)"""
    cursor = c_void_p()
    code = lib.krb5_kt_start_seq_get(ctx, keytab, byref(cursor))
    if code:
        return _message(lib, ctx, code)
    try:
        entry = _KeytabEntry()
        code = lib.krb5_kt_next_entry(ctx, keytab, byref(entry), byref(cursor))
        if code:
            return "no key can be read from it" if code == KRB5_KT_END else _message(lib, ctx, code)
        lib.krb5_free_keytab_entry_contents(ctx, byref(entry))
        return None
    finally:
        lib.krb5_kt_end_seq_get(ctx, keytab, byref(cursor))


def _checksum_refusal(authenticator: ctypes._Pointer[_Authenticator]) -> str | None:
    """Why this authenticator is not a KPOP client's, or None when it carries no checksum.
    (MIT's decoder leaves both structs' magic numbers 0: the load-time self-check is the
    layout's fence here, and the checksum's own length field is checked.)"""
    if not authenticator:
        raise ValueError("no authenticator")
    checksum = authenticator.contents.checksum
    if not checksum:
        return None
    if checksum.contents.length > MAX_FIELD:
        raise ValueError(f"checksum of {checksum.contents.length} bytes")
    kind = checksum.contents.checksum_type
    return CHECKSUM_REFUSALS.get(kind) or OTHER_CHECKSUM.format(type=f"{kind:#x}")


def _unparse(lib: ctypes.CDLL, ctx: c_void_p, principal: ctypes._Pointer[_Principal]) -> str:
    _components(principal)  # bounds first
    name = c_void_p()
    code = lib.krb5_unparse_name(ctx, principal, byref(name))
    if code or not name:
        raise ValueError(f"unparse_name failed ({code})")
    try:
        raw = ctypes.string_at(name)
    finally:
        lib.krb5_free_unparsed_name(ctx, name)
    if len(raw) > MAX_FIELD:
        raise ValueError("principal name too long")
    return raw.decode("utf-8", "surrogateescape")


def _default_realm(lib: ctypes.CDLL, ctx: c_void_p) -> str | None:
    realm = c_void_p()
    if lib.krb5_get_default_realm(ctx, byref(realm)) or not realm:
        return None
    try:
        return ctypes.string_at(realm).decode("utf-8", "surrogateescape")
    finally:
        lib.krb5_free_default_realm(ctx, realm)


def _message(lib: ctypes.CDLL, ctx: c_void_p, code: int) -> str:
    """MIT's text for ``code``: for our log only, never for the client."""
    pointer = lib.krb5_get_error_message(ctx, code)
    if not pointer:
        return f"krb5 error {code}"
    try:
        return ctypes.string_at(pointer).decode("utf-8", "replace")
    finally:
        lib.krb5_free_error_message(ctx, pointer)


_LOCALNAME_MAX = 256


def aname_to_localname(principal: str) -> str | None:
    """MIT's principal -> local name, under krb5.conf's ``auth_to_local`` rules for the
    principal's realm (or MIT's DEFAULT rule when the site has none: a one-component name
    in the default realm). None when no rule maps it. Blocking (reads krb5.conf)."""
    lib = library()
    with _context(lib) as ctx:
        parsed = POINTER(_Principal)()
        if lib.krb5_parse_name_flags(ctx, principal.encode("utf-8"), 0, byref(parsed)):
            return None
        try:
            buffer = ctypes.create_string_buffer(_LOCALNAME_MAX)
            if lib.krb5_aname_to_localname(ctx, parsed, _LOCALNAME_MAX, buffer):
                return None
            return buffer.value.decode("utf-8", "replace")
        finally:
            lib.krb5_free_principal(ctx, parsed)


def default_realm() -> str | None:
    """The default realm of krb5.conf (None if there is none)."""
    lib = library()
    with _context(lib) as ctx:
        return _default_realm(lib, ctx)


def default_keytab_name() -> str:
    """The keytab MIT uses when none is named: KRB5_KTNAME, else krb5.conf's
    ``default_keytab_name``, else the built-in default (``FILE:/etc/krb5.keytab``)."""
    lib = library()
    with _context(lib) as ctx:
        name = ctypes.create_string_buffer(1024)
        code = lib.krb5_kt_default_name(ctx, name, len(name))
        if code:
            raise KerberosUnavailable(f"krb5_kt_default_name: {_message(lib, ctx, code)}")
        return name.value.decode("utf-8", "surrogateescape")


def keytab_principals(keytab: str) -> list[tuple[str, tuple[str, ...]]]:
    """(realm, components) of every entry of ``keytab`` (for the start-up check; the keys
    themselves are never read). -> KerberosUnavailable when MIT cannot read it."""
    lib = library()
    out: list[tuple[str, tuple[str, ...]]] = []
    with _context(lib) as ctx:
        handle = c_void_p()
        code = lib.krb5_kt_resolve(ctx, keytab.encode(), byref(handle))
        if code:
            raise KerberosUnavailable(_message(lib, ctx, code))
        try:
            cursor = c_void_p()
            code = lib.krb5_kt_start_seq_get(ctx, handle, byref(cursor))
            if code:
                raise KerberosUnavailable(_message(lib, ctx, code))
            try:
                while len(out) < 10_000:
                    entry = _KeytabEntry()
                    code = lib.krb5_kt_next_entry(ctx, handle, byref(entry), byref(cursor))
                    if code == KRB5_KT_END:
                        break
                    if code:
                        raise KerberosUnavailable(_message(lib, ctx, code))
                    try:
                        if entry.magic != KV5M_KEYTAB_ENTRY:
                            raise KerberosUnavailable(f"keytab entry magic {entry.magic}")
                        out.append(_components(entry.principal))
                    except ValueError as exc:
                        raise KerberosUnavailable(f"keytab entry: {exc}") from None
                    finally:
                        lib.krb5_free_keytab_entry_contents(ctx, byref(entry))
            finally:
                lib.krb5_kt_end_seq_get(ctx, handle, byref(cursor))
        finally:
            lib.krb5_kt_close(ctx, handle)
    return out
