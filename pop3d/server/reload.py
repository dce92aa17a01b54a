"""What a SIGHUP to ``pop3d-master`` may change: it re-reads imapd.conf and cyrus.conf, as
Cyrus's master re-reads its configuration on SIGHUP, and checks them as it did at start
(the check is the command's: ``pop3d.cli.master``, which builds every service's context as
its workers will). A configuration that would not start is refused whole, logged, and the
services go on as they were: a typo and a reload never take a service down.

A configuration that checks out and differs from the one in effect replaces the workers:
every worker retires (stops accepting, lets its sessions end as they would) and fresh
workers read the new files. Unchanged, a SIGHUP only has the workers re-read their TLS
certificates, as before: reloading over and over starts no process.

Some settings cannot change under running sessions; a reload that changes one is refused,
naming it (a restart applies it):

* what the master itself read once, as root or before its first worker: the account it
  became, its metrics endpoint, its syslog socket;
* what old and new workers must agree on while both serve, or two sessions could hold one
  maildrop at once: how maildrops are locked (``maildrop_lock``) and, for the lock table,
  where (``configdirectory``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pop3d.config.cyrus import MasterConfig
from pop3d.config.imapd import Config

# Read by the master alone, once (as root, or before its first worker).
MASTER_ONCE = (
    "cyrus_user",
    "cyrus_group",
    "allow_root",
    "prometheus_enabled",
    "prometheus_listen",
    "syslog_socket",
)
# Shared by every worker of a service, old and new, while both serve.
SHARED_BY_WORKERS = ("maildrop_lock", "configdirectory")


class ReloadRefused(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Loaded:
    """A checked configuration: cyrus.conf, the master's imapd.conf, and each service's
    (its own ``-C`` or the master's), as its workers will read them."""

    cyrus: MasterConfig
    config: Config
    services: dict[str, Config]

    def same_as(self, other: Loaded) -> bool:
        """Whether nothing a worker reads differs (comments, order and line numbers aside)."""
        return _services(self) == _services(other) and {
            name: _values(config) for name, config in self.services.items()
        } == {name: _values(config) for name, config in other.services.items()}

    def refuse_restart_only(self, other: Loaded) -> None:
        """Raise ReloadRefused naming what ``other`` changes that only a restart may
        change (see above)."""
        changed = [name for name in MASTER_ONCE if self.config.get(name) != other.config.get(name)]
        # Compared across every service, not service by service: a service renamed (or a
        # new one beside it) with another maildrop_lock held a maildrop the old workers
        # still held, two sessions on it at once (found probing).
        changed += [
            name
            for name in SHARED_BY_WORKERS
            if _everywhere(self, name) != _everywhere(other, name)
        ]
        if changed:
            raise ReloadRefused(
                [f"{', '.join(changed)} changed: restart pop3d-master to change it"]
            )


def _services(loaded: Loaded) -> list[tuple[object, ...]]:
    return [(s.name, s.argv, s.listen, s.prefork, s.maxchild) for s in loaded.cyrus.services]


def _everywhere(loaded: Loaded, name: str) -> set[object]:
    return {config.get(name, service) for service, config in loaded.services.items()}


def _values(config: Config) -> dict[str, object]:
    return {name: setting.value for name, setting in config.settings.items()}
