"""One service's runtime: the resolved settings, the authenticator, the store, the TLS
context and the thread pool, built once per worker from imapd.conf and the command line."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import socket
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pop3d.auth import kerberos5, saslauthd, server_secret
from pop3d.auth.authenticator import Authenticator, PasswordChecker
from pop3d.auth.credentials import CredentialFile, CredentialFileError
from pop3d.auth.from_config import (
    argon2_parameters,
    credentials_path,
    identity_rules,
    needed_schemes,
    secret_path,
)
from pop3d.auth.tokens import token_validator
from pop3d.config.imapd import Config, ConfigError, Problem
from pop3d.kerberos.mit import Acceptor
from pop3d.kpop import service as kpop_service
from pop3d.protocol.settings import ConnectionInfo, SessionSettings
from pop3d.sasl import keytab, registry
from pop3d.security.policy import Policy
from pop3d.security.value import TLSInfo
from pop3d.server import metrics
from pop3d.server.audit import AuditTrail
from pop3d.server.limits import Gate, Limits, LoginCounter
from pop3d.server.telemetry import TelemetrySettings
from pop3d.storage.base import StorageError
from pop3d.storage.locks import prepare_table
from pop3d.storage.maildir import store_from_config
from pop3d.transport import tls

log = logging.getLogger("pop3d")


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """The command line of one pop3d service (Cyrus flags)."""

    service: str = "pop3"
    implicit_tls: bool = False  # -s
    external_ssf: int = 0  # -p
    proxy_protocol: bool = False  # -H
    kpop: bool = False  # -k: the KPOP Kerberos handshake before the greeting
    # -U and -T: worker recycling (server/worker.py). None and 0: off, the defaults, where
    # Cyrus has 250 uses and 60 s (see DESIGN.md, process model, for why).
    max_uses: int | None = None  # -U
    reuse_timeout: int = 0  # -T, seconds


def password_checker(
    config: Config, service: str | None = None, servername: str | None = None
) -> PasswordChecker | None:
    """None for auxprop (the credential file); a saslauthd client for saslauthd; a KDC
    checker for kerberos5, whose keytab is checked now (exit 78 with file:line if it is
    missing, readable by others or without pop/<servername>)."""
    method = config.string("sasl_pwcheck_method", service) or "auxprop"
    if method == "auxprop":
        return None
    if method == "kerberos5":
        host = servername or config.string("servername", service) or socket.gethostname()
        path = keytab.acceptor_keytab(config, host, service, required_by="sasl_pwcheck_method")
        assert path is not None
        _warn_credential_file_still_used(config, method)
        return kerberos5.Kerberos5Checker(
            host,
            path,
            login_realms=tuple((config.string("loginrealms", service) or "").split()),
            timeout=float(config.integer("kerberos5_timeout", service)),
        )
    if method == "saslauthd":
        path = config.string("sasl_saslauthd_path", service) or saslauthd.DEFAULT_PATH
        if not os.path.exists(path):
            log.warning("sasl_saslauthd_path %s does not exist (yet): logins will fail", path)
        _warn_credential_file_still_used(config, method)
        return saslauthd.SaslauthdClient(path)
    raise ConfigError(
        [
            config.problem_with(
                "sasl_pwcheck_method",
                service,
                f"sasl_pwcheck_method {method!r}: "
                "pop3d checks passwords with auxprop, saslauthd or kerberos5 (one of them)",
            )
        ]
    )


def _warn_credential_file_still_used(config: Config, method: str) -> None:
    if needed_schemes(config):
        log.warning(
            "sasl_pwcheck_method: %s checks USER/PASS, PLAIN and LOGIN; APOP and "
            "the other mechanisms still use the credential file (%s)",
            method,
            ", ".join(sorted(needed_schemes(config))),
        )


_SETTLED_NS = 2_000_000_000


_RESPONSE_MAX = 512  # RFC 2449 §4, CRLF included
_SHUTDOWN_PREFIX = b"-ERR [SYS/TEMP] "


def _first_octets(path: str) -> bytes:
    """The first 512 octets of a shutdown file. Opened non-blocking and read only if a
    regular file, as config files are (config/imapd.py): a FIFO of that name blocked the
    worker in open(), every session of the service frozen with it (found probing), and
    a read of /dev/zero or a FIFO with a writer would not end either."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "not a regular file")
        return os.read(fd, 512)
    finally:
        os.close(fd)


