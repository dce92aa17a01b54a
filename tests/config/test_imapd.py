from __future__ import annotations

import os
from pathlib import Path

import pytest

from pop3d.config import cyrus, imapd
from pop3d.config.imapd import ConfigError
from pop3d.config.options import OPTIONS, Kind
from pop3d.sasl import registry


def test_syntax_as_cyrus(tmp_path: Path) -> None:
    config = imapd.from_text(
        "# comment\n\nAllowPlainText: yes\npoptimeout: 15\npopminpoll:2\n"
        "failedloginpause: 1m30s\npopexpiretime: -1\npartition-default: /var/spool/x\n"
    )
    assert config.switch("allowplaintext") is True
    assert config.integer("poptimeout") == 900  # minutes by default
    assert config.integer("popminpoll") == 120
    assert config.integer("failedloginpause") == 90
    assert config.integer("popexpiretime") < 0  # any negative value means NEVER
    assert config.string("partition-default") == "/var/spool/x"
    assert config.switch("allowapop") is False  # pop3d's default (Cyrus: on)


def test_service_prefix_wins() -> None:
    config = imapd.from_text("allowplaintext: no\npop3s_allowplaintext: yes\n")
    assert config.switch("allowplaintext", "pop3") is False
    assert config.switch("allowplaintext", "pop3s") is True
    assert config.where("allowplaintext", "pop3s") == "<text>:2"


def test_a_service_named_in_capitals_has_its_prefixed_keys() -> None:
    """Keys are read in lower case and Cyrus compares a service's prefix case-insensitively:
    a service POP3S in cyrus.conf ignored its own pop3s_allowplaintext."""
    config = imapd.from_text("allowplaintext: yes\npop3s_allowplaintext: no\n")
    assert config.switch("allowplaintext", "POP3S") is False
    assert config.where("allowplaintext", "Pop3S") == "<text>:2"


def test_a_server_wide_option_for_one_service_is_said_to_apply_to_none() -> None:
    """pop3d-master reads cyrus_user and its metrics endpoint once, for every service:
    pop3s_cyrus_user was accepted without a word and applied to nothing."""
    config = imapd.from_text("pop3s_cyrus_user: mail\npop3s_prometheus_listen: 9111\n")
    assert [str(p) for p in config.warnings] == [
        f"<text>:{n}: warning: pop3s_{name}: {name} is read once for the whole server, not "
        "per service (ignored)"
        for n, name in ((1, "cyrus_user"), (2, "prometheus_listen"))
    ]
    assert config.string("cyrus_user") is None


PATH_OPTIONS = (
    "configdirectory partition-default credentials_file server_secret_file syslog_socket "
    "audit_jsonl_file sasl_keytab sasl_saslauthd_path oauth_jwks_file tls_server_cert "
    "tls_server_key tls_client_ca_file tls_client_ca_dir"
).split()


@pytest.mark.parametrize("option", PATH_OPTIONS)
def test_a_relative_path_is_an_error(option: str) -> None:
    """Found probing: "partition-default: spool" checked clean, and deliver, run by
    Postfix's pipe in its queue folder, stored mail there, where no login looked; a
    relative maildir_path was already refused."""
    with pytest.raises(ConfigError) as caught:
        imapd.from_text(f"pop3s_{option}: ./x\n{option}: x\n")
    assert [str(p) for p in caught.value.problems] == [
        f"<text>:{n}: error: {key}: {value!r} is not an absolute path (a relative one names "
        "another file in each process, relative to the folder it started in)"
        for n, key, value in ((1, f"pop3s_{option}", "./x"), (2, option, "x"))
    ]
    assert imapd.from_text(f"{option}: /x\n").string(option) == "/x"


def test_a_disabled_certificate_and_other_keytab_kinds_are_no_relative_paths() -> None:
    """Cyrus's "disabled" certificate, a keytab of another kind (refused later, by name)."""
    config = imapd.from_text(
        "tls_server_cert: disabled\ntls_server_key: disabled\nsasl_keytab: MEMORY:x\n"
        "pop3s_sasl_keytab: FILE:/etc/k\n"
    )
    assert config.string("sasl_keytab", "pop3s") == "FILE:/etc/k"
    with pytest.raises(ConfigError, match="'FILE:k' is not an absolute path"):
        imapd.from_text("sasl_keytab: FILE:k\n")


