"""pop3d's command line: Cyrus flags, one-line errors, sysexits codes, never a traceback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.lab import Lab, free_port

POP3D = [sys.executable, "-m", "pop3d"]


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*POP3D, *args], input=stdin, capture_output=True, timeout=60)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["-Z"], 64, b"pop3d: option -Z not recognized"),
        (["-U"], 64, b"pop3d: option -U requires argument"),
        (["-U", "many"], 64, b"pop3d: -U 'many': expected a whole number"),
        (["-p", "-1"], 64, b"pop3d: -p '-1': expected a whole number"),
        (["-T", "1.5"], 64, b"pop3d: -T '1.5'"),
        # digits of other scripts, which \d and int() take: -p was 256 (found probing)
        (["-X", "-p", "\u0662\u0665\u0666"], 64, b"': expected a whole number 0..65535"),
        (["-X", "-U", "\u07c9"], 64, b"': expected a whole number"),
        (["-X", "-T", "\u0967"], 64, b"': expected a whole number"),
        (["-X", "-U", "1" * 5000], 64, b"': expected a whole number"),  # int()'s 4,300
        # leading zeros are still a number (it gets as far as the configuration)
        (["-X", "-U", "0" * 5000 + "7", "-C", "/nonexistent/imapd.conf"], 78, b"cannot read"),
        (["extra"], 64, b"pop3d: unexpected argument 'extra'"),
        (["-k", "-s", "-X"], 64, b"pop3d: -k (KPOP) and -s (TLS) cannot be combined"),
        (["-H", "-X"], 64, b"pop3d: -H (PROXY protocol) needs a listening socket, not -X"),
        (["-X", "-C", "/nonexistent/imapd.conf"], 78, b"cannot read /nonexistent/imapd.conf"),
    ],
)
def test_bad_command_lines(args: list[str], code: int, message: bytes) -> None:
    result = run(*args)
    assert result.returncode == code
    assert message in result.stderr
    assert b"Traceback" not in result.stderr
    assert result.stdout == b""


def test_bad_config_value_is_exit_78_with_file_and_line(lab: Lab) -> None:
    lab.config.write_text(lab.config.read_text() + "poptimeout: forever\n")
    result = run("-X", "-C", str(lab.config))
    assert result.returncode == 78
    assert f"{lab.config}:".encode() in result.stderr and b"poptimeout" in result.stderr


def test_group_readable_credentials_refuse_to_start(lab: Lab) -> None:
    lab.credentials.chmod(0o644)
    result = run("-X", "-C", str(lab.config))
    assert result.returncode == 78
    assert b"mode 0644" in result.stderr


def test_implicit_tls_without_certificate_is_a_config_error(lab: Lab) -> None:
    result = run("-X", "-s", "-C", str(lab.config))
    assert result.returncode == 78
    assert b"TLS needs tls_server_cert and tls_server_key" in result.stderr


def test_without_a_socket_or_x_it_explains(lab: Lab) -> None:
    result = run("-C", str(lab.config))
    assert result.returncode == 64
    assert b"no listening socket" in result.stderr


def test_one_session_on_stdio_then_exit(lab: Lab) -> None:
    result = run("-X", "-C", str(lab.config), stdin=b"USER bob\r\nPASS builder\r\nSTAT\r\nQUIT\r\n")
    assert result.returncode == 0
    assert result.stdout.splitlines()[-2:] == [b"+OK 3 6000", b"+OK Logging out"]


def test_debug_command_runs_with_program_pid_and_service(lab: Lab, tmp_path: Path) -> None:
    out = tmp_path / "debug.txt"
    lab.config.write_text(lab.config.read_text() + f"debug_command: echo %s %d %s > {out}\n")
    result = run("-D", "-X", "-C", str(lab.config), stdin=b"QUIT\r\n")
    assert result.returncode == 0
    words = out.read_text().split()
    assert words[1].isdigit() and words[2] == "pop3"


def test_debug_command_is_filled_in_as_snprintf_does(lab: Lab, tmp_path: Path) -> None:
    """Found probing: %% stayed %% and %%s had a value put in it; Cyrus's snprintf makes
    %% a % and fills conversions with their flags, width and precision."""
    out = tmp_path / "debug.txt"
    lab.configure(f"debug_command: echo '%%s|%.3s|%05d|%-6s|100%%' > {out}\n")
    result = run("-D", "-X", "-C", str(lab.config), stdin=b"QUIT\r\n")
    assert result.returncode == 0, result.stderr
    first, program, pid, service, last = out.read_text().rstrip("\n").split("|")
    assert (first, service, last) == ("%s", "pop3  ", "100%")
    assert len(program) == 3
    assert pid.isdigit() and len(pid) >= 5


def test_a_debug_command_longer_than_cyrus_would_run_is_not_run(lab: Lab, tmp_path: Path) -> None:
    """Cyrus's snprintf cuts it at 1,023 octets and runs what is left, which could be
    anything; pop3d says so and runs nothing."""
    out = tmp_path / "debug.txt"
    lab.configure(f"debug_command: echo {'x' * 1100} > {out}\n")
    result = run("-D", "-X", "-C", str(lab.config), stdin=b"QUIT\r\n")
    assert result.returncode == 0, result.stderr
    assert b"debug_command filled in is longer than Cyrus's 1023 octets: not run" in result.stderr
    assert not out.exists()


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's is reaped by whoever adopted it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigterm_during_debug_command_ends_what_it_started(lab: Lab, tmp_path: Path) -> None:
    """Found probing: pop3d stopped while its debug_command ran killed only the shell; a
    command it started (here a `sleep`) went on orphaned, holding pop3d's standard input
    and output (under inetd, the client's connection). The whole group ends with pop3d."""
    started = tmp_path / "sleep.pid"
    lab.config.write_text(
        lab.config.read_text() + f"debug_command: sleep 25 & echo $! > {started}; wait\n"
    )
    process = subprocess.Popen(
        [*POP3D, "-D", "-X", "-C", str(lab.config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    sleeper = 0
    try:
        deadline = time.monotonic() + 20
        while not (started.exists() and started.read_text().strip()):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        sleeper = int(started.read_text())
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=15)
        assert process.returncode == 0, err
        assert not _running(sleeper), "the debug command's sleep outlived pop3d"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if sleeper and _running(sleeper):
            os.kill(sleeper, signal.SIGKILL)


def test_idle_timeout_closes_without_a_reply(lab: Lab) -> None:
    """RFC 1939 §3: the autologout timer ends the session without UPDATE and silently."""
    lab.config.write_text(lab.config.read_text() + "poptimeout: 1s\n")
    process = subprocess.Popen(
        [*POP3D, "-X", "-C", str(lab.config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    process.stdin.write(b"USER bob\r\nPASS builder\r\nDELE 1\r\n")
    process.stdin.flush()  # and keep stdin open: the client is idle, not gone
    try:
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert process.stdout is not None and process.stderr is not None
    out, err = process.stdout.read(), process.stderr.read()
    process.stdin.close()
    process.stdout.close()
    process.stderr.close()
    assert out.splitlines()[-1] == b"+OK Message 1 deleted"
    assert b"ended: idle timeout" in err
    assert len(lab.messages("bob")) == 3


def test_a_stalled_pipe_is_timed_out(lab: Lab) -> None:
    """-X behind a pipe whose reader stops taking our output (a wrapper whose client
    stopped reading): after poptimeout the session ends as on a socket, RETR cut and the
    maildrop's lock freed, instead of waiting on the pipe for ever."""
    lab.config.write_text(lab.config.read_text() + "poptimeout: 1s\n")
    big = lab.maildir("bob") / "new" / "1800000000.M1P1.big"
    big.write_bytes((b"x" * 99 + b"\n") * 40_000)  # 4 MB: far more than a pipe holds
    process = subprocess.Popen(
        [*POP3D, "-X", "-C", str(lab.config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    assert process.stderr is not None
    process.stdin.write(b"USER bob\r\nPASS builder\r\nDELE 1\r\nRETR 4\r\nQUIT\r\n")
    process.stdin.flush()  # and read nothing, keeping stdout open
    try:
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
    err = process.stderr.read()
    out = process.stdout.read()
    for stream in (process.stdin, process.stdout, process.stderr):
        stream.close()
    assert b"ended: the client stopped reading" in err
    assert not out.endswith(b"\r\n.\r\n")  # RETR cut: the client can tell
    assert len(lab.messages("bob")) == 4  # QUIT never came to UPDATE: DELE undone


def test_x_on_a_socket_serves_tls_too(tls_lab: Lab) -> None:
    """inetd / systemd Accept=yes hand pop3d -X a connected socket: STLS works there."""
    import socket
    import ssl

    assert tls_lab.tls is not None
    ours, theirs = socket.socketpair()
    process = subprocess.Popen(
        [*POP3D, "-X", "-C", str(tls_lab.config)],
        stdin=theirs,
        stdout=theirs,
        stderr=subprocess.PIPE,
    )
    theirs.close()
    try:
        ours.settimeout(10)
        reader = ours.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        ours.sendall(b"STLS\r\n")
        assert reader.readline() == b"+OK Begin TLS negotiation now\r\n"
        reader.close()
        context = ssl.create_default_context(cafile=str(tls_lab.tls.ca))
        with context.wrap_socket(ours, server_hostname="localhost") as secure:
            secure.sendall(b"USER bob\r\nPASS builder\r\nSTAT\r\nQUIT\r\n")
            data = b""
            while chunk := secure.recv(4096):
                data += chunk
        assert data.endswith(b"+OK 3 6000\r\n+OK Logging out\r\n"), data
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        assert process.stderr is not None
        process.stderr.close()


def test_a_closed_standard_input_is_the_end_of_input(lab: Lab) -> None:
    """Found probing: `pop3d -X <&-` opened the credential file as descriptor 0 and read
    it as the client's commands (its bytes counted in bytes_in, two -ERR answers)."""
    done = subprocess.run(
        [*POP3D, "-X", "-C", str(lab.config)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        preexec_fn=lambda: os.close(0),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"+OK") and b"-ERR" not in done.stdout, done.stdout
    assert b"bytes_in=<0>" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("passed", "count", "message"),
    [
        ("file", 1, b"pop3d: systemd passed fd 3, which is not a stream socket"),
        ("udp", 1, b"pop3d: systemd passed fd 3, which is not a stream socket"),
        ("tcp", 2, b"pop3d: LISTEN_FDS=2, but fd 4 is not open"),
        # Accept=yes without -X: a traceback at the first connection (found probing)
        ("connection", 1, b"fd 3, which is a stream socket that is not listening"),
    ],
)
def test_socket_activation_with_what_is_not_a_listening_socket(
    lab: Lab, passed: str, count: int, message: bytes
) -> None:
    """fd 3 a file or a datagram socket, or LISTEN_FDS counting one descriptor too many:
    one line and exit 64, not a traceback."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    if passed == "file":
        handed: socket.socket | None = None
        fd = os.open(lab.config, os.O_RDONLY)
    elif passed == "connection":
        handed, _ = listener.accept()
        fd = handed.fileno()
    else:
        kind = socket.SOCK_DGRAM if passed == "udp" else socket.SOCK_STREAM
        handed = socket.socket(socket.AF_INET, kind)
        handed.bind(("127.0.0.1", free_port()))
        if passed == "tcp":
            handed.listen()
        fd = handed.fileno()
    try:
        # LISTEN_PID must be pop3d's own pid: the shell's, which exec keeps
        script = f'export LISTEN_PID=$$ LISTEN_FDS={count}; exec "$@" 3<&{fd}'
        result = subprocess.run(
            ["bash", "-c", script, "bash", *POP3D, "-C", str(lab.config)],
            pass_fds=(fd,),
            capture_output=True,
            timeout=60,
        )
    finally:
        if handed is None:
            os.close(fd)
        else:
            handed.close()
        client.close()
        listener.close()
    assert result.returncode == 64, result.stderr
    assert message in result.stderr
    assert b"Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("udp", b"pop3d: standard input is a socket that is not a stream"),
        ("listening", b"pop3d: standard input is a listening socket: use socket activation"),
    ],
)
def test_x_on_what_is_not_a_connection(lab: Lab, kind: str, message: bytes) -> None:
    """Found probing: a datagram socket on standard input gave a traceback (exit 70); a
    listening socket took the greeting, and pop3d exited 0 having served nobody."""
    if kind == "udp":
        stdin = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stdin.bind(("127.0.0.1", 0))
    else:
        stdin = socket.create_server(("127.0.0.1", 0))
    with stdin:
        result = subprocess.run(
            [*POP3D, "-X", "-C", str(lab.config)],
            stdin=stdin.fileno(),
            capture_output=True,
            timeout=60,
        )
    assert result.returncode == 64, result.stderr
    assert message in result.stderr, result.stderr
    assert b"Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", b"pop3d: POP3D_LISTEN_FDS=0: fd 0 is not a stream socket"),
        ("99", b"pop3d: POP3D_LISTEN_FDS=99: fd 99 is not open"),
    ],
)
def test_worker_variable_naming_no_listening_socket(lab: Lab, value: str, message: bytes) -> None:
    """POP3D_LISTEN_FDS is pop3d-master's, for its workers; set by hand it gave a traceback
    or "cannot write its output" (found probing)."""
    result = subprocess.run(
        [*POP3D, "-C", str(lab.config)],
        env={**os.environ, "POP3D_LISTEN_FDS": value},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 64, result.stderr
    assert message in result.stderr, result.stderr


def _activated(name: str) -> tuple[socket.socket, list[str]]:
    """A listening socket on loopback and the command prefix that hands it to a program as
    systemd's socket activation does (fd 3, named ``name``); run it with
    ``pass_fds=(sock.fileno(),)`` and close the socket once the program has it."""
    handed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    handed.bind(("127.0.0.1", 0))
    handed.listen()
    script = (
        f'export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES={name}; exec "$@" 3<&{handed.fileno()}'
    )
    return handed, ["bash", "-c", script, "bash"]


def test_kpop_on_a_socket_named_pop3s_is_refused(lab: Lab) -> None:
    """Found probing: socket activation with a pop3 and a pop3s socket and -k ran KPOP
    inside TLS, the handshake waiting for a client that speaks Kerberos in clear. Refused
    as -k with -s is, before the configuration is read."""
    handed, activation = _activated("pop3s")
    try:
        result = subprocess.run(
            [*activation, *POP3D, "-k", "-C", str(lab.config)],
            pass_fds=(handed.fileno(),),
            capture_output=True,
            timeout=60,
        )
    finally:
        handed.close()
    assert result.returncode == 64, result.stderr
    assert b"pop3d: -k (KPOP) with a socket named pop3s" in result.stderr, result.stderr


def test_a_socket_named_after_its_unit_is_the_default_service(lab: Lab) -> None:
    """A socket unit without FileDescriptorName= gives its socket the unit's name,
    "pop3d.socket" (systemd.socket(5)): the default service, as an unnamed socket is. For
    a day it was refused as a service name with a '.', exit 78 (found probing)."""
    handed, activation = _activated("pop3d.socket")
    port = handed.getsockname()[1]
    served = subprocess.Popen(
        [*activation, *POP3D, "-C", str(lab.config)],
        pass_fds=(handed.fileno(),),
        stderr=subprocess.PIPE,
    )
    handed.close()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            assert sock.makefile("rb").readline().startswith(b"+OK"), served.poll()
    finally:
        served.terminate()
        _out, errors = served.communicate(timeout=30)
    assert b"bad character" not in errors, errors


@pytest.mark.parametrize("name", ["pop3_s", "pop3-s"])
def test_a_service_name_cyrus_conf_could_not_hold_is_refused(lab: Lab, name: str) -> None:
    """Found probing: a service named pop3_s was served though its own pop3_s_ keys were
    read as some other service's options; cyrus.conf now refuses the name, and so does
    pop3d when it is given one without the master: CYRUS_SERVICE, or a systemd socket's
    name (which was served as the default service, with that service's settings)."""
    with lab.config.open("a") as config:
        config.write(f"{name}_tls_required: yes\n")
    given = subprocess.run(
        [*POP3D, "-X", "-C", str(lab.config)],
        input=b"QUIT\r\n",
        env={**os.environ, "CYRUS_SERVICE": name},
        capture_output=True,
        timeout=60,
    )
    assert given.returncode == 78, given.stderr
    assert f"pop3d: CYRUS_SERVICE: bad character {name[4]!r} in the name".encode() in given.stderr
    assert given.stdout == b""
    handed, activation = _activated(name)
    try:
        activated = subprocess.run(
            [*activation, *POP3D, "-C", str(lab.config)],
            pass_fds=(handed.fileno(),),
            capture_output=True,
            timeout=60,
        )
    finally:
        handed.close()
    assert activated.returncode == 78, activated.stderr
    assert b"pop3d: systemd socket fd 3 (FileDescriptorName=): bad character" in activated.stderr


def test_only_s_makes_pop3s_under_the_master_and_with_x(lab: Lab) -> None:
    """CYRUS_SERVICE pop3s without -s is plain POP3, as in Cyrus and as the master's
    checks assume: the workers of a "pop3s" entry without -s turned TLS on by its name,
    and without a certificate they exited 78 over and over, check-config and the master
    having said the configuration was good (found probing)."""
    result = subprocess.run(
        [*POP3D, "-X", "-C", str(lab.config)],
        input=b"QUIT\r\n",
        env={**os.environ, "CYRUS_SERVICE": "pop3s"},
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"+OK"), result.stdout


def test_octets_without_a_line_end_meet_the_bad_command_limit(lab: Lab) -> None:
    """Found probing: `pop3d -X </dev/zero` read for as long as the input lasted, a core
    busy, no answer (an overlong line was dropped to its end, counted once). Each 8,192
    octets of a line now count as an overlong line, as Cyrus runs each 8,191 as a command:
    the bad-command limit ends the session while the stream goes on. The line is answered
    once (one command, one answer), then the limit's answer."""
    session = subprocess.Popen(
        lab.pop3d_x(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert session.stdin is not None and session.stdout is not None
    try:
        with pytest.raises(BrokenPipeError):  # it closes its end while we still write
            for _chunk in range(1000):  # 8 MB at most, never a line end
                session.stdin.write(b"\0" * 8192)
                session.stdin.flush()
        assert session.wait(timeout=30) == 0
        answers = session.stdout.read().split(b"\r\n")
        assert answers[0].startswith(b"+OK")
        assert answers[1:] == [
            b"-ERR Line too long (limit 8192 octets)",
            b"-ERR Too many bad commands, closing connection",
            b"",
        ]
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
