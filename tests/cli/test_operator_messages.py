"""What an operator sees (issue 12, finding 7): each configuration problem once and at its
own line, TLS over inetd-style pipes (``pop3d -X -s``) that works and fails loudly."""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import sys
import time

from tests.support.lab import Lab, start_server

POP3D = [sys.executable, "-m", "pop3d"]


def test_a_bad_sasl_pwcheck_method_names_its_line_once(lab: Lab) -> None:
    text = lab.config.read_text()
    lab.config.write_text(text + "sasl_pwcheck_method: ldapdb\n")
    line = len(text.splitlines()) + 1
    result = subprocess.run(
        [*POP3D, "-X", "-C", str(lab.config)], capture_output=True, timeout=60, input=b""
    )
    assert result.returncode == 78
    stderr = result.stderr.decode()
    assert f"{lab.config}:{line}: error: sasl_pwcheck_method 'ldapdb':" in stderr, stderr
    assert stderr.count(str(lab.config)) == 1, stderr  # not "file:0: error: file:6: ..."


def test_an_unknown_option_is_warned_about_once_not_once_per_worker(lab: Lab) -> None:
    lab.config.write_text(lab.config.read_text() + "frobnicate: yes\n")
    server = start_server(lab, {"pop3": "", "pop3b": ""}, prefork=2)
    try:
        time.sleep(1.0)  # the workers have read the configuration by now
    finally:
        server.stop()
    log = server.log_text()
    assert log.count("unknown option 'frobnicate'") == 1, log


def test_chatty_is_documented_as_ignored(lab: Lab) -> None:
    from pop3d.config.options import OPTIONS

    assert "ignored" in OPTIONS["chatty"].doc.lower()
    lab.config.write_text(lab.config.read_text() + "chatty: yes\n")
    result = subprocess.run(
        [*POP3D, "-X", "-C", str(lab.config)], capture_output=True, timeout=60, input=b"QUIT\r\n"
    )
    assert result.returncode == 0
    assert b"chatty is not supported" in result.stderr, result.stderr


def _pump(process: subprocess.Popen[bytes], tls: ssl.SSLObject, outgoing: ssl.MemoryBIO) -> None:
    assert process.stdin is not None
    data = outgoing.read()
    if data:
        process.stdin.write(data)
        process.stdin.flush()


def _feed(process: subprocess.Popen[bytes], incoming: ssl.MemoryBIO) -> None:
    assert process.stdout is not None
    data = os.read(process.stdout.fileno(), 65536)
    assert data, "pop3d closed its output"
    incoming.write(data)


def test_implicit_tls_over_plain_pipes(tls_lab: Lab) -> None:
    """inetd with pipes instead of a socket: the TLS layer runs over the pipes."""
    assert tls_lab.tls is not None
    process = subprocess.Popen(
        tls_lab.pop3d_x("-s"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        context = ssl.create_default_context(cafile=str(tls_lab.tls.ca))
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                _pump(process, tls, outgoing)
                _feed(process, incoming)
        _pump(process, tls, outgoing)

        def line() -> bytes:
            buffer = b""
            while not buffer.endswith(b"\r\n"):
                try:
                    buffer += tls.read(1)
                except ssl.SSLWantReadError:
                    _feed(process, incoming)
            return buffer

        assert line().startswith(b"+OK")
        for command, answer in (
            (b"USER bob", b"+OK"),
            (b"PASS builder", b"+OK"),
            (b"STAT", b"+OK 3 6000"),
            (b"QUIT", b"+OK"),
        ):
            tls.write(command + b"\r\n")
            _pump(process, tls, outgoing)
            assert line().startswith(answer)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_a_failed_handshake_over_pipes_exits_non_zero(tls_lab: Lab) -> None:
    result = subprocess.run(
        tls_lab.pop3d_x("-s"),
        input=b"USER bob\r\nPASS builder\r\n",  # plaintext where a ClientHello belongs
        capture_output=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert b"TLS handshake failed" in result.stderr, result.stderr
    assert b"+OK" not in result.stdout


def test_implicit_tls_on_an_inetd_socket_with_the_client_hello_sent_at_once(
    tls_lab: Lab,
) -> None:
    """inetd (or systemd Accept=yes) hands pop3d -X -s the connected socket; the client
    sends its ClientHello at once, before the interpreter has started. That ClientHello
    was dropped as STLS drops plaintext, and the handshake waited for its timeout: pop3s
    from inetd never worked (found probing)."""
    assert tls_lab.tls is not None
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    context = ssl.create_default_context(cafile=str(tls_lab.tls.ca))
    client.settimeout(20)
    with accepted:
        process = subprocess.Popen(
            tls_lab.pop3d_x("-s"), stdin=accepted, stdout=accepted, stderr=subprocess.PIPE
        )
    try:
        with context.wrap_socket(client, server_hostname="localhost") as tls:
            reader = tls.makefile("rb")
            assert reader.readline().startswith(b"+OK")
            tls.sendall(b"USER bob\r\nPASS builder\r\nSTAT\r\nQUIT\r\n")
            answers = [reader.readline() for _ in range(4)]
            assert answers[2] == b"+OK 3 6000\r\n", answers
            assert answers[3].startswith(b"+OK")
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_a_python_warning_is_one_log_line() -> None:
    """Found probing: a library's warning (cryptography's, for a client certificate's name
    over 64 characters) reached the master's log as Python prints it, two raw lines
    outside the log's format, once per worker."""
    script = (
        "import warnings\n"
        "from pop3d.cli.common import setup_logging\n"
        "setup_logging()\n"
        "warnings.warn('a name\\nwith a line end', UserWarning)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=60, check=True
    )
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} pop3d\[\d+\]: WARNING UserWarning: "
        r"a name\\x0awith a line end \(<string>:4\)",
        lines[0],
    ), lines