def test_bad_values_are_errors_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "imapd.conf"
    path.write_text("allowplaintext: maybe\n\npoptimeout: soon\nserverinfo: loud\nnocolon\n")
    with pytest.raises(ConfigError) as caught:
        imapd.load(path)
    text = str(caught.value)
    assert f"{path}:1: error: allowplaintext: 'maybe' is not a switch" in text
    assert f"{path}:3: error: poptimeout" in text
    assert f"{path}:4: error: serverinfo: 'loud' is not one of off, min, on" in text
    assert f"{path}:5: error: expected 'key: value'" in text


def test_switches_are_read_by_their_first_letters_as_cyrus_reads_them() -> None:
    """config_parse_switch (libconfig.c) reads 0, n, f, "of" as no and 1, y, t, "on" as
    yes, in lower case: "y" and "n" were refused here, and "Yes" taken, which Cyrus
    refuses. A spelling other than the usual words is read as Cyrus reads it, and said."""
    for text, value in (("yes", True), ("on", True), ("1", True), ("t", True), ("off", False)):
        config = imapd.from_text(f"allowplaintext: {text}\n")
        assert config.switch("allowplaintext") is value and config.problems == [], text
    for text, value in (("y", True), ("n", False), ("nope", False), ("of", False), ("10", True)):
        config = imapd.from_text(f"pop3s_allowplaintext: {text}\n")
        assert config.switch("allowplaintext", "pop3s") is value, text
        assert [str(p) for p in config.problems] == [
            f"<text>:1: warning: pop3s_allowplaintext: {text!r} is read as "
            f"{'yes' if value else 'no'} (Cyrus reads a switch by its first letters)"
        ]
    for text in ("Yes", "NO", "On", "True", "oui", "o", "+1", "2"):
        with pytest.raises(ConfigError) as caught:
            imapd.from_text(f"allowplaintext: {text}\n")
        assert str(caught.value.problems[0]) == (
            f"<text>:1: error: allowplaintext: {text!r} is not a switch (yes/no, on/off, 1/0, "
            "true/false, in lower case)"
        )


def test_an_enum_takes_a_switch_s_words_for_on_and_off_as_cyrus_does() -> None:
    """libconfig.c reads 1, yes, t, true as "on" and 0, no, f, false as "off" for an enum:
    a Cyrus site's "virtdomains: yes" kept pop3d from starting."""
    config = imapd.from_text("virtdomains: yes\nserverinfo: 0\ntls_client_certs: false\n")
    assert config.string("virtdomains") == "on"
    assert config.string("serverinfo") == "off"
    assert config.string("tls_client_certs") == "off"
    with pytest.raises(ConfigError, match="'true' is not one of off, optional, require"):
        imapd.from_text("tls_client_certs: true\n")


def test_negative_durations_are_errors_where_they_mean_nothing(tmp_path: Path) -> None:
    """A negative poptimeout ended every session at once, with only a warning; a zero
    tls_handshake_timeout failed every handshake. popexpiretime keeps -1 (NEVER)."""
    path = tmp_path / "imapd.conf"
    path.write_text(
        "poptimeout: -5\nfailedloginpause: -1\ntls_handshake_timeout: 0\npopexpiretime: -1\n"
    )
    with pytest.raises(ConfigError) as caught:
        imapd.load(path)
    text = str(caught.value)
    assert f"{path}:1: error: poptimeout: '-5' must not be negative" in text
    assert f"{path}:2: error: failedloginpause: '-1' must not be negative" in text
    assert f"{path}:3: error: tls_handshake_timeout: '0' is below the minimum 1" in text
    assert ":4:" not in text
    path.write_text("popexpiretime: -1\n")
    assert imapd.load(path).get("popexpiretime") == -86400


def test_unknown_keys_warn_and_other_cyrus_keys_do_not(tmp_path: Path) -> None:
    config = imapd.from_text(
        "frobnicate: 1\nlmtpsocket: /x\nduplicatesuppression: 0\npartition-news: /n\n"
        "sasl_mech_list: PLAIN KERBEROS_V4 SCRAM-SHA-256 NTLM\npop3_uidl_format: dovecot\n"
    )
    warnings = [str(w) for w in config.warnings + registry.config_problems(config)]
    assert warnings[0] == "<text>:1: warning: unknown option 'frobnicate' (ignored)"
    assert any("KERBEROS_V4 is not offered by this build" in w for w in warnings)
    # pop3_uidl_format is service pop3's uidl_format, which has no effect here (issue 14)
    assert any("pop3_uidl_format: dovecot has no effect here" in w for w in warnings)
    assert len(warnings) == 4  # frobnicate, pop3_uidl_format, KERBEROS_V4, NTLM