def _no_entry(folder: str, name: str) -> bool:
    """Nothing at all named ``name`` in ``folder`` (a link, dangling or not, is something)."""
    try:
        os.lstat(os.path.join(folder, name))
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


def peer_host(peer: str | None) -> str | None:
    """The address part of a channel's ``peer`` ("192.0.2.1:110", "[2001:db8::1]:110");
    None for a peer without one (stdio)."""
    if not peer or peer in ("?", "[stdio]"):
        return None
    if peer == "[unix socket]":
        return "unix"
    if peer.startswith("["):
        host, _, rest = peer[1:].partition("]")
        return host if rest.startswith(":") else peer
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer


class ServiceContext:
    def __init__(self, config: Config, options: RuntimeOptions) -> None:
        service = options.service
        self.config = config
        self.options = options
        self.servername = config.string("servername", service) or socket.gethostname()
        self.session_prefix = config.string("syslog_prefix", service) or self.servername
        self.store = store_from_config(config, service)
        if self.store.lock_table is not None:
            try:
                prepare_table(self.store.lock_table)
            except StorageError as exc:
                raise ConfigError([Problem(config.path, 0, f"maildrop_lock: {exc}")]) from None
        credentials = CredentialFile(credentials_path(config, service))
        try:
            credentials.check()
        except (CredentialFileError, OSError) as exc:
            problem = config.problem_with("credentials_file", service, str(exc))
            raise ConfigError([problem]) from None
        try:
            decoy_key = server_secret.load_or_create(secret_path(config, service))
        except server_secret.ServerSecretError as exc:
            raise ConfigError([Problem(config.path, 0, str(exc))]) from None
        self.authenticator = Authenticator(
            credentials,
            argon2_parameters(config, service),
            cache_ttl=config.integer("auth_cache_ttl", service),
            decoy_key=decoy_key,
            scram_iterations=config.integer("scram_iterations", service),
            password_checker=password_checker(config, service, self.servername),
        )
        self.token_validator = token_validator(config, service)
        # maxlogins_per_host/_per_user; the driver says where they are counted (the
        # master's table, or this process's): login_gate, set by pop3d.cli.pop3d.
        self.limits = Limits(
            config.integer("maxlogins_per_host", service),
            config.integer("maxlogins_per_user", service),
        )
        self.login_gate: Gate | None = None
        self.configdirectory = config.string("configdirectory", service)
        # The checked acceptor keytab for the Kerberos mechanisms (Context.keytab), None
        # when Kerberos is off; a broken one stops the master here with file:line.
        self.keytab = keytab.acceptor_keytab(config, self.servername, service)
        self.tls: tls.ServerTLS | None = None
        starttls = False
        if options.implicit_tls or tls.certificate_configured(config, service):
            self.tls = tls.server_tls(config, service)
            starttls = config.switch("allowstarttls", service) and not options.implicit_tls
        self.settings = SessionSettings(
            servername=self.servername,
            serverinfo=config.string("serverinfo", service) or "on",
            allow_apop=config.switch("allowapop", service),
            policy=Policy(
                allow_plaintext=config.switch("allowplaintext", service),
                tls_required=config.switch("tls_required", service),
                starttls_offered=starttls,
                minimum_ssf=config.integer("sasl_minimum_layer", service),
                maximum_ssf=config.integer("sasl_maximum_layer", service),
            ),
            expire_seconds=config.integer("popexpiretime", service),
            min_poll_seconds=config.integer("popminpoll", service),
            poll_padding=config.integer("poppollpadding", service),
            line_limit=config.integer("pop_line_max", service),
            bad_command_limit=config.integer("pop_bad_commands_max", service),
            failed_login_pause=config.integer("failedloginpause", service),
            plaintext_login_pause=config.integer("plaintextloginpause", service),
            readonly=config.switch("readonly", service),
            mark_seen=config.switch("popuseimapflags", service),
            keytab=self.keytab,
            require_channel_binding=config.switch("sasl_gssapi_channel_binding", service),
            sasl_mechanisms=registry.enabled(
                config.string("sasl_mech_list", service),
                token_validation=self.token_validator is not None,
                kerberos=self.keytab is not None,
            ),
            oauth_scope=config.string("oauth_scope", service) or "",
            sasl_line_limit=config.integer("sasl_line_max", service),
            proxy_authorizers=frozenset(
                (config.string("admins", service) or "").split()
                + (config.string("proxyservers", service) or "").split()
            ),
            identity=identity_rules(config, service),
            limit_logins=self.limits.active,
            server_aliases=tuple((config.string("servername_aliases", service) or "").split()),
        )
        self.idle_timeout = float(config.integer("poptimeout", service))
        self.tls_handshake_timeout = float(config.integer("tls_handshake_timeout", service))
        # -k: the acceptor, checked now (library, keytab, a pop/<host> key), never at the
        # first login; the handshake's time limit runs from connect to the greeting.
        self.kpop: Acceptor | None = None
        if options.kpop:
            self.kpop = kpop_service.acceptor(config, service)
            log.info(
                "KPOP: tickets for %s accepted with %s",
                ", ".join(f"pop/{host}" for host in kpop_service.hosts(self.kpop)),
                self.kpop.keytab,
            )
        self.kpop_timeout = float(config.integer("kpop_handshake_timeout", service))
        # Per-user telemetry logs under <configdirectory>/log/ (server/telemetry.py).
        configdirectory = config.string("configdirectory", service)
        self.telemetry: TelemetrySettings | None = None
        if configdirectory:
            self.telemetry = TelemetrySettings(
                directory=Path(configdirectory) / "log",
                service=service,
                by_session_id=config.switch("telemetry_bysessionid", service),
                prelogin=config.switch("telemetry_prelogin", service),
            )
        # The audit trail (server/audit.py) and the metrics (off unless the master asked).
        jsonl = config.string("audit_jsonl_file", service)
        try:
            self.audit = AuditTrail(service, jsonl)
        except OSError as exc:
            why = f"{jsonl}: {exc.strerror or exc}"
            raise ConfigError([config.problem_with("audit_jsonl_file", service, why)]) from None
        self.metrics = metrics.for_service(service)
        # Blocking steps run off the event loop. Argon2 gets one thread of its own: it is
        # CPU-bound (a second thread per worker buys nothing on a core the other workers
        # share), and one thread bounds the hash memory of a worker to one hash (libsodium
        # maps and unmaps its own; for hashes that go through cryptography, glibc keeps
        # the buffer in the thread's arena). File I/O (listing, fsync) gets a few
        # threads, so a slow disk does not queue behind a hash.
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pop3d-io")
        # With an external password checker (saslauthd, kerberos5) no password is hashed
        # here: the "hash" thread waits on a daemon or a KDC instead, and one slow answer
        # must not queue every other password login of the worker behind it.
        external = self.authenticator.has_password_checker
        # Checks handed to hash_executor and not yet answered, and how many may be
        # (password_checks_waiting): 128 is about 3 s of Argon2 at the default cost here
        # (20-25 ms a hash), far above what the bench's 100 clients of uncached logins
        # keep waiting; past it a login gets no verdict at once (Connection._check).
        self.hashes_waiting = 0
        self.hashes_waiting_max = config.integer("password_checks_waiting", service)
        self.hash_executor = ThreadPoolExecutor(
            max_workers=8 if external else 1,
            thread_name_prefix="pop3d-pwcheck" if external else "pop3d-hash",
        )
        self._counter = itertools.count(1)
        self._pid = os.getpid()  # a worker never forks
        # shutdown_message(): msg/ as it was when it last held no shutdown file, and the
        # answer already found in this turn of the event loop
        self._no_shutdown_file: tuple[int, int, int, int] | None = None
        self._turn_answer: bytes | None = None
        self._turn_looked = False

    def count_logins(self, counter: LoginCounter) -> None:
        """Count this service's logins in ``counter`` (when maxlogins_* are set)."""
        if self.limits.active:
            self.login_gate = Gate(counter, self.options.service, self.limits)

    def shutdown_message(self) -> bytes | None:
        """Cyrus's shutdown file: ``<configdirectory>/msg/shutdown.<service>`` or
        ``msg/shutdown``; while one exists, new connections get ``-ERR [SYS/TEMP]`` and its
        first line (leading ``[`` removed, as Cyrus does, so it cannot forge a response
        code), then are closed. None when there is none."""
        # Cyrus looks before reading each command. Here the checks made in one turn of the
        # event loop share one look, taken in that turn: a file created before the turn
        # began is always seen (the look comes after it), one created while the turn runs
        # is seen from the next turn, as if those sessions had begun to wait a moment
        # earlier. A busy worker makes many checks per turn (each answer, each NOOP of an
        # idle crowd), and each was a stat, most often of a msg/ that does not exist (an
        # exception).
        if self._turn_looked:
            return self._turn_answer
        answer = self._look_for_shutdown_file()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not called from an event loop: nothing to share with
            return answer
        self._turn_answer, self._turn_looked = answer, True
        # Runs before the callbacks of the next turn's events: their checks look again.
        loop.call_soon(self._turn_over)
        return answer

    def _turn_over(self) -> None:
        self._turn_answer, self._turn_looked = None, False

    def _look_for_shutdown_file(self) -> bytes | None:
        if not self.configdirectory:
            return None
        folder = os.path.join(self.configdirectory, "msg")
        names = (f"shutdown.{self.options.service}", "shutdown")
        try:
            info = os.stat(folder)
        except FileNotFoundError:
            return None  # no msg/: no file in it
        except OSError:
            info = None  # let the opens below say what is wrong
        if info is not None:
            # Checked once per state of msg/: creating, removing or renaming a file in it
            # changes its mtime and ctime. Only a folder with no entry of either name (not
            # even a dangling link) is remembered, and only once it has not changed for a
            # few seconds, so a change within the file system's timestamp granularity of
            # the last check is not missed.
            state = (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_ctime_ns)
            if state == self._no_shutdown_file:
                return None
            if time.time_ns() - max(info.st_mtime_ns, info.st_ctime_ns) > _SETTLED_NS and all(
                _no_entry(folder, name) for name in names
            ):
                self._no_shutdown_file = state
                return None
        for name in names:
            try:
                first = _first_octets(os.path.join(folder, name))
            except FileNotFoundError:
                continue
            except OSError as exc:  # there, but unreadable: still a shutdown
                log.warning("shutdown file %s/%s: %s", folder, name, exc.strerror or exc)
                first = b""
            text = first.split(b"\n")[0].rstrip(b"\r").lstrip(b"[")
            text = bytes(c for c in text if 32 <= c < 127 or c >= 128)
            # RFC 2449 §4: a response line is at most 512 octets, CRLF included; a long
            # first line made 530 (found probing). Cut where a UTF-8 character begins.
            room = _RESPONSE_MAX - len(_SHUTDOWN_PREFIX) - 2
            if len(text) > room:
                cut = room
                while cut > 0 and 0x80 <= text[cut] < 0xC0:  # a continuation octet
                    cut -= 1
                text = text[:cut]
            return _SHUTDOWN_PREFIX + (text or b"Server is shutting down") + b"\r\n"
        return None

    def connection_info(
        self,
        tls_started: TLSInfo | None = None,
        kpop_principal: str | None = None,
        kpop_user: str | None = None,
        peer: str | None = None,
        local_address: str | None = None,
    ) -> ConnectionInfo:
        now = int(time.time())
        # Both random parts from one read of the system's CSPRNG (secrets.randbits makes
        # one getrandom call each).
        random = secrets.token_bytes(16)
        session_id = (
            f"{self.session_prefix}-{now}-{self._pid}-{next(self._counter)}-"
            f"{int.from_bytes(random[:8])}"
        )
        return ConnectionInfo(
            session_id=session_id,
            challenge_token=f"{int.from_bytes(random[8:])}.{now}",
            external_ssf=self.options.external_ssf,
            tls=tls_started,
            kpop_principal=kpop_principal,
            kpop_user=kpop_user,
            peer_host=peer_host(peer),
            local_address=local_address,
        )

    def reload_tls(self) -> None:
        """SIGHUP: re-read certificate and key; sessions already running keep theirs."""
        if self.tls is None:
            return
        try:
            self.tls = tls.server_tls(self.config, self.options.service)
        except ConfigError as exc:
            log.error("TLS reload failed, keeping the old certificate: %s", exc)
            return
        log.info("TLS certificate reloaded")

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.hash_executor.shutdown(wait=False, cancel_futures=True)
        self.authenticator.close()
        self.audit.close()
