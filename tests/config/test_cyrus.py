from __future__ import annotations

import socket

import pytest

from pop3d.config import cyrus
from pop3d.config.imapd import ConfigError


def test_services_section() -> None:
    config = cyrus.parse_text(
        """
        START {
          recover cmd="ctl_cyrusdb -r"
        }
        SERVICES {
          # comment
          pop3   cmd="pop3d -C /etc/x.conf" listen="127.0.0.1:1110" prefork=2 maxchild=50
          pop3s  cmd="/usr/lib/cyrus/bin/pop3d -s" listen="[::1]:1995" proto=tcp6
          imap   cmd="imapd" listen="imap" prefork=0
          local  cmd="pop3d" listen="/run/pop3.sock"
          plain  cmd="pop3d" listen="1110"
        }
        EVENTS {
          checkpoint cmd="ctl_cyrusdb -c" period=30
        }
        """,
        "cyrus.conf",
    )
    names = [s.name for s in config.services]
    assert names == ["pop3", "pop3s", "local", "plain"]
    pop3 = config.services[0]
    assert pop3.argv == ("pop3d", "-C", "/etc/x.conf")
    assert (pop3.listen.host, pop3.listen.port, pop3.prefork, pop3.maxchild) == (
        "127.0.0.1",
        1110,
        2,
        50,
    )
    assert config.services[1].listen.family == socket.AF_INET6
    assert config.services[2].listen.family == socket.AF_UNIX
    # a port alone: every address of both families, as Cyrus's master binds it
    assert config.services[3].listen == cyrus.Listen(socket.AF_UNSPEC, "", 1110)
    assert str(config.services[3].listen) == "*:1110"
    assert [str(p) for p in config.problems] == [
        "cyrus.conf:9: warning: service imap: imapd is not pop3d (skipped)"
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('pop3 listen="110"', "cmd= and listen= are required"),
        ('pop3 cmd="pop3d" listen="99999"', "port 99999 is out of range"),
        ('pop3 cmd="pop3d" listen="nosuchservice"', "unknown service name"),
        ('pop3 cmd="pop3d" listen="110" prefork=x', "service pop3: prefork='x' is not a whole"),
        # a typo must not have the master start processes until memory runs out
        ('pop3 cmd="pop3d" listen="110" prefork=100000', "prefork=100000 is more workers than"),
        ('pop3 cmd="pop3d" listen="110" maxchild=1.5', "maxchild='1.5' is not a whole number"),
        ('pop3 cmd="pop3d" listen="110" prefork="\u0662"', "prefork='\u0662' is not a whole"),
        ('pop3 cmd="pop3d" listen="110" maxchild=1_0', "maxchild='1_0' is not a whole number"),
        (f'pop3 cmd="pop3d" listen="110" maxchild={"9" * 5000}', "is not a whole number"),
        ('pop3 cmd="pop3d" listen="110" proto=udp', "proto=udp is not supported"),
        ('pop3 cmd="pop3d listen="110"', "cannot parse entry"),
        ('pop3 cmd="pop3d" listen="110" maxchild=-5', "maxchild=-5: -1 (no limit) or a number"),
        ('pop3 cmd="pop3d" listen="[::1]:110" proto=tcp4', "an IPv6 address, but proto=tcp4"),
        ('pop3 cmd="pop3d" listen="127.0.0.1:110" proto=tcp6', "an IPv4 address, but proto=tcp6"),
        ('pop3 cmd="pop3d" listen="[nohost]:110"', "nohost is not an IPv6 address"),
        # found probing: any script's digits were a port ("٢٥٠١٠" was 25010)
        ('pop3 cmd="pop3d" listen="\u0662\u0665\u0660\u0661\u0660"', "unknown service name"),
        ('pop3 cmd="pop3d" listen="127.0.0.1:\uff11\uff11\uff10"', "unknown service name"),
        # found probing: an IPV6_V6ONLY socket cannot bind it, and the master exited 71
        (
            'pop3 cmd="pop3d" listen="[::ffff:127.0.0.1]:110"',
            "an IPv4-mapped address; write 127.0.0.1:110",
        ),
        # found probing: a name is its imapd.conf keys' prefix, split at the first "_", so
        # pop3_s's own pop3_s_tls_required was no setting of its; Cyrus's master refuses both
        ('pop3_s cmd="pop3d" listen="110"', "bad character '_' in the name 'pop3_s'"),
        ('pop3-s cmd="pop3d" listen="110"', "bad character '-' in the name 'pop3-s'"),
        # found by fuzz/cyrus_conf.py: a quote inside the quoted cmd raised ValueError
        ('pop3 cmd=\'pop3d "x\' listen="110"', "cannot parse cmd: No closing quotation"),
    ],
)
def test_errors_carry_file_and_line(tmp_path, line: str, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "cyrus.conf"
    path.write_text(f"SERVICES {{\n  {line}\n}}\n")
    with pytest.raises(ConfigError) as caught:
        cyrus.load(path)
    assert f"{path}:2: error:" in str(caught.value)
    assert message in str(caught.value)
    assert "invalid literal" not in str(caught.value)  # never Python's own words


def test_one_unix_socket_path_spelled_two_ways_is_listened_on_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Found probing: "/x/s1" and "/x//s1" were two services, and the master's second
    bind found the first's socket there (exit 71)."""
    path = tmp_path / "cyrus.conf"
    path.write_text(
        'SERVICES {\n  one cmd="pop3d" listen="/x/s1"\n  two cmd="pop3d" listen="/x/.//s1"\n}\n'
    )
    with pytest.raises(ConfigError) as caught:
        cyrus.load(path)
    assert f"{path}:3: error: service two: listens where service one does (line 2)" in str(
        caught.value
    )


def test_section_names_are_read_as_cyrus_reads_them() -> None:
    """masterconf_getsection compares a section's name case-insensitively but for its
    first letter: "Services {" is SERVICES (pop3d refused it as no section), and Cyrus skips
    "services {", every service in it, so it is an error, not a section pop3d serves."""
    entry = '\n  pop3 cmd="pop3d" listen="1110"\n}\n'
    for header in ("Services {", "SeRvIcEs{", "SERVICES {"):
        config = cyrus.parse_text(header + entry, "cyrus.conf")
        assert [s.name for s in config.services] == ["pop3"] and config.problems == [], header
    config = cyrus.parse_text("services {" + entry, "cyrus.conf")
    assert [str(p) for p in config.problems] == [
        "cyrus.conf:1: error: section 'services': Cyrus's master reads SERVICES only with a "
        "capital first letter, and skips this one"
    ]


def test_unclosed_section(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "cyrus.conf"
    path.write_text('SERVICES {\n  pop3 cmd="pop3d" listen="110"\n')
    with pytest.raises(ConfigError, match="not closed"):
        cyrus.load(path)


def test_prefork_within_what_the_machine_and_maxchild_allow() -> None:
    most = cyrus.most_workers()
    assert most >= 64 and most >= 8 * cyrus.available_cores()
    text = f"""
        SERVICES {{
          top    cmd="pop3d" listen="1110" prefork={most}
          capped cmd="pop3d" listen="1111" prefork=4 maxchild=2
          fine   cmd="pop3d" listen="1112" prefork=2 maxchild=2
        }}
        """
    config = cyrus.parse_text(text, "cyrus.conf")
    assert [s.prefork for s in config.services] == [most, 2, 2]
    assert [str(p) for p in config.problems] == [
        "cyrus.conf:4: warning: service capped: prefork=4 is more than maxchild=2: 2 workers "
        "(each needs room for a session)"
    ]


@pytest.mark.parametrize(
    ("text", "proto", "expected"),
    [
        ("110", "tcp", (socket.AF_UNSPEC, "", 110)),
        ("110", "tcp4", (socket.AF_INET, "", 110)),
        ("110", "tcp6", (socket.AF_INET6, "", 110)),
        ("localhost:110", "tcp", (socket.AF_UNSPEC, "localhost", 110)),
        ("localhost:110", "tcp6", (socket.AF_INET6, "localhost", 110)),
        ("127.0.0.1:110", "tcp", (socket.AF_INET, "127.0.0.1", 110)),
        ("[::1]:110", "tcp", (socket.AF_INET6, "::1", 110)),
        ("::1:110", "tcp", (socket.AF_INET6, "::1", 110)),  # Cyrus splits at the last colon
    ],
)
def test_listen_families_follow_proto(
    text: str, proto: str, expected: tuple[int, str, int]
) -> None:
    assert cyrus.parse_listen(text, proto) == cyrus.Listen(*expected)


def test_an_empty_section_on_one_line() -> None:
    """Cyrus's master takes "EVENTS { }" and "DAEMON {}" (found re-probing: refused as
    "expected a section")."""
    config = cyrus.parse_text(
        'START {}\nSERVICES {\n  pop3 cmd="pop3d" listen="127.0.0.1:1110"\n}\n'
        "EVENTS { }\nDAEMON {}\n",
        "cyrus.conf",
    )
    assert config.problems == []
    assert [service.name for service in config.services] == ["pop3"]
