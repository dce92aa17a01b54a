"""Writes cram_md5.json and digest_md5.json beside this file.

Every client message is computed here from the RFC formulas with hashlib alone (nothing
from pop3d is imported, so a mistake in the server cannot leak into its own vectors), and
the published values are asserted before anything is written: RFC 2195's CRAM-MD5 example
and RFC 2831 §4's IMAP and ACAP responses and rspauth values.

The DIGEST-MD5 exchanges reuse RFC 2831 §4's inputs (chris, secret, realm and nonce
elwood.innosoft.com / OA6MG9tEQGm2hh, cnonce OA6MHXh6VqTrRk) with our service "pop" and our
challenge, which is why they are not the RFC's bytes. Invalid cases change one thing each.

Run from the repository root: ``python vectors/sasl/generate_md5_vectors.py``. The output
is committed; tests read the JSON, never this script.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent

# --- CRAM-MD5 (RFC 2195) ------------------------------------------------------------------

CRAM_NONCE = "1896.697170952"
CRAM_HOST = "postoffice.reston.mci.net"
CRAM_CHALLENGE = f"<{CRAM_NONCE}@{CRAM_HOST}>"
CRAM_RFC_RESPONSE = "tim b913a602c7eda7a495b4e6e7334d3890"


def cram(user: str, password: str) -> str:
    key = password.encode()
    return f"{user} {hmac.new(key, CRAM_CHALLENGE.encode(), hashlib.md5).hexdigest()}"


def cram_cases() -> list[dict[str, Any]]:
    assert cram("tim", "tanstaaftanstaaf") == CRAM_RFC_RESPONSE
    server = {"nonce": CRAM_NONCE, "servername": CRAM_HOST}

    def case(
        name: str,
        source: str,
        response: str,
        ok: bool,
        *,
        key: str = "tanstaaftanstaaf",
        initial: bool = False,
        valid: bool | None = None,
    ) -> dict[str, Any]:
        steps = [["C", response]] if initial else [["S", CRAM_CHALLENGE], ["C", response]]
        return {
            "name": name,
            "source": source,
            "valid": ok if valid is None else valid,
            "mechanism": "CRAM-MD5",
            "user": "tim",
            "password": key,
            "server": server,
            "steps": steps,
            "outcome": "success" if ok else "failure",
        }

    rfc = CRAM_RFC_RESPONSE
    return [
        case("rfc2195-example", "RFC 2195 §2", rfc, True),
        case(
            "rfc2195-upper-case-hex",
            "RFC 2195 §2, digest in upper case (accepted)",
            "tim " + rfc[4:].upper(),
            True,
        ),
        case(
            "rfc2195-digest-changed",
            "RFC 2195 §2, last digit of the digest changed",
            rfc[:-1] + "1",
            False,
        ),
        case(
            "rfc2195-wrong-password",
            "RFC 2195 §2 response, the server stores another secret",
            rfc,
            False,
            key="tanstaaf",
        ),
        case(
            "rfc2195-unknown-user",
            "RFC 2195 §2, user name changed (tim -> tom)",
            "tom" + rfc[3:],
            False,
        ),
        case(
            "rfc2195-missing-space", "RFC 2195 §2, the space removed", rfc.replace(" ", ""), False
        ),
        case("rfc2195-non-hex", "RFC 2195 §2, one digit replaced by g", rfc[:-1] + "g", False),
        case("rfc2195-truncated", "RFC 2195 §2, last digit removed", rfc[:-1], False),
        case("rfc2195-empty-user", "RFC 2195 §2, user name removed", rfc[3:], False),
        case(
            "rfc2195-nul-in-user",
            "RFC 2195 §2, NUL appended to the user name",
            "tim\0" + rfc[3:],
            False,
        ),
        case(
            "rfc2195-initial-response",
            "RFC 2195 §2 response sent as an initial response",
            rfc,
            False,
            initial=True,
        ),
    ]


# --- DIGEST-MD5 (RFC 2831) ----------------------------------------------------------------

REALM = "elwood.innosoft.com"
NONCE = "OA6MG9tEQGm2hh"
CNONCE = "OA6MHXh6VqTrRk"
URI = f"pop/{REALM}"
CHALLENGE = f'realm="{REALM}",nonce="{NONCE}",qop="auth",charset=utf-8,algorithm=md5-sess'


def md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def digest(
    user: bytes,
    realm: bytes,
    key: bytes,
    *,
    nonce: str,
    cnonce: str,
    nc: str,
    qop: str,
    uri: str,
    authzid: str | None,
) -> tuple[str, str]:
    """RFC 2831 §2.1.2.1 response-value and §2.1.3 rspauth."""
    a1 = md5(user + b":" + realm + b":" + key) + f":{nonce}:{cnonce}".encode()
    if authzid is not None:
        a1 += b":" + authzid.encode()
    ha1 = md5_hex(a1)
    tail = f"{nonce}:{nc}:{cnonce}:{qop}"
    response = md5_hex(f"{ha1}:{tail}:{md5_hex(f'AUTHENTICATE:{uri}'.encode())}".encode())
    rspauth = md5_hex(f"{ha1}:{tail}:{md5_hex(f':{uri}'.encode())}".encode())
    return response, rspauth


def check_rfc2831() -> None:
    for nonce, cnonce, uri, response, rspauth in (
        (
            "OA6MG9tEQGm2hh",
            "OA6MHXh6VqTrRk",
            "imap/elwood.innosoft.com",
            "d388dad90d4bbd760a152321f2143af7",
            "ea40f60335c427b5527b84dbabcdfffd",
        ),
        (
            "OA9BSXrbuRhWay",
            "OA9BSuZWMSpW8m",
            "acap/elwood.innosoft.com",
            "6084c6db3fede7352c551284490fd0fc",
            "2f0b3d7c3c2e486600ef710726aa2eae",
        ),
    ):
        got = digest(
            b"chris",
            REALM.encode(),
            b"secret",
            nonce=nonce,
            cnonce=cnonce,
            nc="00000001",
            qop="auth",
            uri=uri,
            authzid=None,
        )
        assert got == (response, rspauth), (uri, got)


def digest_case(
    name: str,
    source: str,
    *,
    ok: bool,
    user: str = "chris",
    key: str = "secret",
    stored: str | None = None,
    authzid: str | None = None,
    charset: bool = True,
    hash_8859_1: bool = True,
    realm: str | None = REALM,
    nonce: str = NONCE,
    nc: str = "00000001",
    qop: str | None = "auth",
    uri: str = URI,
    edit: Any = None,
    separator: str = ",",
    initial: bool = False,
    wire_8859_1: bool = False,
    valid: bool | None = None,
) -> dict[str, Any]:
    """One exchange: the client hashes the password ``key`` (the server stores ``stored``, by
    default the same), in ISO 8859-1 where it fits when ``hash_8859_1`` (RFC 2831
    §2.1.2.1) or as UTF-8 bytes (what GNU SASL and curl do). ``edit`` changes the finished
    message (for the one-byte-changed cases); ``wire_8859_1`` sends it in ISO 8859-1."""

    def encoded(text: str) -> bytes:
        if hash_8859_1:
            try:
                return text.encode("latin-1")
            except UnicodeEncodeError:
                pass
        return text.encode("utf-8")

    response, rspauth = digest(
        encoded(user),
        encoded(realm or ""),
        encoded(key),
        nonce=nonce,
        cnonce=CNONCE,
        nc=nc,
        qop=qop or "auth",
        uri=uri,
        authzid=authzid,
    )
    parts = [
        *(["charset=utf-8"] if charset else []),
        f'username="{user}"',
        *([f'realm="{realm}"'] if realm is not None else []),
        f'nonce="{nonce}"',
        f"nc={nc}",
        f'cnonce="{CNONCE}"',
        f'digest-uri="{uri}"',
        f"response={response}",
        *([f"qop={qop}"] if qop is not None else []),
        *([f'authzid="{authzid}"'] if authzid is not None else []),
    ]
    message = separator.join(parts)
    if edit is not None:
        message = edit(message)
    sent = (
        ["C64", base64.b64encode(message.encode("latin-1")).decode()]
        if wire_8859_1
        else ["C", message]
    )
    steps = [sent] if initial else [["S", CHALLENGE], sent]
    if ok:
        steps.append(["S", f"rspauth={rspauth}"])
    out: dict[str, Any] = {
        "name": name,
        "source": source,
        "valid": ok if valid is None else valid,
        "mechanism": "DIGEST-MD5",
        "user": user,
        "password": key if stored is None else stored,
        "server": {"nonce": NONCE, "servername": REALM},
        "steps": steps,
        "outcome": "success" if ok else "failure",
    }
    if authzid is not None:
        out["authzid"] = authzid
    return out


def digest_cases() -> list[dict[str, Any]]:
    check_rfc2831()
    inputs = "RFC 2831 §4 inputs, service pop"
    good = digest_case("pop-rfc2831-inputs", inputs, ok=True)
    rfc_imap = (
        'charset=utf-8,username="chris",realm="elwood.innosoft.com",'
        'nonce="OA6MG9tEQGm2hh",nc=00000001,cnonce="OA6MHXh6VqTrRk",'
        'digest-uri="imap/elwood.innosoft.com",response=d388dad90d4bbd760a152321f2143af7,'
        "qop=auth"
    )

    def swap(old: str, new: str) -> Any:
        def change(message: str) -> str:
            assert old in message, (old, message)
            return message.replace(old, new, 1)

        return change

    good_response = good["steps"][1][1].split("response=")[1][:32]
    return [
        good,
        digest_case("pop-authzid", f"{inputs}, authzid chris", ok=True, authzid="chris"),
        digest_case(
            "pop-no-charset", f"{inputs}, no charset directive (ISO 8859-1)", ok=True, charset=False
        ),
        digest_case(
            "pop-realm-omitted",
            f"{inputs}, no realm directive (empty realm in A1)",
            ok=True,
            realm=None,
        ),
        digest_case(
            "pop-qop-omitted", f"{inputs}, no qop directive (defaults to auth)", ok=True, qop=None
        ),
        digest_case(
            "pop-spaces-and-quoted-nc",
            f'{inputs}, ", " between directives and nc="00000001" (GNU SASL, curl)',
            ok=True,
            edit=lambda m: m.replace("nc=00000001", 'nc="00000001"'),
            separator=", ",
        ),
        digest_case(
            "pop-upper-case-host",
            f"{inputs}, digest-uri pop/ELWOOD.INNOSOFT.COM",
            ok=True,
            uri="pop/ELWOOD.INNOSOFT.COM",
        ),
        digest_case(
            "pop-upper-case-response",
            f"{inputs}, response in upper-case hex",
            ok=True,
            valid=True,
            edit=swap(good_response, good_response.upper()),
        ),
        digest_case(
            "pop-password-8859-1",
            f"{inputs}, password sécret hashed in ISO 8859-1 (RFC 2831 §2.1.2.1, Cyrus SASL)",
            ok=True,
            key="sécret",
        ),
        digest_case(
            "pop-password-utf-8",
            f"{inputs}, password sécret hashed as UTF-8 bytes (GNU SASL, curl)",
            ok=True,
            key="sécret",
            hash_8859_1=False,
        ),
        digest_case(
            "pop-user-8859-1", f"{inputs}, user jörg hashed in ISO 8859-1", ok=True, user="jörg"
        ),
        digest_case(
            "pop-user-8859-1-no-charset",
            f"{inputs}, user jörg sent and hashed in ISO 8859-1, no charset directive",
            ok=True,
            user="jörg",
            charset=False,
            wire_8859_1=True,
        ),
        digest_case(
            "pop-password-beyond-8859-1",
            f"{inputs}, password пароль (not in ISO 8859-1: hashed as UTF-8)",
            ok=True,
            key="пароль",
        ),
        digest_case(
            "pop-response-changed",
            f"{inputs}, last digit of response changed",
            ok=False,
            edit=swap(good_response, good_response[:-1] + "0"),
        ),
        digest_case(
            "pop-wrong-password",
            f"{inputs}, the server stores another password",
            ok=False,
            stored="secret2",
        ),
        digest_case("pop-unknown-user", f"{inputs}, user chris2 (unknown)", ok=False, user="chris2")
        | {"user": "chris"},
        digest_case(
            "pop-nonce-mismatch",
            f"{inputs}, the ACAP example's nonce",
            ok=False,
            nonce="OA9BSXrbuRhWay",
        ),
        digest_case("pop-nc-2", f"{inputs}, nc=00000002", ok=False, nc="00000002"),
        digest_case(
            "pop-digest-uri-other-host",
            f"{inputs}, digest-uri pop/other.example",
            ok=False,
            uri="pop/other.example",
        ),
        digest_case(
            "pop-digest-uri-serv-name",
            f"{inputs}, digest-uri with a serv-name part",
            ok=False,
            uri=f"{URI}/mail.example",
        ),
        {
            **good,
            "name": "rfc2831-imap-replayed",
            "valid": False,
            "outcome": "failure",
            "source": "RFC 2831 §4 IMAP response, unchanged, replayed to the pop service",
            "steps": [["S", CHALLENGE], ["C", rfc_imap]],
        },
        digest_case(
            "pop-duplicated-nonce",
            f"{inputs}, nonce directive twice",
            ok=False,
            edit=lambda m: m + f',nonce="{NONCE}"',
        ),
        digest_case(
            "pop-duplicated-username-case",
            f"{inputs}, USERNAME after username",
            ok=False,
            edit=lambda m: m + ',USERNAME="chris"',
        ),
        digest_case(
            "pop-qop-auth-int", f"{inputs}, qop=auth-int (not offered)", ok=False, qop="auth-int"
        ),
        digest_case(
            "pop-realm-mismatch",
            f"{inputs}, realm elwood.innosoft.org",
            ok=False,
            realm="elwood.innosoft.org",
        ),
        digest_case(
            "pop-charset-latin1",
            f"{inputs}, charset=iso-8859-1",
            ok=False,
            edit=swap("charset=utf-8", "charset=iso-8859-1"),
        ),
        digest_case(
            "pop-missing-cnonce",
            f"{inputs}, cnonce removed",
            ok=False,
            edit=swap(f',cnonce="{CNONCE}"', ""),
        ),
        digest_case(
            "pop-unterminated-quote",
            f"{inputs}, closing quote of digest-uri removed",
            ok=False,
            edit=swap(f'"{URI}"', f'"{URI}'),
        ),
        digest_case(
            "pop-initial-response", f"{inputs}, sent as an initial response", ok=False, initial=True
        ),
    ]


def write(name: str, cases: list[dict[str, Any]]) -> None:
    names = [case["name"] for case in cases]
    assert len(set(names)) == len(names), "case names must be unique"
    text = json.dumps(cases, indent=1, ensure_ascii=False) + "\n"
    (HERE / name).write_text(text, encoding="utf-8")
    print(f"{name}: {len(cases)} cases")


if __name__ == "__main__":
    write("cram_md5.json", cram_cases())
    write("digest_md5.json", digest_cases())
