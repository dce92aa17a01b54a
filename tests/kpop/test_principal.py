"""Principal -> local user: the default realm and loginrealms, no instance, nothing else."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pop3d.kpop.principal import local_user


@pytest.mark.parametrize(
    ("principal", "expected"),
    [
        ("alice@EXAMPLE.COM", "alice"),  # the default realm
        ("alice@PARTNER.ORG", "alice"),  # a login realm
        ("alice@partner.org", "alice"),  # login realms compare as imapd.conf lists them
        ("alice@example.com", None),  # the default realm is exact, as Kerberos compares
        ("alice@OTHER.NET", None),  # a realm we do not serve
        ("alice/admin@EXAMPLE.COM", None),  # an instance is another principal
        ("pop/localhost@EXAMPLE.COM", None),  # a service is not a user
        ("alice", None),  # no realm
        ("@EXAMPLE.COM", None),
        ("alice@", None),
        ("al\\@ice@EXAMPLE.COM", None),  # MIT escapes: never a plain user name
        ("al\\/ice@EXAMPLE.COM", None),
        ("alice@EXAMPLE.COM@EXAMPLE.COM", None),
        ("al\0ice@EXAMPLE.COM", None),
    ],
)
def test_mapping(principal: str, expected: str | None) -> None:
    assert local_user(principal, "EXAMPLE.COM", ["PARTNER.ORG"]) == expected


def test_no_default_realm_maps_only_login_realms() -> None:
    assert local_user("alice@EXAMPLE.COM", None) is None
    assert local_user("alice@EXAMPLE.COM", None, ("example.com",)) == "alice"


@given(st.text(max_size=40), st.text(max_size=20))
def test_a_mapped_user_never_carries_a_separator(name: str, realm: str) -> None:
    user = local_user(name, realm or None, (realm,))
    assert user is None or not set(user) & set("@/\\\0")