def test_short_poptimeout_warns() -> None:
    config = imapd.from_text("poptimeout: 30s\n")
    assert config.integer("poptimeout") == 30
    assert "below the 10 minutes RFC 1939 asks for" in str(config.warnings[0])


def test_include(tmp_path: Path) -> None:
    (tmp_path / "extra.conf").write_text("allowapop: yes\n")
    (tmp_path / "imapd.conf").write_text("@include: extra.conf\nservername: x\n")
    config = imapd.load(tmp_path / "imapd.conf")
    assert config.switch("allowapop") is True
    (tmp_path / "imapd.conf").write_text("@include: missing.conf\n")
    with pytest.raises(ConfigError, match=r"imapd.conf:1: error: cannot read"):
        imapd.load(tmp_path / "imapd.conf")


def test_an_option_name_is_what_cyrus_reads_as_one() -> None:
    """config_read_file reads a name of ASCII letters, digits, "-" and "_", the ":" right
    after it ("invalid option name" else): pop3d took "allowplaintext : yes" and
    "tls.foo: x", which stop Cyrus's daemons."""
    for line in ("allowplaintext : yes", "tls.foo: x", "\u00e9t\u00e9: x", "poptimeout\t: 10"):
        with pytest.raises(ConfigError) as caught:
            imapd.from_text(f"{line}\n")
        assert str(caught.value.problems[0]) == (
            "<text>:1: error: expected 'key: value' (a name of letters, digits, - and _, then "
            f"':'), got {line!r}"
        )
    assert imapd.from_text("  AllowPlainText:yes\n").switch("allowplaintext") is True


def test_an_empty_value_and_an_unknown_directive_are_errors_as_in_cyrus() -> None:
    """config_read_file refuses both ("empty option value", "invalid directive"): pop3d
    took "servername:" for unset and warned of "@frob", and a shared imapd.conf it read
    kept Cyrus's own daemons from starting."""
    with pytest.raises(ConfigError) as caught:
        imapd.from_text("servername:\n@frob: x\n@include:   \nfrob:\n@Include_x: y\n")
    assert [str(p) for p in caught.value.problems] == [
        "<text>:1: error: servername: an empty value (Cyrus refuses one)",
        "<text>:2: error: @frob: not a directive (Cyrus has @include only)",
        "<text>:3: error: @include: an empty value (Cyrus refuses one)",
        "<text>:4: error: frob: an empty value (Cyrus refuses one)",
        "<text>:5: error: @include_x: not a directive (Cyrus has @include only)",
    ]


def test_a_key_set_twice_is_an_error_as_in_cyrus(tmp_path: Path) -> None:
    """config_read_file stops at "option was specified twice", whatever the option (its
    own, another daemon's, one it does not know), across @include too: pop3d warned and
    took the last, so a shared imapd.conf it started with kept Cyrus's daemons down.
    A service's own key is another key."""
    (tmp_path / "extra.conf").write_text("poptimeout: 20m\n")
    path = tmp_path / "imapd.conf"
    path.write_text(
        "poptimeout: 10m\npop3s_poptimeout: 15m\n@include: extra.conf\nServerName: a\n"
        "servername: b\nlmtpsocket: /x\nlmtpsocket: /y\nfrob: 1\nfrob: 2\n"
    )
    with pytest.raises(ConfigError) as caught:
        imapd.load(path)
    assert [str(p) for p in caught.value.problems if p.severity == "error"] == [
        f"{tmp_path}/extra.conf:1: error: poptimeout set again (first at {path}:1); Cyrus "
        "refuses an option set twice",
        f"{path}:5: error: servername set again (first at {path}:4); Cyrus refuses an option "
        "set twice",
        f"{path}:7: error: lmtpsocket set again (first at {path}:6); Cyrus refuses an option "
        "set twice",
        f"{path}:9: error: frob set again (first at {path}:8); Cyrus refuses an option set twice",
    ]


