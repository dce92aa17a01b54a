"""The parts of the IMAP import that need no server: addresses, Cyrus's UIDL formats
(pop3d.c uidl_msg) and reading uidl_format from an old site's imapd.conf. The import itself
runs against a real Cyrus in tests/interop/test_cyrus_import.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from pop3d.storage.imap_import import (
    ImportFailed,
    parse_address,
    uidl,
    uidl_format_from_config,
)


def test_addresses() -> None:
    assert parse_address("cyrus.example.org", "none") == ("cyrus.example.org", 143)
    assert parse_address("cyrus.example.org", "imaps") == ("cyrus.example.org", 993)
    assert parse_address("127.0.0.1:1143", "starttls") == ("127.0.0.1", 1143)
    assert parse_address("[::1]:1143", "none") == ("::1", 1143)
    assert parse_address("[::1]", "imaps") == ("::1", 993)
    assert parse_address("::1", "none") == ("::1", 143)
    for bad in ("host:0", "host:x", ":143", "[::1", "[::1]x", "host:70000"):
        with pytest.raises(ValueError):
            parse_address(bad, "none")


def test_cyrus_uidl_formats() -> None:
    # uidvalidity 1700000000 is 0x6553f100
    assert uidl("cyrus", True, 1700000000, 17) == "1700000000.17"
    assert uidl("uidonly", True, 1700000000, 17) == "17"
    assert uidl("dovecot", True, 1700000000, 17) == "000000116553f100"
    assert uidl("courier", True, 1700000000, 17) == "1700000000-17"
    for name in ("cyrus", "uidonly", "dovecot", "courier"):
        assert uidl(name, False, 1700000000, 17) == "17"  # no pop3newuidl: the bare UID
    with pytest.raises(ValueError, match="uidl_format 'x'"):
        uidl("x", True, 1, 1)


def test_uidl_format_from_the_old_imapd_conf(tmp_path: Path) -> None:
    conf = tmp_path / "imapd.conf"
    conf.write_text("# old site\nconfigdirectory: /var/lib/imap\n")
    assert uidl_format_from_config(conf) == "cyrus"  # Cyrus's default
    extra = tmp_path / "extra.conf"
    extra.write_text("uidl_format: Courier\n")
    conf.write_text("configdirectory: /var/lib/imap\n@include: extra.conf\n")
    assert uidl_format_from_config(conf) == "courier"
    conf.write_text("uidl_format: dovecot\n@include: extra.conf\n")
    with pytest.raises(ImportFailed, match=r"extra.conf:1: uidl_format set again \(first at "):
        uidl_format_from_config(conf)
    conf.write_text("\n\nuidl_format: cyrus3\n")
    with pytest.raises(ImportFailed, match=r"imapd.conf:3: uidl_format 'cyrus3': expected one"):
        uidl_format_from_config(conf)
    with pytest.raises(ImportFailed, match="cannot read .*missing.conf"):
        uidl_format_from_config(tmp_path / "missing.conf")
