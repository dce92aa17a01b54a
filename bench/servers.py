"""The servers under test, on the same users and the same Maildir messages (Cyrus, for the
gssapi figures: the same messages in its own mailboxes), and the /proc readings (RSS,
PSS, CPU time) of their process trees.

Layout under ``bench/.lab`` (git-ignored)::

    messages/            the 4 KB and 50 MB messages, made once
    cache/               credential files (Argon2id: slow to make; SCRAM keys), keyed by
                         user count and parameters
    tls/                 the run's private CA and server certificate (both servers use it)
    pop3d/               imapd.conf, cyrus.conf, config/pop3d.passwd, spool/<user>/Maildir
    dovecot/             dovecot.conf, users, home/<user>/Maildir, run/, state/, log/
    pkg/                 --cyrus: Debian's cyrus-common and cyrus-pop3d (debs/, unpacked in
                         cyrus/)
    cyrus/               --cyrus: imapd.conf, cyrus.conf, config/, spool/, keytab, krb5.conf

pop3d runs as the lab in tests/support/lab.py does, but with the real default Argon2id
parameters (no argon2_memory / argon2_passes), ``failedloginpause: 0``,
``allowplaintext: yes`` and ``prefork=2``. Dovecot runs from a standalone config built from
../shared/reference/peer-config/dovecot.conf (it never reads /etc/dovecot).

Both start either in clear text only (``tls=None``: the sessions, RETR, idle and SASL
figures) or with TLS (a :class:`TLSFiles`: pop3s on a second port and STLS on the first;
the TLS figures).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# POP3D_BENCH_LAB: another folder (the suite's smoke test runs the bench in a temporary one)
LAB = Path(os.environ.get("POP3D_BENCH_LAB") or BENCH / ".lab")
SMALL_SIZE = 4096
BIG_SIZE = 50 * 1024 * 1024
BIG_USER = "benchbig"
BIG_PASSWORD = "bench-pw-big"
MAIL_UID = 8  # Debian's "mail" user owns Dovecot's mail, as in the reference config
MAIL_GID = 8
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


def user_name(index: int) -> str:
    return f"bench{index}"


def user_password(index: int) -> str:
    return f"bench-pw-{index}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- messages ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    path: Path
    size: int  # octets in the file (LF line ends)
    crlf_size: int  # octets as POP3 counts them (CRLF line ends)

    @property
    def maildir_name_suffix(self) -> str:
        return f",S={self.size},W={self.crlf_size}"


def _make_message(path: Path, size: int, subject: str) -> Message:
    """A text message of exactly ``size`` octets, 76-column lines, no line starting with
    a dot (so no dot-stuffing: the body on the wire is exactly the CRLF size)."""
    header = (
        "From: Bench Sender <sender@bench.test>\n"
        "To: Bench Recipient <rcpt@bench.test>\n"
        f"Subject: {subject}\n"
        "Date: Tue, 14 Nov 2023 22:13:20 +0000\n"
        "Message-ID: <bench-" + subject.replace(" ", "-") + "@bench.test>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=us-ascii\n"
        "\n"
    ).encode()
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    line = (alphabet * 2)[:76] + b"\n"
    body_size = size - len(header)
    full, rest = divmod(body_size, len(line))
    body = line * full
    if rest:
        body += b"x" * (rest - 1) + b"\n" if rest > 1 else b"\n"
    data = header + body
    assert len(data) == size
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.stat().st_size != size:
        path.write_bytes(data)
    return Message(path, size, size + data.count(b"\n"))


def messages() -> tuple[Message, Message]:
    folder = LAB / "messages"
    small = _make_message(folder / "small.eml", SMALL_SIZE, "bench 4 KB")
    big = _make_message(folder / "big.eml", BIG_SIZE, "bench 50 MB")
    return small, big


def _fill_maildir(maildir: Path, message: Message, uid: int | None) -> None:
    if maildir.exists():
        shutil.rmtree(maildir)
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    target = maildir / "new" / f"1700000000.M1P1.bench{message.maildir_name_suffix}"
    shutil.copyfile(message.path, target)
    if uid is not None:
        for path in (maildir.parent, maildir, *maildir.rglob("*")):
            os.chown(path, uid, MAIL_GID)


# --- TLS --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    ca: Path  # what the load generator verifies the servers' certificate with
    cert: Path
    key: Path


def make_tls(folder: Path = LAB / "tls") -> TLSFiles:
    """A private CA and one server certificate (ECDSA P-256, for "localhost" and
    127.0.0.1), made afresh for each run with pop3d's own helper, as tests/support/lab.py
    does. Both servers present the same certificate."""
    from pop3d.transport import selfsigned

    folder.mkdir(parents=True, exist_ok=True)
    ca = selfsigned.make_ca("bench CA")
    ca.write(folder / "ca.pem")
    server = selfsigned.issue(
        ca, "localhost", dns_names=("localhost",), ip_addresses=("127.0.0.1",)
    )
    (folder / "key.pem").unlink(missing_ok=True)  # write() makes it 0600 only if it is new
    server.write(folder / "cert.pem", folder / "key.pem")
    return TLSFiles(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")


# --- process readings ---------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def process_tree(root: int) -> list[int]:
    children = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


@dataclass
class Memory:
    processes: int
    rss_kib: int
    pss_kib: int | None


def tree_memory(root: int) -> Memory:
    rss = 0
    pss: int | None = 0
    count = 0
    for pid in process_tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        count += 1
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            pss = None
            continue
        for line in rollup.splitlines():
            if line.startswith("Pss:") and pss is not None:
                pss += int(line.split()[1])
    return Memory(count, rss, pss)


_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu(root: int) -> float:
    """CPU seconds used by the server so far: every live process of the tree, plus what
    the root has reaped from children that already ended (Dovecot forks per session)."""
    total = 0
    for pid in process_tree(root):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
        if pid == root:
            total += int(fields[13]) + int(fields[14])  # cutime, cstime
    return total / _TICK


def machine_busy() -> float:
    """CPU seconds (all cores) the machine spent not idle, since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / _TICK