def test_a_line_ending_with_a_backslash_goes_on_to_the_next_as_in_cyrus(tmp_path: Path) -> None:
    """Cyrus's config_read_file joins a line ending with \\ to the next (the backslash
    dropped): pop3d read each half as a line of its own. Problems are told at the first
    line; a comment goes on too, which is said, and a line continued past the end of the
    file, which Cyrus drops, is an error."""
    path = tmp_path / "imapd.conf"
    path.write_text(
        "sasl_mech_list: PLAIN \\\n  SCRAM-SHA-256\nservername: mail.\\\nexample.org\n"
        "# servername: x \\\npoptimeout: 20m\npoptim\\\neout: banana\n"
    )
    with pytest.raises(ConfigError) as caught:
        imapd.load(path)
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:7: error: poptimeout: 'banana' is not a duration (a number of minutes, or "
        "e.g. 1h30m, 45s)",
        f"{path}:5: warning: a comment ending with \\ goes on to line 6, which is part of it "
        "(as Cyrus reads it)",
    ]
    path.write_text(path.read_text().replace("poptim\\\neout: banana\n", ""))
    config = imapd.load(path)
    assert config.string("sasl_mech_list") == "PLAIN   SCRAM-SHA-256"
    assert config.string("servername") == "mail.example.org"
    assert config.setting("poptimeout") is None  # in the comment
    path.write_text("servername: a\nallowplaintext: yes\\\n")
    with pytest.raises(ConfigError) as caught:
        imapd.load(path)
    assert str(caught.value.problems[0]) == (
        f"{path}:2: error: the last line ends with \\, which continues it past the end of the "
        "file (Cyrus drops the line)"
    )
    path.write_text("servername: a\n# the end \\\n")  # a comment: nothing dropped
    assert imapd.load(path).problems == []


def test_debug_command_is_a_format_cyrus_can_fill_in() -> None:
    """Cyrus fills debug_command in with snprintf(buf, 1024, debug_command, argv[0],
    getpid(), service): a conversion that does not fit its argument, or a fourth, is
    undefined in C, and refused here at its line."""
    fine = "gdb %s %#x # %%s %-8.3s|100%%"
    assert imapd.from_text(f"debug_command: {fine}\n").string("debug_command") == fine
    for template, trouble in (
        ("gdb %d", "'%d' takes the program name, which needs %s (%% is a %)"),
        ("gdb %s %s", "'%s' takes the process id, which needs %d, %i, %o, %u, %x, %X (%% is a %)"),
        ("gdb %s %ld %s", "'%ld' takes the process id"),
        ("gdb %s %d %s %s", "'%s' is a fourth conversion: Cyrus fills in three"),
        ("gdb %s %*d", "'%*d' takes the process id"),
        ("echo 100%", "a lone % at the end (%% is a %)"),
        ("gdb %n", "'%n' takes the program name"),
    ):
        with pytest.raises(ConfigError) as caught:
            imapd.from_text(f"debug_command: {template}\n")
        assert f"<text>:1: error: debug_command: {trouble}" in str(caught.value.problems[0])


def test_include_of_a_name_with_nul_is_a_config_error(tmp_path: Path) -> None:
    # Found by fuzz/imapd_conf.py: open() raised ValueError (embedded null byte).
    (tmp_path / "imapd.conf").write_text("@include: a\0b\n")
    with pytest.raises(ConfigError, match=r"imapd.conf:1: error: cannot read .*NUL"):
        imapd.load(tmp_path / "imapd.conf")
    with pytest.raises(ConfigError, match="NUL in the file name"):
        imapd.from_text("@include: /a\0b\n")


def test_every_option_is_documented_and_its_default_parses() -> None:
    for option in OPTIONS.values():
        assert option.doc.strip(), option.name
        if option.kind is Kind.ENUM:
            assert option.default in option.choices
        if option.kind is Kind.SWITCH:
            assert isinstance(option.default, bool)


def test_debian_stock_imapd_conf_has_no_unknown_option() -> None:
    source = Path(__file__).resolve().parents[2] / "vectors/configs/debian-cyrus-imapd.conf"
    config = imapd.from_text(source.read_text(), str(source))
    assert [w for w in config.warnings if "unknown option" in w.message] == []


def test_reference_cyrus_config_checks_clean() -> None:
    """The lab Cyrus config from ../shared: every key is known, no warnings but sasl."""
    source = Path(__file__).resolve().parents[2] / "vectors/configs/cyrus-lab-imapd.conf"
    config = imapd.from_text(source.read_text().replace("@LAB@", "/lab"))
    unknown = [w for w in config.warnings if "unknown option" in w.message]
    assert unknown == []


