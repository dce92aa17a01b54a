"""Generates the lab maildrops used by the transcript vectors and the tests.

The same shapes as the reference lab the Cyrus and Dovecot recordings used (see
../shared/reference/README.md): alice has 1) plain 1000 B, 2) lines starting with dots
700 B, 3) bare-LF line ends 800 B, 4) UTF-8 8-bit 900 B, 5) 5000 B, 6) 20000 B, 7) no
final newline 300 B; bob has 1000, 2000 and 3000 B. Sizes are canonical (CRLF) sizes, what
LIST reports. File names fix the UIDLs; some carry a ,W= size hint and some do not, so both
paths are exercised.

Run from the repository root: ``python vectors/maildrops/generate.py``. The output is
committed; tests read the files, never this script.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
FILLER = "the quick brown fox jumps over the lazy dog 0123456789"


def headers(user: str, number: int, subject: str, encoding: str = "7bit") -> list[str]:
    return [
        "From: Lab Sender <sender@lab.test>",
        f"To: {user}@lab.test",
        f"Subject: {subject}",
        f"Date: Mon, 01 Jan 2024 00:00:{number:02d} +0000",
        f"Message-ID: <{user}.{number}@lab.test>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Transfer-Encoding: {encoding}",
        "",
    ]


def pad(lines: list[str], target: int, final_newline: bool = True) -> list[str]:
    """Append body lines until the canonical size (CRLF, final CRLF) is ``target``."""
    size = sum(len(line.encode()) + 2 for line in lines)
    number = 0
    while target - size > 64 + 2:
        line = f"{number:05d} {FILLER}"
        lines.append(line)
        size += len(line) + 2
        number += 1
    last = target - size - 2
    if last < 1:
        raise ValueError("target too small for the header block")
    lines.append("x" * last)
    return lines


def encode(lines: list[str], ending: str, final_newline: bool = True) -> bytes:
    text = ending.join(lines)
    if final_newline:
        text += ending
    return text.encode()


def alice() -> list[tuple[str, bytes]]:
    out = []
    out.append(
        (
            "plain",
            encode(pad(headers("alice", 1, "lab message 1 (plain, 1000 bytes)"), 1000), "\r\n"),
        )
    )
    dots = headers("alice", 2, "lab message 2 (dots, 700 bytes)") + [
        ".",
        "..",
        ".leading dot",
        "..two leading dots",
        " .space dot",
        ".",
        "end of dot lines",
    ]
    out.append(("dots", encode(pad(dots, 700), "\n")))
    out.append(
        ("barelf", encode(pad(headers("alice", 3, "lab message 3 (barelf, 800 bytes)"), 800), "\n"))
    )
    utf8 = headers("alice", 4, "Grüße – 日本語 😀", "8bit") + [
        "Grüße aus Köln, ça va? ½ €",
        "日本語のテキスト 😀",
    ]
    out.append(("utf8", encode(pad(utf8, 900), "\n")))
    out.append(
        ("5k", encode(pad(headers("alice", 5, "lab message 5 (plain, 5000 bytes)"), 5000), "\n"))
    )
    out.append(
        (
            "20k",
            encode(pad(headers("alice", 6, "lab message 6 (plain, 20000 bytes)"), 20000), "\r\n"),
        )
    )
    noeol = pad(headers("alice", 7, "lab message 7 (noeol, 300 bytes)"), 300)
    out.append(("noeol", encode(noeol, "\n", final_newline=False)))
    return out


def bob() -> list[tuple[str, bytes]]:
    return [
        (
            f"{size}",
            encode(pad(headers("bob", n, f"lab message {n} (plain, {size} bytes)"), size), "\n"),
        )
        for n, size in ((1, 1000), (2, 2000), (3, 3000))
    ]


def main() -> None:
    from pop3d.message import canonical_size

    for user, messages in (("alice", alice()), ("bob", bob())):
        folder = HERE / user
        folder.mkdir(exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for number, (label, data) in enumerate(messages, 1):
            unique = f"17000000{number:02d}.M{number}P1.lab"
            size = canonical_size([data])
            # odd-numbered messages carry the hint, even-numbered ones are measured
            name = f"{unique},S={len(data)},W={size}" if number % 2 else unique
            (folder / name).write_bytes(data)
            print(f"{user} {number} {label:7} canonical {size:6} file {len(data):6} {name}")


if __name__ == "__main__":
    main()
