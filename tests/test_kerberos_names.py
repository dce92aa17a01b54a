"""Principal -> local user (pop3d.kerberos.names): the default realm and loginrealms, no
instance, nothing else; and MIT auth_to_local rules from a real krb5.conf when a site
configures them."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pop3d.kerberos.names import local_user


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


def test_auth_to_local_rules_from_krb5_conf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MIT's own mapping (krb5_aname_to_localname through the ctypes binding) with a site's
    rules: an admin instance mapped to its user, a partner realm mapped by rule, a
    default-realm user the rules leave out refused, and a rule producing a name that
    cannot be a user name (with a "/") refused."""
    from pop3d.kerberos import mit

    conf = tmp_path / "krb5.conf"
    conf.write_text(
        "[libdefaults]\n\tdefault_realm = EXAMPLE.COM\n"
        "[realms]\n\tEXAMPLE.COM = {\n"
        # (no backslashes: the profile parser has its own escapes; ";" stands for "/")
        "\t\tauth_to_local = RULE:[2:$1;$2@$0](.*;admin@EXAMPLE.COM)s/;admin@.*//\n"
        "\t\tauth_to_local = RULE:[1:$1@$0](carol@EXAMPLE.COM)s/@.*//\n"
        "\t\tauth_to_local = RULE:[2:$1;$2](.*;keep)s/;/x/\n"
        "\t\tauth_to_local = RULE:[2:$1/$2](.*/keep2)\n"
        "\t\tauth_to_local = RULE:[1:$1@$0](.*@PARTNER.ORG)s/@.*/-partner/\n"
        "\t}\n"
    )
    monkeypatch.setenv("KRB5_CONFIG", str(conf))
    mapping = mit.aname_to_localname

    def user(principal: str) -> str | None:
        return local_user(principal, "EXAMPLE.COM", (), mapping)

    assert user("alice/admin@EXAMPLE.COM") == "alice"  # an instance, mapped by rule
    assert user("carol@EXAMPLE.COM") == "carol"
    assert user("dave@PARTNER.ORG") == "dave-partner"  # another realm, mapped by rule
    assert user("alice@EXAMPLE.COM") is None  # rules set, DEFAULT not among them
    assert user("x/keep@EXAMPLE.COM") == "xxkeep"
    assert user("x/keep2@EXAMPLE.COM") is None  # the rule keeps a "/": not a user name


def test_without_rules_mit_maps_the_default_realm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pop3d.kerberos import mit

    conf = tmp_path / "krb5.conf"
    conf.write_text("[libdefaults]\n\tdefault_realm = EXAMPLE.COM\n")
    monkeypatch.setenv("KRB5_CONFIG", str(conf))
    mapping = mit.aname_to_localname
    assert local_user("alice@EXAMPLE.COM", "EXAMPLE.COM", (), mapping) == "alice"
    assert local_user("alice/admin@EXAMPLE.COM", "EXAMPLE.COM", (), mapping) is None
    assert local_user("alice@OTHER.NET", "EXAMPLE.COM", (), mapping) is None
    assert local_user("alice@PARTNER.ORG", "EXAMPLE.COM", ("partner.org",), mapping) == "alice"