def test_a_problem_without_a_line_names_the_file_only() -> None:
    """Line 0 is no line: an unset option, a flag, the file as a whole."""
    assert str(imapd.Problem("/etc/imapd.conf", 7, "bad")) == "/etc/imapd.conf:7: error: bad"
    assert str(imapd.Problem("/etc/imapd.conf", 0, "bad")) == "/etc/imapd.conf: error: bad"
    unset = imapd.from_text("", "/etc/imapd.conf").problem_with("sasl_keytab", None, "gone")
    assert str(unset) == "/etc/imapd.conf (sasl_keytab unset): error: gone"


def test_lines_end_at_lf_only_and_bytes_not_utf8_matter_only_where_used(tmp_path: Path) -> None:
    """Found probing: a form feed, a lone CR or U+2028 in a comment split the line (the
    rest refused as 'expected key: value', every later line number off by one); a Latin-1
    comment in a shared Cyrus imapd.conf refused the whole file without a line."""
    conf = tmp_path / "imapd.conf"
    conf.write_bytes(
        b"\xef\xbb\xbf# the site's config\r\n"  # a byte-order mark, CRLF
        b"# page\x0cbreak, a lone\rCR, a \xe2\x80\xa8 separator, Latin-1: caf\xe9\n"
        b"servername: mail.example.org\r\n"
        b"poptimeout: 11m\n"
    )
    config = imapd.load(conf)
    assert config.string("servername") == "mail.example.org"
    assert config.integer("poptimeout") == 660 and config.problems == []
    conf.write_bytes(b"servername: mail.example.org\n# fine\nlistenqueue: caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        imapd.load(conf)
    assert [(p.line, p.message) for p in caught.value.problems] == [(3, "not UTF-8")]


@pytest.mark.parametrize(("name", "reason"), [("fifo", "not a regular file"), ("big", "larger")])
def test_only_a_regular_file_of_sane_size_is_read(tmp_path: Path, name: str, reason: str) -> None:
    """-C naming a FIFO hung pop3d (and pop3d-admin) for ever; /dev/zero filled memory."""
    path = tmp_path / name
    if name == "fifo":
        os.mkfifo(path)
    else:
        path.write_bytes(b"# padding\n" * (500 << 10))
    with pytest.raises(ConfigError) as caught:
        imapd.load(path)
    assert reason in caught.value.problems[0].message
    with pytest.raises(ConfigError) as caught:
        cyrus.load(path)
    assert reason in caught.value.problems[0].message


def test_token_mechanisms_named_without_an_issuer_warn_and_are_not_offered() -> None:
    """Found probing: sasl_mech_list naming OAUTHBEARER and XOAUTH2 without oauth_issuer
    checked clean, and CAPA offered both, where every login could only fail."""
    config = imapd.from_text("sasl_mech_list: PLAIN OAUTHBEARER XOAUTH2\n", "imapd.conf")
    warnings = [str(p) for p in registry.config_problems(config)]
    assert len(warnings) == 2 and all("needs oauth_issuer" in w for w in warnings)
    assert registry.enabled("PLAIN OAUTHBEARER XOAUTH2") == ("PLAIN",)
    assert registry.enabled("PLAIN OAUTHBEARER", token_validation=True) == ("OAUTHBEARER", "PLAIN")
    served = imapd.from_text("pop3s_sasl_mech_list: OAUTHBEARER\npop3s_oauth_issuer: x\n")
    assert registry.config_problems(served) == []


@pytest.mark.parametrize("name", ["mail example.org", "mail\x1b[2J", "mäil.example.org"])
def test_servername_is_one_host_name(name: str) -> None:
    """Found probing: anything went into the greeting and the APOP challenge."""
    with pytest.raises(ConfigError) as caught:
        imapd.from_text(f"servername: {name}\n")
    assert "is not one word of printable ASCII" in str(caught.value.problems[0])
    assert imapd.from_text("servername: mail.example.org\n").string("servername")


def test_what_goes_into_protocol_lines_is_one_short_word() -> None:
    """Found probing: syslog_prefix went into SESSIONID=<...> unchecked (CR, ESC, NUL, ">"
    passed, and a 3 MB prefix made a 3 MB answer line), servername's ">" closed the APOP
    challenge's brackets. Both are one word of printable ASCII without < and >, at most
    128 characters (Cyrus's limit on a session id's prefix), so every line they go into
    stays within RFC 2449's 512 octets."""
    for option in ("servername", "syslog_prefix"):
        for value in ("a\rb", "a\x1bb", "a\0b", "a>b", "<a", "a b"):
            with pytest.raises(ConfigError) as caught:
                imapd.from_text(f"pop3s_{option}: {value}\n")
            assert str(caught.value.problems[0]) == (
                f"<text>:1: error: pop3s_{option}: {value!r} is not one word of printable "
                "ASCII without < or > (it goes into protocol lines)"
            )
        with pytest.raises(ConfigError) as caught:
            imapd.from_text(f"{option}: {'x' * 129}\n")
        assert str(caught.value) == (
            f"<text>:1: error: {option}: 129 characters, more than 128 (it goes into "
            "protocol lines)"
        )
        longest = "m-a.i_l:9/" + "x" * 118
        assert imapd.from_text(f"{option}: {longest}\n").string(option) == longest


@pytest.mark.parametrize("option", ["poptimeout", "tls_handshake_timeout", "pop_line_max"])
def test_numbers_beyond_cyrus_int_are_errors(option: str) -> None:
    """Found probing: 400 nines checked clean and then crashed every process (exit 70,
    OverflowError making the event loop's float)."""
    for value in ("9" * 400, "2147483648"):
        with pytest.raises(ConfigError) as caught:
            imapd.from_text(f"{option}: {value}\n")
        assert "above the maximum 2147483647" in str(caught.value.problems[0])


def test_integers_are_read_as_cyrus_reads_them() -> None:
    """strtol(p, &end, 0), as libconfig.c reads an integer option: pop3d refused 0x10."""
    for text, number in (("5", 5), ("+5", 5), ("0x10", 16), ("0X1f", 31), ("0", 0), ("07", 7)):
        config = imapd.from_text(f"pop_bad_commands_max: {text}\n")
        assert config.integer("pop_bad_commands_max") == number, text
        assert config.problems == [], text


def test_a_leading_zero_is_octal_as_in_cyrus_and_said() -> None:
    """pop3d read "010" as 10, Cyrus as 8: now 8, with a warning, since it changed."""
    config = imapd.from_text("pop3s_argon2_passes: 010\n")
    assert config.integer("argon2_passes", "pop3s") == 8
    assert [str(p) for p in config.problems] == [
        "<text>:1: warning: pop3s_argon2_passes: 010 is octal, 8 (a leading 0, as Cyrus reads "
        "it): write 8 if that is meant"
    ]


def test_what_cyrus_would_not_read_as_an_integer_is_an_error() -> None:
    """Found probing: Python's int() took any script's digits and "_": "argon2_passes: \u0665"
    was 5. Cyrus reads ASCII digits only, and "08" is no octal number."""
    for text in ("\u0665", "\uff13", "1_0", "08", "0x", "5.0", "0b1", "+", "5k"):
        with pytest.raises(ConfigError) as caught:
            imapd.from_text(f"argon2_passes: {text}\n")
        assert str(caught.value.problems[0]) == (
            f"<text>:1: error: argon2_passes: {text!r} is not an integer (decimal, 0x "
            "hexadecimal or, with a leading 0, octal, as Cyrus reads it)"
        )


def test_durations_are_read_as_cyrus_reads_them() -> None:
    """config_parseduration (libconfig.c): "1h30" and "-1d" were refused here."""
    for option, text, seconds in (
        ("poptimeout", "1h30", 5400),  # the last number in the option's unit, minutes
        ("poptimeout", "30m1", 1860),
        ("poptimeout", "010", 600),  # decimal: config_parseduration counts in tens
        ("failedloginpause", "1s1m", 61),
        ("popexpiretime", "-1d", -86400),
        ("popexpiretime", "-2", -172800),
    ):
        assert imapd.from_text(f"{option}: {text}\n").integer(option) == seconds, text


def test_what_cyrus_would_not_read_as_a_duration_is_an_error() -> None:
    """Found probing: \\d took any script's digits ("poptimeout: \u0661\u0660" was 10
    minutes)."""
    for text in ("\u0661\u0660", "\uff11\uff10", "1_0", "1H", "+5", "1 h", "1h-5m", "-"):
        with pytest.raises(ConfigError) as caught:
            imapd.from_text(f"poptimeout: {text}\n")
        assert f"poptimeout: {text!r} is not a duration" in str(caught.value.problems[0])


def test_an_include_of_dev_null_includes_nothing(tmp_path: Path) -> None:
    """Found probing: the regular-file rule (a FIFO hung the reader) refused /dev/null,
    which Cyrus reads as an empty file."""
    conf = tmp_path / "imapd.conf"
    conf.write_text("@include: /dev/null\nservername: x\n")
    assert imapd.load(conf).string("servername") == "x"


def test_a_duration_too_long_is_told_in_its_own_unit() -> None:
    """Found probing: "popexpiretime: 24856d" was refused as "above the maximum
    2147483647", seconds read as days."""
    with pytest.raises(ConfigError) as caught:
        imapd.from_text("popexpiretime: 24856d\n")
    assert "above the maximum 2147483647 seconds (24855 days)" in str(caught.value.problems[0])
    assert imapd.from_text("popexpiretime: 24855d\n")


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("tls_ca_file", "tls_client_ca_file"),
        ("tls_ca_path", "tls_client_ca_dir"),
        ("tls_cert_file", "tls_server_cert"),
        ("tls_cipher_list", "tls_ciphers"),
        ("tls_key_file", "tls_server_key"),
    ],
)
def test_cyrus_older_tls_names_are_read_as_the_newer_ones(older: str, newer: str) -> None:
    """Found probing: tls_cipher_list (Cyrus's name for tls_ciphers before 2.5.0) and the
    other older TLS names were accepted and ignored. Cyrus's libconfig reads them as the
    newer name, with a warning, unless the newer one is set (for the service or for all)."""
    config = imapd.from_text(f"{older}: /old\npop3s_{older}: /old-pop3s\n", "t.conf")
    assert config.string(newer) == "/old"
    assert config.string(newer, "pop3s") == "/old-pop3s"
    assert config.where(newer, "pop3s") == "t.conf:2"
    assert [str(w) for w in config.warnings] == [
        f"t.conf:1: warning: {older}: Cyrus's older name (deprecated since 2.5.0), read as "
        f"{newer}: rename it",
        f"t.conf:2: warning: pop3s_{older}: Cyrus's older name (deprecated since 2.5.0), read "
        f"as pop3s_{newer}: rename it",
    ]
    # The newer name wins wherever it is set, before or after the older one
    config = imapd.from_text(f"pop3s_{older}: /old-pop3s\n{older}: /old\n{newer}: /new\n")
    assert config.string(newer) == config.string(newer, "pop3s") == "/new"
    ignored = [str(w) for w in config.warnings if "ignored" in str(w)]
    assert ignored == [
        f"<text>:1: warning: pop3s_{older} ignored: {newer} is set (<text>:3)",
        f"<text>:2: warning: {older} ignored: {newer} is set (<text>:3)",
    ]
    config = imapd.from_text(f"{older}: /old\npop3s_{newer}: /new-pop3s\n")
    assert (config.string(newer), config.string(newer, "pop3s")) == ("/old", "/new-pop3s")


