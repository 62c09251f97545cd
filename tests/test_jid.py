"""RFC 7622 JIDs: splitting, PRECIS preparation of each part, IDNA domains, limits."""

from __future__ import annotations

import pytest

from fastxmpp.jid import (
    JID,
    JIDError,
    normalize_domain,
    normalize_local,
    normalize_resource,
    parse_jid,
)


@pytest.mark.parametrize(
    ("text", "local", "domain", "resource"),
    [
        ("example.org", "", "example.org", ""),
        ("alice@example.org", "alice", "example.org", ""),
        ("alice@example.org/phone", "alice", "example.org", "phone"),
        # RFC 7622 §3.1: the resource starts at the first '/', and may hold '/' and '@'.
        ("alice@example.org/a/b@c", "alice", "example.org", "a/b@c"),
        ("example.org/res@x", "", "example.org", "res@x"),
        # UsernameCaseMapped lowercases the localpart; OpaqueString keeps the resource's case.
        ("Alice@EXAMPLE.org/Phone", "alice", "example.org", "Phone"),
        # Width mapping: fullwidth letters become ASCII in the localpart (RFC 8265 §3.3).
        ("\uff41lice@example.org", "alice", "example.org", ""),
        # IDNA2008 with UTS #46 mapping; U-labels kept; an A-label becomes a U-label.
        ("juliet@B\u00dcCHER.example", "juliet", "b\u00fccher.example", ""),
        ("juliet@xn--bcher-kva.example", "juliet", "b\u00fccher.example", ""),
        # RFC 7622 §3.2: a trailing dot is stripped.
        ("alice@example.org.", "alice", "example.org", ""),
        ("alice@[2001:DB8::1]/r", "alice", "[2001:db8::1]", "r"),
        ("alice@192.0.2.1", "alice", "192.0.2.1", ""),
        ("\u00e9lo\u00efse@example.org", "\u00e9lo\u00efse", "example.org", ""),
    ],
)
def test_valid_jids(text: str, local: str, domain: str, resource: str) -> None:
    jid = parse_jid(text)
    assert (jid.local, jid.domain, jid.resource) == (local, domain, resource)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "@example.org",  # empty localpart with '@'
        "alice@",  # empty domainpart
        "alice@example.org/",  # empty resourcepart with '/'
        "/res",
        "al ice@example.org",  # spaces are disallowed in UsernameCaseMapped
        "a\u0007b@example.org",  # control characters
        "exa mple.org",
        "ex_ample.org",  # not a valid IDNA2008 label
        "-bad.example",
        "a..b",
        "alice@example.org/\u0007",
        "alice@[not-ipv6]",
        "alice@300.1.2.3",  # digits and dots only, but not an IPv4 address
        "a@b@example.org",
        "x" * 1024 + "@example.org",  # RFC 7622 §3.1: parts are at most 1023 octets
        "alice@example.org/" + "r" * 1024,
        "alice@example.org/" + "\u00e9" * 512,  # 1024 octets in UTF-8
    ],
)
def test_invalid_jids(text: str) -> None:
    with pytest.raises(JIDError):
        parse_jid(text)


@pytest.mark.parametrize("char", list("\"&'/:<>@"))
def test_localpart_extra_forbidden_characters(char: str) -> None:
    # RFC 7622 §3.3.1 forbids these although the PRECIS profile would allow them.
    with pytest.raises(JIDError, match="localpart"):
        normalize_local(f"a{char}b")


def test_resource_at_the_length_limit_is_accepted() -> None:
    assert parse_jid("a@example.org/" + "r" * 1023).resource == "r" * 1023


def test_bare_full_and_str() -> None:
    jid = parse_jid("Alice@Example.org/Home")
    assert jid.bare == "alice@example.org"
    assert jid.full == "alice@example.org/Home"
    assert str(jid) == "alice@example.org/Home"
    domain_only = parse_jid("example.org")
    assert domain_only.bare == domain_only.full == "example.org"
    assert parse_jid("example.org/r").full == "example.org/r"


def test_jids_compare_by_prepared_parts_and_are_frozen() -> None:
    assert parse_jid("ALICE@example.org") == JID("alice", "example.org", "")
    assert parse_jid("alice@example.org/A") != parse_jid("alice@example.org/a")
    with pytest.raises(AttributeError):
        parse_jid("alice@example.org").local = "bob"  # type: ignore[misc]


def test_parse_is_cached() -> None:
    assert parse_jid("cached@example.org/x") is parse_jid("cached@example.org/x")


def test_part_helpers() -> None:
    assert normalize_local("Juliet") == "juliet"
    assert normalize_domain("Example.ORG.") == "example.org"
    assert normalize_resource("Balcony \u00a0Room") == "Balcony  Room"  # NBSP maps to space
    with pytest.raises(JIDError):
        normalize_domain("")
    with pytest.raises(JIDError):
        normalize_resource("")
    with pytest.raises(JIDError):
        normalize_local("")


def test_jid_error_is_a_value_error() -> None:
    assert issubclass(JIDError, ValueError)


def test_ascii_fast_path_agrees_with_precis() -> None:
    """Pure-ASCII parts skip precis-i18n; for every ASCII character, alone and inside a part,
    the result (or the refusal) is the one the PRECIS profiles give."""
    from precis_i18n import get_profile

    profiles = {
        normalize_local: get_profile("UsernameCaseMapped"),
        normalize_resource: get_profile("OpaqueString"),
    }
    for normalize, profile in profiles.items():
        for code in range(128):
            for text in (chr(code), f"A{chr(code)}b", f"{chr(code)}Zz9"):
                try:
                    expected: str | None = profile.enforce(text)
                except UnicodeError:
                    expected = None
                forbidden = set("\"&'/:<>@") if normalize is normalize_local else set()
                if expected is not None and set(expected) & forbidden:
                    expected = None  # RFC 7622 §3.3.1: more is forbidden in a localpart
                try:
                    got: str | None = normalize(text)
                except JIDError:
                    got = None
                assert got == expected, (normalize.__name__, text)


def test_parse_cache_is_bounded_by_bytes() -> None:
    """Long distinct JIDs cannot make the cache hold more than PARSE_CACHE_BYTES."""
    import sys

    from fastxmpp import jid as jid_module

    for i in range(3000):
        parse_jid(f"{i}{'u' * 1000}@example.org/{'r' * 1000}")
        if i % 100:
            continue
        held = sum(
            sys.getsizeof(text) + sys.getsizeof(j.local) + sys.getsizeof(j.resource)
            for text, j in jid_module._parsed.items()
        )
        assert held <= jid_module._parsed_bytes <= jid_module.PARSE_CACHE_BYTES
    assert parse_jid("A" * 1023 + "@example.org").local == "a" * 1023
    with pytest.raises(JIDError, match="longer than 1023 characters"):
        parse_jid("\u00ad" * 2000 + "example.org")  # ignored by UTS #46, refused before it
