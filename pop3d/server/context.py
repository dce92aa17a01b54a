"""One service's runtime: the resolved settings, the authenticator, the store, the TLS
context and the thread pool, built once per worker from imapd.conf and the command line."""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pop3d.auth import saslauthd, server_secret
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
from pop3d.kpop import service as kpop_service
from pop3d.kpop.mit import Acceptor
from pop3d.protocol.settings import ConnectionInfo, SessionSettings
from pop3d.sasl import keytab, registry
from pop3d.security.policy import Policy
from pop3d.security.value import TLSInfo
from pop3d.server import metrics
from pop3d.server.audit import AuditTrail
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


def password_checker(config: Config, service: str | None = None) -> PasswordChecker | None:
    """None for auxprop (the credential file); a saslauthd client for saslauthd."""
    method = config.string("sasl_pwcheck_method", service) or "auxprop"
    if method == "auxprop":
        return None
    if method == "saslauthd":
        path = config.string("sasl_saslauthd_path", service) or saslauthd.DEFAULT_PATH
        if not os.path.exists(path):
            log.warning("sasl_saslauthd_path %s does not exist (yet): logins will fail", path)
        if needed_schemes(config):
            log.warning(
                "sasl_pwcheck_method: saslauthd checks USER/PASS, PLAIN and LOGIN; APOP and "
                "the other mechanisms still use the credential file (%s)",
                ", ".join(sorted(needed_schemes(config))),
            )
        return saslauthd.SaslauthdClient(path)
    raise ConfigError(
        [
            config.problem_with(
                "sasl_pwcheck_method",
                service,
                f"sasl_pwcheck_method {method!r}: "
                "pop3d checks passwords with auxprop or saslauthd (one of them)",
            )
        ]
    )


class ServiceContext:
    def __init__(self, config: Config, options: RuntimeOptions) -> None:
        service = options.service
        self.config = config
        self.options = options
        self.servername = config.string("servername", service) or socket.gethostname()
        self.session_prefix = config.string("syslog_prefix", service) or self.servername
        self.store = store_from_config(config, service)
        credentials = CredentialFile(credentials_path(config, service))
        try:
            credentials.check()
        except (CredentialFileError, OSError) as exc:
            raise ConfigError([Problem(config.path, 0, str(exc))]) from None
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
            password_checker=password_checker(config, service),
        )
        self.token_validator = token_validator(config, service)
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
        # The audit trail (server/audit.py) and the metrics (off unless the master asked).
        jsonl = config.string("audit_jsonl_file", service)
        try:
            self.audit = AuditTrail(service, jsonl)
        except OSError as exc:
            raise ConfigError(
                [config.problem_with("audit_jsonl_file", service, f"{jsonl}: {exc}")]
            ) from None
        self.metrics = metrics.for_service(service)
        # Blocking steps run off the event loop. Argon2 gets one thread of its own: it is
        # CPU-bound (a second thread per worker buys nothing on a core the other workers
        # share), and one thread bounds the hash memory of a worker to one hash (libsodium
        # maps and unmaps its own; for hashes that go through cryptography, glibc keeps
        # the buffer in the thread's arena). File I/O (listing, fsync) gets a few
        # threads, so a slow disk does not queue behind a hash.
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pop3d-io")
        self.hash_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pop3d-hash")
        self._counter = itertools.count(1)

    def connection_info(
        self,
        tls_started: TLSInfo | None = None,
        kpop_principal: str | None = None,
        kpop_user: str | None = None,
    ) -> ConnectionInfo:
        now = int(time.time())
        session_id = (
            f"{self.session_prefix}-{now}-{os.getpid()}-{next(self._counter)}-"
            f"{secrets.randbits(64)}"
        )
        return ConnectionInfo(
            session_id=session_id,
            challenge_token=f"{secrets.randbits(64)}.{now}",
            external_ssf=self.options.external_ssf,
            tls=tls_started,
            kpop_principal=kpop_principal,
            kpop_user=kpop_user,
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
        self.audit.close()