def test_names_and_blanks_are_ascii_as_in_cyrus() -> None:
    """Found re-probing: the Kelvin sign (U+212A) lower-cases to "k", so "tls_\u212aey_file"
    was read as tls_key_file, and Python's strip() took a no-break space after a number
    ("poptimeout: 20\u00a0" was 20 minutes); Cyrus's libconfig reads ASCII only."""
    for text in ("tls_\u212aey_file: /etc/ssl/x.pem\n", "poptimeout: 20\u00a0\n"):
        with pytest.raises(imapd.ConfigError):
            imapd.from_text(text)
    assert imapd.from_text("poptimeout: 20 \t\n").integer("poptimeout") == 20 * 60


def test_a_file_read_twice_is_one_error(tmp_path: Path) -> None:
    """Cyrus refuses a file included twice; one including itself gave an error for each of
    its keys ("set again", 88 of them, found re-probing)."""
    main = tmp_path / "imapd.conf"
    main.write_text(f"poptimeout: 20\n@include: {main}\n")
    with pytest.raises(ConfigError) as caught:
        imapd.load(main)
    assert [str(p) for p in caught.value.problems] == [
        f"{main}:2: error: {main} is read twice (first as {main}); Cyrus refuses it"
    ]
    empty = tmp_path / "empty.conf"
    empty.write_text("# nothing\n")
    main.write_text(f"@include: {empty}\n@include: {empty}\n")
    with pytest.raises(ConfigError, match="read twice"):
        imapd.load(main)
