"""Builds the seed corpora, fuzz/corpus/<target>/, from vectors/: the transcripts' client
lines (session and line reader), the SASL vectors' client messages, the configurations,
the lab maildrops (message encoder), fetchmail's KPOP handshake, the GSSAPI exchange's
frames, PROXY headers and TLS ClientHellos.

Idempotent: a seed's file name is the SHA-1 of its content, so running it again adds
nothing and leaves what the fuzzer found in place.

    python fuzz/seed.py [--out DIR] [target ...]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import re
import ssl
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo root, not fuzz/

from fuzz.support import (
    CORPUS,
    SASL_SEPARATOR,
    VECTORS,
    sasl_input,
    session_input,
)

_PLACEHOLDER = re.compile(r"\{\{([a-z]+)(?::([^}]*))?\}\}")
# The session harness's connection: challenge token "1.2", servername "lab.test".
CHALLENGE = b"<1.2@lab.test>"
# Session harness modes (fuzz/session_core.py): the state its prefix leads to.
MODES = {
    "pre-auth": 0,
    "transaction": 1,
    "mid-auth-plain": 2,
    "mid-auth-scram": 3,
    "after-stls": 4,
    "after-stls-transaction": 5,
    "pop3s-mid-auth-digest": 6,
    "pop3s-transaction": 7,
}


def _expand(text: str) -> bytes:
    def substitute(match: re.Match[str]) -> str:
        name, argument = match.group(1), match.group(2) or ""
        if name == "apop":
            digest = hashlib.md5(CHALLENGE + argument.encode(), usedforsecurity=False)
            return digest.hexdigest()
        if name == "cr":
            return "\r"
        if name == "repeat":
            char, _, count = argument.partition(":")
            return char * min(int(count), 9000)
        raise ValueError(f"unknown placeholder {match.group(0)}")

    return _PLACEHOLDER.sub(substitute, text).encode("utf-8")


def transcript_streams() -> Iterator[tuple[str, bytes]]:
    """(name, what the client of session 1 sends) for every transcript."""
    for path in sorted((VECTORS / "transcripts").glob("*.txt")):
        ending = b"\r\n"
        out = bytearray()
        for raw in path.read_text(encoding="utf-8").splitlines():
            if raw == "!endings lf":
                ending = b"\n"
            elif raw == "!endings crlf":
                ending = b"\r\n"
            elif raw.startswith("C: ") or raw == "C:":
                out += _expand(raw[3:]) + ending
        yield path.stem, bytes(out)


def session_core() -> Iterator[bytes]:
    for _name, stream in transcript_streams():
        yield session_input(MODES["pre-auth"], 0, 0, stream)
        yield session_input(MODES["pre-auth"], 0, 1, stream[:2000])
        yield session_input(MODES["transaction"], 0, 7, stream)
    commands = b"STAT\r\nLIST\r\nUIDL\r\nRETR 1\r\nTOP 2 3\r\nDELE 1\r\nRSET\r\nNOOP\r\nQUIT\r\n"
    for mode in (1, 5, 7):
        yield session_input(mode, 0, 0, commands)
        yield session_input(mode, 0x0008, 0, commands)  # read-only
    yield session_input(MODES["mid-auth-plain"], 0, 0, b"AGFsaWNlAHdvbmRlcmxhbmQ=\r\nSTAT\r\n")
    yield session_input(MODES["mid-auth-plain"], 0, 0, b"*\r\nCAPA\r\n")
    yield session_input(MODES["mid-auth-scram"], 0, 0, b"Yz1iaXdzLHI9eCxwPXk=\r\n")
    yield session_input(MODES["after-stls"], 0, 0, b"CAPA\r\nAUTH\r\nAUTH EXTERNAL =\r\n")
    yield session_input(MODES["pop3s-mid-auth-digest"], 0x0010, 0, b"*\r\n")
    for flags in (0x0001, 0x0002, 0x0004, 0x0010, 0x0020, 0x0040, 0x0080, 0x0100):
        yield session_input(MODES["pre-auth"], flags, 0, b"CAPA\r\nAUTH\r\nUSER alice\r\n")


def _sasl_cases() -> list[object]:
    from tests.support import sasl_vectors

    cases: list[object] = []
    for path in sorted((VECTORS / "sasl").glob("*.json")):
        if path.name != "oauth-jwks.json":
            cases += sasl_vectors.load(path.name)
    return cases


def sasl_mechanisms() -> Iterator[bytes]:
    from pop3d.sasl import registry
    from tests.support.sasl_vectors import Case

    names = sorted(registry.names())
    for index, case in enumerate(_sasl_cases()):
        assert isinstance(case, Case)
        if case.mechanism not in names:
            continue  # APOP is not a SASL mechanism
        steps = list(case.steps)
        initial = bool(steps) and steps[0][0] == "C"
        messages = [data for kind, data in steps if kind == "C"]
        yield sasl_input(names.index(case.mechanism), index, int(initial), messages)
    for mechanism in ("PLAIN", "LOGIN", "EXTERNAL"):
        yield sasl_input(names.index(mechanism), 0, 1, [b"\0alice\0wonderland"])
        yield sasl_input(names.index(mechanism), 0, 0, [b"alice", b"wonderland"])


def _client_hello() -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="lab.test")
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the ServerHello
        client.do_handshake()
    return outgoing.read()


def tls_layer() -> Iterator[bytes]:
    hello = _client_hello()
    yield bytes([0, 0]) + hello  # raw bytes as the handshake
    yield bytes([0, 1]) + hello[:100]
    # a genuine client (bit 2: with a certificate, bit 3: TLS 1.2): a flight mutated (1,
    # 2), records after the handshake (3), a genuine record mutated (0x13)
    for mode in (1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 0x13):
        yield bytes([mode, 0]) + b"\x00\x05\x01"
        yield bytes([mode, 3, 0x10, 0x20, 0x30]) + b"\x17\x03\x03\x00\x05hello"


def imapd_conf() -> Iterator[bytes]:
    for path in sorted((VECTORS / "configs").glob("*imapd.conf")):
        yield path.read_bytes()
    yield b"@include: inc.conf\nallowplaintext: no\npop3s_allowplaintext: yes\n"
    yield b"@include: loop.conf\n"
    yield b"popexpiretime: 1d2h\npoptimeout: 10m\nsasl_mech_list: PLAIN SCRAM-SHA-256\n"


def cyrus_conf() -> Iterator[bytes]:
    for path in sorted((VECTORS / "configs").glob("*cyrus.conf")):
        yield path.read_bytes()
    yield b'SERVICES {\n  pop3 cmd="pop3d -s" listen="[::1]:995" prefork=2 maxchild=10\n}\n'


def proxy_header() -> Iterator[bytes]:
    yield b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 110\r\nCAPA\r\n"
    yield b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 995\r\n"
    yield b"PROXY UNKNOWN\r\n"
    v2 = b"\r\n\r\n\x00\r\nQUIT\n"
    yield v2 + b"\x21\x11\x00\x0c" + bytes(range(1, 9)) + b"\xdc\x04\x00\x6e"
    yield v2 + b"\x21\x21\x00\x24" + bytes(range(32)) + b"\xdc\x04\x00\x6e"
    yield v2 + b"\x20\x00\x00\x00"


def wire_commands() -> Iterator[bytes]:
    for _name, stream in transcript_streams():
        yield bytes([7, 0]) + stream
        yield bytes([2, 1]) + stream[:500]


def message_encoder() -> Iterator[bytes]:
    for path in sorted((VECTORS / "maildrops").glob("*/*")):
        if path.name.endswith(".py"):
            continue
        data = path.read_bytes()[:3000]
        yield bytes([0x80, 0]) + data
        yield bytes([2, 5]) + data
    yield bytes([0x80, 1]) + b"Subject: x\n\n.\n..\r\nlast line\r"


def kpop_handshake() -> Iterator[bytes]:
    """fetchmail's bytes (versions and AP-REQ), each verifier answer, cap and chunking."""
    client = bytes.fromhex(
        json.loads((VECTORS / "kerberos" / "kpop" / "fetchmail-sendauth.json").read_text())[
            "client"
        ]
    )
    for answer in range(5):
        yield bytes([answer | 0x20, 0]) + client
        yield bytes([answer, 7]) + client + b"CAPA\r\nUSER alice\r\n"
    yield bytes([0x21, 1]) + client[:60]
    for cap in (1, 2, 3):
        yield bytes([0x21 | cap << 3, 5]) + client
    versions = client[:36]
    yield bytes([0x21, 0]) + versions.replace(b"KPOPV1.0", b"KPOPV0.9")
    yield bytes([0x21, 0]) + versions.replace(b"SENDAUTH_V1.0", b"SENDAUTH_V0.9")
    yield bytes([0x21, 0]) + versions + b"\x7f\xff\xff\xff"
    yield bytes([0x21, 0]) + b"AUTHV0.1KPOPV0.1"