# --- servers --------------------------------------------------------------------------


class Server:
    name = "?"
    process: subprocess.Popen[bytes] | None = None
    port = 0  # clear text (and STLS when started with TLS)
    tls_port = 0  # implicit TLS (pop3s), when started with TLS
    tls: TLSFiles | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, tls: TLSFiles | None = None) -> None:
        raise NotImplementedError

    def _wait_ready(self, log: Path, tls: TLSFiles | None = None) -> None:
        """Until the server greets on its port, and over TLS on its pop3s port when it has
        one; a server that exits first fails the run with its log."""
        self._wait_greeting(self.port, log, None)
        if tls is not None:
            context = ssl.create_default_context(cafile=str(tls.ca))
            self._wait_greeting(self.tls_port, log, context)

    def _wait_greeting(self, port: int, log: Path, context: ssl.SSLContext | None) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited {self.process.returncode} at start:\n"
                    + log.read_text(errors="replace")[-3000:]
                )
            with contextlib.ExitStack() as stack:
                stack.enter_context(contextlib.suppress(OSError))
                sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), 1.0))
                if context is not None:
                    sock = stack.enter_context(
                        context.wrap_socket(sock, server_hostname="localhost")
                    )
                sock.settimeout(5.0)
                if sock.recv(64).startswith(b"+OK"):
                    return
            time.sleep(0.1)
        self.stop()
        over = " over TLS" if context is not None else ""
        raise RuntimeError(f"{self.name} did not greet{over} on port {port}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def memory(self) -> Memory:
        return tree_memory(self.pid)

    def cpu(self) -> float:
        return tree_cpu(self.pid)

    def log_tail(self, lines: int = 40) -> str:
        raise NotImplementedError


def _hash_one(index: int) -> str:
    from pop3d.auth.passwords import hash_password  # real default Argon2Parameters()
    from pop3d.security.secret import Secret

    password = BIG_PASSWORD if index < 0 else user_password(index)
    return hash_password(Secret(password.encode()))


def _argon2_file(users: int) -> Path:
    """Argon2id hashes with pop3d's default parameters for bench0..bench<users-1> and
    benchbig; about 60 ms each, so made on both cores once and cached."""
    from pop3d.auth.passwords import Argon2Parameters

    default = Argon2Parameters()
    cache = LAB / "cache" / f"pop3d.passwd.{users}.m{default.memory_kib}.t{default.passes}"
    if cache.exists():
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    print(f"bench: hashing {users + 1} passwords with pop3d's default Argon2id ...", flush=True)
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        hashes = pool.map(_hash_one, [*range(users), -1], chunksize=16)
    lines = ["# pop3d credentials: see pop3d/auth/credentials.py"]
    lines += [f"{user_name(i)}:{{ARGON2ID}}{h}" for i, h in enumerate(hashes[:-1])]
    lines.append(f"{BIG_USER}:{{ARGON2ID}}{hashes[-1]}")
    _write_private(cache, lines)
    return cache


def _write_private(path: Path, lines: list[str]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text("\n".join(lines) + "\n")
    temporary.chmod(0o600)
    temporary.rename(path)


def _scram_one(job: tuple[str, tuple[str, ...], int]) -> str:
    """The SCRAM keys ``pop3d-admin passwd`` would store (pop3d.auth.schemes.derive: a
    fresh 16-octet salt per user and hash), as ``:{SCHEME}value`` fields."""
    from pop3d.sasl.scram import derive_keys
    from pop3d.security.secret import Secret

    user, schemes, iterations = job
    password = BIG_PASSWORD if user == BIG_USER else user_password(int(user[len("bench") :]))
    fields = ""
    for scheme in schemes:
        keys = derive_keys(
            scheme.removeprefix("SCRAM-"), Secret(password.encode()), os.urandom(16), iterations
        )
        fields += f":{{{scheme}}}{keys.encode()}"
    return fields


def _credential_file(users: int, scram: tuple[str, ...], iterations: int) -> Path:
    """The Argon2id file, plus SCRAM keys for each scheme in ``scram`` (what the bench
    config's enabled mechanisms need, as ``pop3d-admin passwd`` decides): a few ms of
    PBKDF2 per user and hash, cached as well."""
    base = _argon2_file(users)
    if not scram:
        return base
    suffix = "+".join(s.lower() for s in scram)
    cache = base.with_name(f"{base.name}.{suffix}.i{iterations}")
    if cache.exists():
        return cache
    print(f"bench: adding {', '.join(scram)} keys for {users + 1} users ...", flush=True)
    lines = base.read_text().splitlines()
    records = [line for line in lines if line and not line.startswith("#")]
    jobs = [(line.split(":", 1)[0], scram, iterations) for line in records]
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        fields = pool.map(_scram_one, jobs, chunksize=32)
    keyed = dict(zip(records, fields, strict=True))
    _write_private(cache, [line + keyed.get(line, "") for line in lines])
    return cache


class Pop3d(Server):
    name = "pop3d"

    def __init__(
        self,
        users: int,
        auth_cache_ttl: int | None,
        prefork: int = 2,
        extra_env: dict[str, str] | None = None,
        *,
        name: str = "pop3d",
        kerberos: Kerberos | None = None,
        python: str = sys.executable,
    ) -> None:
        """``name``: "pop3d", or another name for a second installation (--pop3d-baseline:
        another checkout, through PYTHONPATH in ``extra_env``), with a folder of its own.
        ``kerberos``: the bench realm; GSSAPI is then enabled (its keytab, servername
        localhost). ``python``: the interpreter the master and its workers run on (a
        virtualenv's, with pop3d's dependencies): the bench's own by default."""
        self.name = name
        self.python = python
        self.users = users
        self.extra_env = extra_env or {}
        self.auth_cache_ttl = auth_cache_ttl
        self.prefork = prefork
        self.maxchild = 4000  # per service; the scale figure raises it to its crowd
        # maildrop_lock (None: the default); the scale figure sets "table", the lock that
        # costs a session no descriptor (older checkouts warn of the unknown option)
        self.maildrop_lock: str | None = None
        self.cpus: list[int] | None = None  # the master and its workers run on these (taskset)
        self.kerberos = kerberos
        self.extra_config = ""  # imapd.conf lines of the run's own (profile.py --syslog)
        self.root = LAB / name
        self.config = self.root / "imapd.conf"
        self.log = self.root / "master.log"

    def prepare(self, small: Message, big: Message) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        (self.root / "config").mkdir(parents=True, mode=0o700)
        shutil.copyfile(self._credentials(), self.root / "config" / "pop3d.passwd")
        (self.root / "config" / "pop3d.passwd").chmod(0o600)
        spool = self.root / "spool"
        for index in range(self.users):
            _fill_maildir(spool / user_name(index) / "Maildir", small, None)
        _fill_maildir(spool / BIG_USER / "Maildir", big, None)

    def _credentials(self) -> Path:
        """What ``pop3d-admin passwd`` stores under the bench config: an Argon2id hash,
        and SCRAM keys for every SCRAM hash the enabled mechanisms use (by default
        SCRAM-SHA-256 and SCRAM-SHA-512), with ``scram_iterations``."""
        from pop3d.auth.from_config import needed_schemes
        from pop3d.config.imapd import load

        self.write_config()
        config = load(self.config)
        wanted = needed_schemes(config)
        scram = tuple(sorted(x for x in wanted if x.startswith("SCRAM-")))
        if set(scram) != wanted:
            raise RuntimeError(f"bench: pop3d wants schemes the bench cannot make: {wanted}")
        return _credential_file(self.users, scram, config.integer("scram_iterations"))

    def write_config(self, tls: TLSFiles | None = None) -> None:
        text = (
            f"configdirectory: {self.root}/config\n"
            f"partition-default: {self.root}/spool\n"
            f"servername: {'localhost' if self.kerberos else 'bench.test'}\n"
            "allowplaintext: yes\n"
            "failedloginpause: 0\n"
            # The bench runs as root on a throwaway machine; pop3d refuses root unless told
            # (cyrus_user is what a site sets). Older checkouts warn and ignore it.
            "allow_root: yes\n"
        )
        if self.kerberos is not None:
            text += f"sasl_keytab: {self.kerberos.keytab}\n"
        if self.auth_cache_ttl is not None:
            text += f"auth_cache_ttl: {self.auth_cache_ttl}\n"
        if self.maildrop_lock is not None:
            text += f"maildrop_lock: {self.maildrop_lock}\n"
        if tls is not None:
            text += f"tls_server_cert: {tls.cert}\ntls_server_key: {tls.key}\n"
        self.config.write_text(text + self.extra_config)

    def start(self, tls: TLSFiles | None = None) -> None:
        """Clear text only (one ``pop3`` service), or with ``tls`` the certificate in
        imapd.conf (STLS on ``pop3``) and a second service ``pop3s`` (``pop3d -s``,
        implicit TLS), each with ``prefork`` workers."""
        self.tls = tls
        self.write_config(tls)
        self.port = free_port()
        self.tls_port = free_port() if tls is not None else 0
        services = [("pop3", "", self.port)]
        if tls is not None:
            services.append(("pop3s", "-s ", self.tls_port))
        cyrus_conf = self.root / "cyrus.conf"
        cyrus_conf.write_text(
            "SERVICES {\n"
            + "".join(
                f'  {name} cmd="pop3d {flags}-C {self.config}" listen="127.0.0.1:{port}" '
                f"prefork={self.prefork} maxchild={self.maxchild}\n"
                for name, flags, port in services
            )
            + "}\n"
        )
        kerberos_env = self.kerberos.server_env if self.kerberos else {}
        with self.log.open("ab") as handle:
            pinned = ["taskset", "-c", ",".join(map(str, self.cpus))] if self.cpus else []
            self.process = subprocess.Popen(
                [
                    *pinned,
                    self.python,
                    "-m",
                    "pop3d.cli.master",
                    "-C",
                    str(self.config),
                    "-M",
                    str(cyrus_conf),
                ],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1", **kerberos_env, **self.extra_env),
                # not the checkout: sys.path's first entry would shadow a PYTHONPATH
                cwd=self.root,
            )
        self._wait_ready(self.log, tls)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def errors_in_log(self) -> list[str]:
        if not self.log.exists():
            return []
        keep = ("ERROR", "WARNING", "Traceback", "CRITICAL")
        return [
            line
            for line in self.log.read_text(errors="replace").splitlines()
            if any(k in line for k in keep)
        ]


# --- the floor ------------------------------------------------------------------------


class Floor(Server):
    """bench/floor.py: canned answers to the load generator's session, on asyncio alone
    (what a session costs before any of pop3d's own work)."""

    name = "floor"

    def __init__(self, message: Message) -> None:
        self.message = message
        self.log = LAB / "floor.log"

    def start(self, tls: TLSFiles | None = None) -> None:
        assert tls is not None  # it serves both, as the servers it stands beside
        self.port, self.tls_port = free_port(), free_port()
        command = [
            sys.executable,
            str(BENCH / "floor.py"),
            *("--port", str(self.port), "--tls-port", str(self.tls_port)),
            *("--message", str(self.message.path), "--cert", str(tls.cert)),
            *("--key", str(tls.key)),
        ]
        LAB.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        self._wait_ready(self.log, tls)


# --- Kerberos ------------------------------------------------------------------------


class Kerberos:
    """A throwaway MIT realm for the GSSAPI figures (tests/support/kerberos.py: k5test, a
    KDC on 127.0.0.1, pop/localhost in its keytab), with principals ``bench<i>`` and
    ``benchbig`` (the bench passwords) and a ticket cache per user in ``ccache_dir``
    (``<user>.cc``). pop3d gets the realm's krb5.conf and its replay-cache folder: MIT's
    default replay cache, as a site would run it."""

    def __init__(self, users: int) -> None:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        from tests.support.kerberos import Realm, make_realm

        self.k5 = make_realm()
        realm = Realm(self.k5)
        self.folder = LAB / "krb5"
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.ccache_dir = self.folder / "ccache"
        self.ccache_dir.mkdir(parents=True)
        self.keytab = realm.service_keytab(self.folder)
        self.client_env = {"KRB5_CONFIG": realm.env["KRB5_CONFIG"]}
        self.server_env = {k: realm.env[k] for k in ("KRB5_CONFIG", "KRB5RCACHEDIR")}
        names = [(user_name(i), user_password(i)) for i in range(users)]
        names.append((BIG_USER, BIG_PASSWORD))
        for name, password in names:
            self.k5.addprinc(name, password)
            subprocess.run(
                ["kinit", f"{name}@{realm.name}"],
                input=password.encode() + b"\n",
                env=dict(realm.env, KRB5CCNAME=f"FILE:{self.ccache_dir / name}.cc"),
                check=True,
                capture_output=True,
            )

    def stop(self) -> None:
        self.k5.stop()
        shutil.rmtree(self.k5.tmpdir, ignore_errors=True)


# --- Cyrus ------------------------------------------------------------------------------

CYRUS_PACKAGES = ("cyrus-common", "cyrus-pop3d")  # Debian 12: 3.6.1
CYRUS_USER = "mail"  # cyrus_user: uid/gid 8 exist on every Debian (no "cyrus" user needed)
CYRUS_LIBDIR = "usr/lib/x86_64-linux-gnu"

CYRUS_IMAPD_CONF = """\
# Benchmark Cyrus 3.6 (the gssapi figures): built from
# ../shared/reference/peer-config/cyrus-imapd.conf; differences: GSSAPI only (the bench
# realm; no TLS, no password mechanisms), servername localhost (pop/localhost), no
# LOGIN-DELAY / EXPIRE, failedloginpause 0 (as pop3d's bench config), a folder of its own.
configdirectory: {lab}/config
partition-default: {lab}/spool
defaultpartition: default
lmtpsocket: {lab}/socket/lmtp
idlesocket: {lab}/socket/idle
notifysocket: {lab}/socket/notify
proc_path: {lab}/proc
servername: localhost
cyrus_user: {user}
admins: cyrus
altnamespace: no
unixhierarchysep: no
lmtp_downcase_rcpt: yes
duplicatesuppression: 0
munge8bit: 0
# INBOXes are made by the first LMTP delivery (prepare)
autocreate_quota: 0
autocreate_post: 1
failedloginpause: 0

# authentication: GSSAPI from the keytab in KRB5_KTNAME (pop/localhost); the realm is the
# default realm of KRB5_CONFIG, so the GSSAPI plugin hands Cyrus "bench<i>", not
# "bench<i>@REALM"
allowplaintext: no
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {lab}/config/sasldb2
sasl_mech_list: GSSAPI
"""


def cyrus_package() -> Path:
    """Debian's cyrus-common and cyrus-pop3d unpacked (``apt-get download``, ``dpkg -x``)
    into bench/.lab/pkg/cyrus, never installed: cyrus-pop3d conflicts with the
    dovecot-pop3d the bench runs. Made once; the binaries use the libraries from there
    (LD_LIBRARY_PATH), the system's for everything else."""
    root = LAB / "pkg" / "cyrus"
    done = root / ".unpacked"
    if done.exists():
        return root
    debs = LAB / "pkg" / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["apt-get", "download", "-q", *CYRUS_PACKAGES], cwd=debs, check=True, capture_output=True
    )
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for package in CYRUS_PACKAGES:
        (deb,) = sorted(debs.glob(f"{package}_*.deb"))[-1:]
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    missing = subprocess.run(
        ["ldd", str(root / "usr/lib/cyrus/bin/pop3d")],
        env=dict(os.environ, LD_LIBRARY_PATH=str(root / CYRUS_LIBDIR)),
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    absent = [line.split()[0] for line in missing.splitlines() if "not found" in line]
    if absent:
        raise RuntimeError(f"bench: Cyrus needs libraries not installed: {', '.join(absent)}")
    done.write_text("\n".join(CYRUS_PACKAGES) + "\n")
    return root


def cyrus_version() -> str:
    debs = sorted((LAB / "pkg" / "debs").glob("cyrus-pop3d_*.deb"))
    return debs[-1].name.split("_")[1] if debs else "?"


class Cyrus(Server):
    """Debian's Cyrus 3.6 pop3d, for the gssapi figures only: its own ``master`` (in the
    foreground, ``-D``) from the unpacked packages, on the bench realm (pop/localhost in a
    keytab given by KRB5_KTNAME, MIT's default replay cache in a folder of its own),
    ``prefork=4 maxchild=2000`` as the reference cyrus.conf. Users bench0 ..
    bench<users-1> get the 4 KB message and benchbig the 50 MB one, delivered over LMTP
    (lmtpd, the INBOX made by the delivery), so the mailboxes are in Cyrus's own format;
    lmtpd adds a Return-Path and a Received header (``big_octets``: the size as stored)."""

    name = "cyrus"

    def __init__(self, users: int, kerberos: Kerberos) -> None:
        self.users = users
        self.kerberos = kerberos
        self.root = LAB / "cyrus"
        self.config = self.root / "imapd.conf"
        self.log = self.root / "master.log"
        self.package = Path()
        self.big_octets = 0

    def _env(self) -> dict[str, str]:
        return dict(
            os.environ,
            LD_LIBRARY_PATH=str(self.package / CYRUS_LIBDIR),
            KRB5_CONFIG=str(self.root / "krb5.conf"),
            KRB5_KTNAME=f"FILE:{self.root / 'pop.keytab'}",
            KRB5RCACHEDIR=str(self.root / "rcache"),
        )

    def _bin(self, name: str) -> str:
        return str(self.package / "usr/lib/cyrus/bin" / name)

    def prepare(self, small: Message, big: Message) -> None:
        self.package = cyrus_package()
        if self.root.exists():
            shutil.rmtree(self.root)
        # config/socket: each pop3d binds its idle socket there, whatever idlesocket says
        for sub in ("config", "config/socket", "spool", "socket", "proc", "rcache"):
            (self.root / sub).mkdir(parents=True)
        self.config.write_text(CYRUS_IMAPD_CONF.format(lab=self.root, user=CYRUS_USER))
        shutil.copyfile(self.kerberos.server_env["KRB5_CONFIG"], self.root / "krb5.conf")
        shutil.copyfile(self.kerberos.keytab, self.root / "pop.keytab")
        (self.root / "pop.keytab").chmod(0o600)
        account = pwd.getpwnam(CYRUS_USER)
        for path in (self.root, *self.root.rglob("*")):
            os.chown(path, account.pw_uid, account.pw_gid)
        self._run_master(
            {
                "lmtpunix": f'cmd="{self._bin("lmtpd")} -C {self.config}" '
                f'listen="{self.root}/socket/lmtp" prefork=0 maxchild=4'
            },
            wait=lambda: self._wait_socket(self.root / "socket" / "lmtp"),
        )
        try:
            self._deliver(small, big)
        finally:
            self.stop()
        # mailboxes are folders named by UUID: the 50 MB one is the largest message file
        self.big_octets = max(p.stat().st_size for p in self.root.glob("spool/**/1."))

    def _deliver(self, small: Message, big: Message) -> None:
        import smtplib

        with smtplib.LMTP(str(self.root / "socket" / "lmtp"), timeout=120) as lmtp:
            lmtp.ehlo("bench")
            for name, message in [(user_name(i), small) for i in range(self.users)] + [
                (BIG_USER, big)
            ]:
                refused = lmtp.sendmail("sender@bench.test", [name], message.path.read_bytes())
                if refused:
                    raise RuntimeError(f"cyrus: LMTP delivery to {name} refused: {refused}")

    def _wait_socket(self, path: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"cyrus exited {self.process.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(path))
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"cyrus: no LMTP socket at {path}")

    def _run_master(self, services: dict[str, str], wait: Callable[[], None]) -> None:
        cyrus_conf = self.root / "cyrus.conf"
        cyrus_conf.write_text(
            "START {\n"
            f'  recover cmd="{self._bin("ctl_cyrusdb")} -r -C {self.config}"\n'
            "}\nSERVICES {\n"
            + "".join(f"  {name} {spec}\n" for name, spec in services.items())
            + "}\nEVENTS {\n}\nDAEMON {\n}\n"
        )
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(
                [
                    self._bin("master"),
                    "-D",
                    "-C",
                    str(self.config),
                    "-M",
                    str(cyrus_conf),
                    "-p",
                    str(self.root / "master.pid"),
                ],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=self.root,
            )
        wait()

    def start(self, tls: TLSFiles | None = None) -> None:
        if tls is not None:
            raise RuntimeError("cyrus: the bench runs Cyrus for the gssapi figures only")
        self.package = cyrus_package()
        self.port = free_port()
        self._run_master(
            {
                "pop3": f'cmd="{self._bin("pop3d")} -C {self.config}" '
                f'listen="127.0.0.1:{self.port}" proto=tcp4 prefork=4 maxchild=2000 '
                "maxfds=1024"
            },
            wait=lambda: self._wait_ready(self.log),
        )

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


DOVECOT_CONF = """\
# Benchmark Dovecot: standalone (never reads /etc/dovecot), loopback only. Built from
# ../shared/reference/peer-config/dovecot.conf; differences: TLS only for the TLS figures
# (the bench's own certificate; otherwise ssl = no), the package's own binaries, free
# ports, process limits with headroom above the 1,000 idle sessions of the RSS figure.
instance_name = bench-dovecot
base_dir = {lab}/run
state_dir = {lab}/state
log_path = {lab}/log/dovecot.log
protocols = pop3
listen = 127.0.0.1
hostname = dovecot.bench
postmaster_address = postmaster@bench.test

{ssl}
disable_plaintext_auth = no
# SCRAM-SHA-256 is derived from the {{PLAIN}} passwords on each login
auth_mechanisms = plain login scram-sha-256
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {lab}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {lab}/users
}}
# mail is owned by the Debian "mail" user (uid/gid 8)
first_valid_uid = 8
first_valid_gid = 8
mail_location = maildir:~/Maildir

# limits raised so benchmarks measure the server, not a cap
default_process_limit = {process_limit}
default_client_limit = {client_limit}
protocol pop3 {{
  mail_max_userip_connections = 1000
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
{pop3s}
  }}
}}
service pop3 {{
  process_limit = {process_limit}
}}
"""

# --dovecot-tuned (not the reference config): Dovecot's documented "high-performance"
# login mode (one pop3-login process serves many connections) and pop3 processes reused
# for up to 100 sessions (all bench users share one uid), with spares kept ready.
DOVECOT_TUNED = """
service pop3-login {
  service_count = 0
  process_min_avail = 2
}
service pop3 {
  service_count = 100
  process_min_avail = 2
}
"""


DOVECOT_NO_TLS = "ssl = no"
# As the reference config: ssl = yes (STLS on the clear-text listener) and ssl_dh, with
# Dovecot's default protocols and ciphers.
DOVECOT_TLS = """\
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_dh = </usr/share/dovecot/dh.pem"""
DOVECOT_POP3S = """\
    address = 127.0.0.1
    port = {port}
    ssl = yes"""


class Dovecot(Server):
    name = "dovecot"

    def __init__(self, users: int, tuned: bool = False, argon2id: bool = False) -> None:
        self.users = users
        self.tuned = tuned
        # --dovecot-argon2id: the very hashes pop3d verifies (PHC strings, which Dovecot's
        # libsodium-backed {ARGON2ID} reads, parameters included) instead of {PLAIN}, so
        # both servers pay the same hash per login. SCRAM-SHA-256 then cannot work in
        # Dovecot (it derives the keys from {PLAIN}): sessions figures only.
        self.argon2id = argon2id
        # process limits (1,200: headroom above the idle figure's 1,000 sessions); the
        # scale figure raises them to its crowd
        self.process_limit = 1200
        self.root = LAB / "dovecot"
        self.config = self.root / "dovecot.conf"
        self.log = self.root / "log" / "dovecot.log"
        self.stdout_log = self.root / "log" / "stdout.log"

    def prepare(self, small: Message, big: Message) -> None:
        pwd.getpwuid(MAIL_UID)  # the "mail" user must exist
        if self.root.exists():
            shutil.rmtree(self.root)
        for sub in ("run", "state", "log", "home"):
            (self.root / sub).mkdir(parents=True)
        home = self.root / "home"
        secrets = {user_name(i): "{PLAIN}" + user_password(i) for i in range(self.users)}
        secrets[BIG_USER] = "{PLAIN}" + BIG_PASSWORD
        if self.argon2id:
            for line in _argon2_file(self.users).read_text().splitlines():
                if line and not line.startswith("#"):
                    name, secret = line.split(":", 1)
                    secrets[name] = secret
        lines = []
        for index in range(self.users):
            name = user_name(index)
            lines.append(f"{name}:{secrets[name]}:{MAIL_UID}:{MAIL_GID}::{home / name}::")
            _fill_maildir(home / name / "Maildir", small, MAIL_UID)
        lines.append(f"{BIG_USER}:{secrets[BIG_USER]}:{MAIL_UID}:{MAIL_GID}::{home / BIG_USER}::")
        _fill_maildir(home / BIG_USER / "Maildir", big, MAIL_UID)
        (self.root / "users").write_text("\n".join(lines) + "\n")
        (self.root / "users").chmod(0o644)  # bench passwords only; read by auth

    def start(self, tls: TLSFiles | None = None) -> None:
        self.tls = tls
        self.port = free_port()
        self.tls_port = free_port() if tls is not None else 0
        if tls is None:
            ssl_settings, pop3s = DOVECOT_NO_TLS, "    port = 0"
        else:
            ssl_settings = DOVECOT_TLS.format(cert=tls.cert, key=tls.key)
            pop3s = DOVECOT_POP3S.format(port=self.tls_port)
        text = DOVECOT_CONF.format(
            lab=self.root,
            port=self.port,
            ssl=ssl_settings,
            pop3s=pop3s,
            process_limit=self.process_limit,
            client_limit=max(5000, 2 * self.process_limit),
        )
        self.config.write_text(text + (DOVECOT_TUNED if self.tuned else ""))
        # A stale master.pid of a killed run would make Dovecot refuse to start.
        (self.root / "run" / "master.pid").unlink(missing_ok=True)
        with self.stdout_log.open("ab") as handle:
            self.process = subprocess.Popen(
                ["dovecot", "-F", "-c", str(self.config)],
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready(self.stdout_log, tls)

    def log_tail(self, lines: int = 40) -> str:
        text = ""
        for path in (self.stdout_log, self.log):
            if path.exists():
                text += path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def errors_in_log(self) -> list[str]:
        if not self.log.exists():
            return []
        keep = ("Error:", "Fatal:", "Panic:", "Warning:")
        return [
            line
            for line in self.log.read_text(errors="replace").splitlines()
            if any(k in line for k in keep)
        ]


def dovecot_version() -> str:
    try:
        out = subprocess.run(
            ["dovecot", "--version"], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "?"
    package = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "dovecot-pop3d"],
        capture_output=True,
        text=True,
        check=False,
        timeout=10,
    ).stdout
    return f"{out.stdout.strip()} (Debian dovecot-pop3d {package or '?'})"