def gssapi_layer() -> Iterator[bytes]:
    """The plaintexts of the recorded GSSAPI frames, wrapped afresh by the harness's
    initiator; whole, mutated, with the other protection, mixed with raw bytes and wraps."""
    document = json.loads((VECTORS / "kerberos" / "exchanges.json").read_text())
    case = next(c for c in document["cases"] if c["mechanism"] == "GSSAPI")
    plain = [base64.b64decode(f["plain"]) for f in case["frames"]]
    for flags in (0x01, 0x00, 0x03, 0x1B, 0x0D):
        for seed in (0, 1, 9):
            yield bytes([flags, seed]) + SASL_SEPARATOR.join(b"\x01" + p for p in plain)
    mutated = b"\x02" + bytes([len(plain[0])]) + plain[0] + b"\x00\x10\x01"
    yield bytes([0x01, 0]) + SASL_SEPARATOR.join([b"\x01" + plain[0], mutated])
    yield bytes([0x01, 0]) + SASL_SEPARATOR.join([b"\x05" + plain[0], b"\x01" + plain[1]])
    yield bytes([0x01, 3]) + SASL_SEPARATOR.join([b"\x01" + plain[0], b"\x00\x00\x00\x00\x42AB"])
    yield bytes([0x01, 0]) + SASL_SEPARATOR.join([b"\x03+OK 2 messages\r\n", b"\x01" + plain[0]])
    yield bytes([0x13, 0]) + b"\x03" + b"Subject: x\r\n\r\n" * 40


TARGETS: dict[str, Callable[[], Iterator[bytes]]] = {
    "proxy_header": proxy_header,
    "wire_commands": wire_commands,
    "message_encoder": message_encoder,
    "imapd_conf": imapd_conf,
    "cyrus_conf": cyrus_conf,
    "sasl_mechanisms": sasl_mechanisms,
    "tls_layer": tls_layer,
    "session_core": session_core,
    "kpop_handshake": kpop_handshake,
    "gssapi_layer": gssapi_layer,
}


def write(target: str, out: Path = CORPUS) -> int:
    folder = out / target
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for seed in TARGETS[target]():
        path = folder / hashlib.sha1(seed, usedforsecurity=False).hexdigest()
        if not path.exists():
            path.write_bytes(seed)
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help=f"default: all of {', '.join(TARGETS)}")
    parser.add_argument("--out", type=Path, default=CORPUS)
    arguments = parser.parse_args()
    for target in arguments.targets or TARGETS:
        if target not in TARGETS:
            parser.error(f"unknown target {target!r}")
        print(f"{target}: {write(target, arguments.out)} seeds in {arguments.out / target}")


if __name__ == "__main__":
    main()
