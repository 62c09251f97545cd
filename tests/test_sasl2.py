"""XEP-0388 SASL2 with XEP-0386 Bind 2, XEP-0198 inline resumption and XEP-0484 FAST, over
raw sockets: each flow of the XEPs' examples, and each bad input with the error they name.
xmpp.js, an independent implementation of all four, is in test_interop_js.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from typing import Any

import pytest
from conftest import PASSWORD, ServerProcess, assert_still_serving
from lxml import etree
from scramp import ScramClient
from xmpp_raw import BIND, SASL, STREAMS, RawClient

NS = "urn:xmpp:sasl:2"
BIND2 = "urn:xmpp:bind:0"
FAST = "urn:xmpp:fast:0"
SM = "urn:xmpp:sm:3"
MAM = "urn:xmpp:mam:2"
AGENT = "<user-agent id='d4565fa7-4d72-4749-b3d3-740edbf87770'><software>t</software></user-agent>"


NUL = b"\0"
WRONG_PLAIN = base64.b64encode(b"\0alice\0wrong").decode()
GOOD_PLAIN = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tls_stream(srv: ServerProcess, ca_file: str) -> tuple[RawClient, Any]:
    c = srv.client()
    c.open_stream()
    return c, c.starttls(ca_file)


def authenticate_scram(
    c: RawClient, user: str, password: str, inline: str = "", mechanism: str = "SCRAM-SHA-256"
) -> Any:
    """SASL2 with SCRAM; the <success/> (its server signature checked) or <failure/>."""
    client = ScramClient([mechanism], user, password)
    first = b64(client.get_client_first().encode())
    c.send(
        f"<authenticate xmlns='{NS}' mechanism='{mechanism}'>"
        f"<initial-response>{first}</initial-response>{inline}</authenticate>"
    )
    challenge = c.next()
    if challenge.tag != f"{{{NS}}}challenge":
        return challenge
    client.set_server_first(base64.b64decode(challenge.text).decode())
    c.send(f"<response xmlns='{NS}'>{b64(client.get_client_final().encode())}</response>")
    outcome = c.next()
    if outcome.tag == f"{{{NS}}}success":
        client.set_server_final(
            base64.b64decode(outcome.findtext(f"{{{NS}}}additional-data")).decode()
        )
    return outcome


def authenticate_plain(c: RawClient, user: str, password: str, inline: str = "") -> Any:
    data = b64(NUL + user.encode() + NUL + password.encode())
    c.send(
        f"<authenticate xmlns='{NS}' mechanism='PLAIN'><initial-response>{data}"
        f"</initial-response>{inline}</authenticate>"
    )
    return c.next()


def authenticate_token(
    c: RawClient,
    user: str,
    token: str,
    mechanism: str = "HT-SHA-256-NONE",
    fast: str = "",
    inline: str = AGENT,
) -> Any:
    """XEP-0484 §fast-auth: one round trip; the <success/> has the responder's HMAC."""
    digest = hashlib.sha512 if "512" in mechanism else hashlib.sha256
    initiator = hmac.new(token.encode(), b"Initiator", digest).digest()
    message = b64(user.encode() + NUL + initiator)
    c.send(
        f"<authenticate xmlns='{NS}' mechanism='{mechanism}'><initial-response>"
        f"{message}</initial-response>{inline}"
        f"<fast xmlns='{FAST}'{fast}/></authenticate>"
    )
    outcome = c.next()
    if outcome.tag == f"{{{NS}}}success":
        responder = hmac.new(token.encode(), b"Responder", digest).digest()
        assert base64.b64decode(outcome.findtext(f"{{{NS}}}additional-data")) == responder
    return outcome


def failure(el: Any) -> str:
    assert el.tag == f"{{{NS}}}failure", etree.tostring(el)
    conditions = [etree.QName(c).localname for c in el if etree.QName(c).namespace == SASL]
    assert len(conditions) == 1, etree.tostring(el)
    return conditions[0]


def get_token(
    srv: ServerProcess, ca_file: str, user: str, mechanism: str = "HT-SHA-256-NONE"
) -> str:
    c, _ = tls_stream(srv, ca_file)
    success = authenticate_plain(
        c, user, PASSWORD, AGENT + f"<request-token xmlns='{FAST}' mechanism='{mechanism}'/>"
    )
    token = success.find(f"{{{FAST}}}token")
    assert token is not None, etree.tostring(success)
    c.close()
    return str(token.get("token"))


def test_features_after_tls(server: ServerProcess, ca_file: str) -> None:
    """XEP-0388 §discovery: SASL2 next to SASL1 with the same mechanisms, after TLS, with
    Bind 2 (and what it enables), XEP-0198 resumption and FAST inline."""
    c = server.client()
    before = c.open_stream()
    assert before.find(f"{{{NS}}}authentication") is None  # TLS first, as SASL1
    features = c.starttls(ca_file)
    sasl1 = [m.text for m in features.find(f"{{{SASL}}}mechanisms")]
    auth = features.find(f"{{{NS}}}authentication")
    assert [m.text for m in auth.findall(f"{{{NS}}}mechanism")] == sasl1
    inline = auth.find(f"{{{NS}}}inline")
    bind_vars = [f.get("var") for f in inline.find(f"{{{BIND2}}}bind/{{{BIND2}}}inline")]
    assert bind_vars == ["urn:xmpp:carbons:2", "urn:xmpp:csi:0", SM]
    assert inline.find(f"{{{SM}}}sm") is not None
    fast = [m.text for m in inline.find(f"{{{FAST}}}fast")]
    assert fast == ["HT-SHA-256-NONE", "HT-SHA-512-NONE"]
    c.close()


def test_scram_with_bind2_and_inline_features(server: ServerProcess, ca_file: str) -> None:
    """XEP-0388 §success and XEP-0386 §bind-request: SCRAM in SASL2, a resource
    "<tag>/<random>" with carbons, stream management and CSI, then the features of the
    bound stream with no restart; the session works."""
    c, _ = tls_stream(server, ca_file)
    inline = (
        AGENT + f"<bind xmlns='{BIND2}'><tag>AwesomeXMPP</tag>"
        "<enable xmlns='urn:xmpp:carbons:2'/><enable xmlns='urn:xmpp:sm:3' resume='true'/>"
        "<inactive xmlns='urn:xmpp:csi:0'/></bind>"
    )
    success = authenticate_scram(c, "alice", PASSWORD, inline)
    assert success.tag == f"{{{NS}}}success", etree.tostring(success)
    jid = success.findtext(f"{{{NS}}}authorization-identifier")
    assert re.fullmatch(r"alice@localhost/AwesomeXMPP/[0-9a-f]{12}", jid), jid
    bound = success.find(f"{{{BIND2}}}bound")
    assert bound.find(f"{{{MAM}}}metadata") is not None  # XEP-0386: the archive's state
    enabled = bound.find(f"{{{SM}}}enabled")
    assert enabled is not None and enabled.get("resume") == "true" and enabled.get("id")
    features = c.next()  # XEP-0388 §success: features follow at once, no restart
    assert features.tag == f"{{{STREAMS}}}features"
    assert features.find(f"{{{BIND}}}bind") is None and features.find(f"{{{SM}}}sm") is None
    c.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
    reply = c.next()
    assert reply.get("id") == "p1" and reply.get("type") == "result" and reply.get("to") == jid
    server.wait_for_log(f"bound {jid}")
    server.wait_for_log("authenticated alice@localhost with SCRAM-SHA-256 (SASL2)")
    c.close()


def test_without_bind_the_identifier_is_bare_and_rfc6120_binding_follows(
    server: ServerProcess, ca_file: str
) -> None:
    c, _ = tls_stream(server, ca_file)
    success = authenticate_plain(c, "bob", PASSWORD)
    assert success.findtext(f"{{{NS}}}authorization-identifier") == "bob@localhost"
    features = c.next()
    assert features.find(f"{{{BIND}}}bind") is not None
    assert c.bind("res").startswith("bob@localhost/res")
    c.close()


def authenticate(mechanism: str, initial: str, inline: str = "") -> str:
    return (
        f"<authenticate xmlns='{NS}' mechanism='{mechanism}'>"
        f"<initial-response>{initial}</initial-response>{inline}</authenticate>"
    )


BAD_AUTHENTICATE = {
    "unknown mechanism": (authenticate("X-UNKNOWN", "AA=="), "invalid-mechanism"),
    "bad base64": (authenticate("PLAIN", "!!notbase64"), "incorrect-encoding"),
    "wrong password": (authenticate("PLAIN", WRONG_PLAIN), "not-authorized"),
    "overlong user-agent id": (
        authenticate("PLAIN", GOOD_PLAIN, f"<user-agent id='{'x' * 200}'/>"),
        "malformed-request",
    ),
    "bad bind tag": (
        authenticate("PLAIN", GOOD_PLAIN, f"<bind xmlns='{BIND2}'><tag>{'t' * 100}</tag></bind>"),
        "malformed-request",
    ),
    "token request for an unknown mechanism": (
        authenticate("PLAIN", GOOD_PLAIN, AGENT + f"<request-token xmlns='{FAST}' mechanism='X'/>"),
        "malformed-request",
    ),
    "FAST mechanism without <fast/>": (
        authenticate("HT-SHA-256-NONE", GOOD_PLAIN, AGENT),
        "malformed-request",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_AUTHENTICATE))
def test_failures(server: ServerProcess, ca_file: str, case: str) -> None:
    """XEP-0388 §failure: the RFC 6120 §6.5 condition; the stream stays unauthenticated and
    the client may try again on it."""
    request, condition = BAD_AUTHENTICATE[case]
    c, _ = tls_stream(server, ca_file)
    c.send(request)
    outcome = c.next()
    assert failure(outcome) == condition
    assert authenticate_plain(c, "alice", PASSWORD).tag == f"{{{NS}}}success"
    c.close()


def test_abort(server: ServerProcess, ca_file: str) -> None:
    c, _ = tls_stream(server, ca_file)
    client = ScramClient(["SCRAM-SHA-256"], "alice", PASSWORD)
    c.send(
        f"<authenticate xmlns='{NS}' mechanism='SCRAM-SHA-256'><initial-response>"
        f"{b64(client.get_client_first().encode())}</initial-response></authenticate>"
    )
    assert c.next().tag == f"{{{NS}}}challenge"
    c.send(f"<abort xmlns='{NS}'/>")
    assert failure(c.next()) == "aborted"
    assert authenticate_scram(c, "alice", PASSWORD).tag == f"{{{NS}}}success"
    c.close()


def test_response_or_abort_without_an_exchange(server: ServerProcess, ca_file: str) -> None:
    """As RFC 6120 §6.4 for SASL1: a <failure/>, the stream goes on; an element SASL2 does
    not define is unsupported-stanza-type (RFC 6120 §4.9.3.24)."""
    c, _ = tls_stream(server, ca_file)
    c.send(f"<abort xmlns='{NS}'/>")
    assert failure(c.next()) == "aborted"
    c.send(f"<response xmlns='{NS}'>AA==</response>")
    assert failure(c.next()) == "malformed-request"
    c.send(f"<next xmlns='{NS}' task='TOTP'/>")
    assert c.stream_error() == "unsupported-stanza-type"
    assert c.wait_closed()


@pytest.mark.parametrize(
    "intruder",
    [
        "<message to='bob@localhost'><body>x</body></message>",
        f"<auth xmlns='{SASL}' mechanism='PLAIN'/>",
    ],
)
def test_other_elements_during_authentication_close_the_stream(
    server: ServerProcess, ca_file: str, intruder: str
) -> None:
    """XEP-0388 §"During Authentication": servers disconnect a client that sends anything
    but <response/> or <abort/>."""
    c, _ = tls_stream(server, ca_file)
    client = ScramClient(["SCRAM-SHA-256"], "alice", PASSWORD)
    c.send(
        f"<authenticate xmlns='{NS}' mechanism='SCRAM-SHA-256'><initial-response>"
        f"{b64(client.get_client_first().encode())}</initial-response></authenticate>"
    )
    assert c.next().tag == f"{{{NS}}}challenge"
    c.send(intruder)
    assert c.stream_error() == "policy-violation"
    assert c.wait_closed()
    assert_still_serving(server, ca_file)


def test_authenticate_after_success_closes_the_stream(server: ServerProcess, ca_file: str) -> None:
    c, _ = tls_stream(server, ca_file)
    assert authenticate_plain(c, "alice", PASSWORD).tag == f"{{{NS}}}success"
    c.next()  # features
    c.send(authenticate("PLAIN", "="))
    assert c.stream_error() == "not-authorized"
    assert c.wait_closed()


def test_fast_token_round_trip(server: ServerProcess, ca_file: str) -> None:
    """XEP-0484: a token with the password login, then a login with it in one round trip
    (bound at once with Bind 2); the token used with the other HT mechanism, a replayed
    count and an unknown token are refused; <fast invalidate/> ends it."""
    token = get_token(server, ca_file, "carol")
    c, _ = tls_stream(server, ca_file)
    success = authenticate_token(
        c, "carol", token, fast=" count='1'", inline=AGENT + f"<bind xmlns='{BIND2}'/>"
    )
    assert success.tag == f"{{{NS}}}success", etree.tostring(success)
    assert success.findtext(f"{{{NS}}}authorization-identifier").startswith("carol@localhost/")
    assert success.find(f"{{{FAST}}}token") is None  # fresh: not due for rotation
    c.close()
    server.wait_for_log("authenticated carol@localhost with HT-SHA-256-NONE (SASL2)")

    # §fast-auth: bound to its mechanism; the count must grow.
    c, _ = tls_stream(server, ca_file)
    assert (
        failure(authenticate_token(c, "carol", token, "HT-SHA-512-NONE")) == "credentials-expired"
    )
    assert failure(authenticate_token(c, "carol", token, fast=" count='1'")) == "not-authorized"
    assert failure(authenticate_token(c, "carol", "made-up")) == "credentials-expired"
    c.close()
    # Another client (user-agent id) has no token.
    c, _ = tls_stream(server, ca_file)
    other = "<user-agent id='another-client'/>"
    assert failure(authenticate_token(c, "carol", token, inline=other)) == "credentials-expired"
    assert (
        authenticate_token(c, "carol", token, fast=" count='2' invalidate='true'").tag
        == f"{{{NS}}}success"
    )
    c.close()
    c, _ = tls_stream(server, ca_file)
    assert failure(authenticate_token(c, "carol", token)) == "credentials-expired"
    c.close()
    # Debug traces (the test servers log at debug level) show neither the token nor the
    # initiator's HMAC, which is as good as a password.
    initiator = hmac.new(token.encode(), b"Initiator", hashlib.sha256).digest()
    log = server.log_text()
    assert token not in log and b64(b"carol" + NUL + initiator) not in log


def test_no_token_without_user_agent(server: ServerProcess, ca_file: str) -> None:
    """XEP-0484 §rules-clients: tokens are per client (<user-agent id>): without one the
    login succeeds with no token."""
    c, _ = tls_stream(server, ca_file)
    request = f"<request-token xmlns='{FAST}' mechanism='HT-SHA-256-NONE'/>"
    success = authenticate_plain(c, "alice", PASSWORD, request)
    assert success.tag == f"{{{NS}}}success", etree.tostring(success)
    assert success.find(f"{{{FAST}}}token") is None
    c.close()


def test_fast_token_rotation_and_new_slot(server: ServerProcess, ca_file: str) -> None:
    """XEP-0484 §impl-tokens: a second token goes to the 'new' slot and the older one keeps
    working until the new one is used; then the older one is gone."""
    first = get_token(server, ca_file, "dave")
    c, _ = tls_stream(server, ca_file)
    success = authenticate_token(
        c,
        "dave",
        first,
        inline=AGENT + f"<request-token xmlns='{FAST}' mechanism='HT-SHA-256-NONE'/>",
    )
    second = success.find(f"{{{FAST}}}token").get("token")
    c.close()
    c, _ = tls_stream(server, ca_file)
    assert authenticate_token(c, "dave", first).tag == f"{{{NS}}}success"
    c.close()
    c, _ = tls_stream(server, ca_file)
    assert authenticate_token(c, "dave", second).tag == f"{{{NS}}}success"
    c.close()
    c, _ = tls_stream(server, ca_file)
    assert failure(authenticate_token(c, "dave", first)) == "credentials-expired"
    c.close()


def test_expired_token_and_password_change(make_server: Any, ca_file: str) -> None:
    """`fast_token_lifetime`: a token past it gets credentials-expired (XEP-0484
    §rules-servers); a password change (XEP-0077 §3.3) ends the account's tokens."""
    srv: ServerProcess = make_server("[c2s]\nfast_token_lifetime = 1\n")
    srv.adduser("erin@localhost")
    srv.start()
    token = get_token(srv, ca_file, "erin")
    time.sleep(1.2)  # past the token's one-second lifetime
    c, _ = tls_stream(srv, ca_file)
    assert failure(authenticate_token(c, "erin", token)) == "credentials-expired"
    c.close()


def test_token_past_half_its_lifetime_is_rotated(make_server: Any, ca_file: str) -> None:
    """XEP-0484 §token-rotation: a login with a token past half its lifetime gets the next
    one in <success/> unasked; the older one keeps working until a newer one is used."""
    srv: ServerProcess = make_server("[c2s]\nfast_token_lifetime = 4\n")
    srv.adduser("erin@localhost")
    srv.start()
    first = get_token(srv, ca_file, "erin")
    time.sleep(2.2)  # past half of the four-second lifetime
    c, _ = tls_stream(srv, ca_file)
    success = authenticate_token(c, "erin", first)
    rotated = success.find(f"{{{FAST}}}token")
    assert rotated is not None, etree.tostring(success)
    second = rotated.get("token")
    c.close()
    # The client lost that <success/>: the older token still works, and brings a third
    # token, which replaces the second, never used (§token-rotation: SHOULD invalidate).
    c, _ = tls_stream(srv, ca_file)
    third = authenticate_token(c, "erin", first).find(f"{{{FAST}}}token").get("token")
    c.close()
    c, _ = tls_stream(srv, ca_file)
    assert failure(authenticate_token(c, "erin", second)) == "credentials-expired"
    assert authenticate_token(c, "erin", third).tag == f"{{{NS}}}success"
    c.close()
    # The newer token used: the older one is gone (§token-rotation: MUST invalidate).
    c, _ = tls_stream(srv, ca_file)
    assert failure(authenticate_token(c, "erin", first)) == "credentials-expired"
    c.close()


def test_password_change_ends_tokens(server: ServerProcess, ca_file: str) -> None:
    """XEP-0077 §3.3: the new password ends the FAST tokens granted with the old one."""
    token = get_token(server, ca_file, "bob")
    c = server.client()
    c.login(ca_file, "bob", PASSWORD)
    c.send(
        "<iq type='set' id='pw'><query xmlns='jabber:iq:register'><username>bob</username>"
        f"<password>{PASSWORD}</password></query></iq>"
    )
    reply = c.next()
    assert reply.get("id") == "pw" and reply.get("type") == "result", etree.tostring(reply)
    c.close()
    c, _ = tls_stream(server, ca_file)
    assert failure(authenticate_token(c, "bob", token)) == "credentials-expired"
    c.close()


def test_inline_resumption(server: ServerProcess, ca_file: str) -> None:
    """XEP-0198 §5 inside SASL2 (XEP-0388 §success, XEP-0386 §bind-request): the session
    lost with its connection is resumed in <success/>, whose identifier is the full JID;
    what it missed follows. An unknown SM-ID gets <failed/> and the bind is done instead."""
    c, _ = tls_stream(server, ca_file)
    inline = (
        AGENT + f"<bind xmlns='{BIND2}'><tag>phone</tag><enable xmlns='{SM}' resume='true'/></bind>"
    )
    success = authenticate_plain(c, "alice", PASSWORD, inline)
    jid = success.findtext(f"{{{NS}}}authorization-identifier")
    previd = success.find(f"{{{BIND2}}}bound/{{{SM}}}enabled").get("id")
    c.next()  # features
    c.send("<presence/>")
    c.send(f"<r xmlns='{SM}'/>")
    while c.next().tag != f"{{{SM}}}a":
        pass
    c.abort()
    server.wait_for_log(f"{jid} lost its connection")
    sender = server.client()
    sender.login(ca_file, "bob", PASSWORD)
    sender.send(f"<message to='{jid}' type='chat' id='m1'><body>while away</body></message>")
    sender.send("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
    while sender.next().get("id") != "sync":
        pass

    c, _ = tls_stream(server, ca_file)
    resume = (
        f"<resume xmlns='{SM}' previd='{previd}' h='0'/>"
        f"<bind xmlns='{BIND2}'><tag>phone</tag></bind>"
    )
    success = authenticate_plain(c, "alice", PASSWORD, AGENT + resume)
    assert success.findtext(f"{{{NS}}}authorization-identifier") == jid
    assert success.find(f"{{{SM}}}resumed").get("previd") == previd
    assert success.find(f"{{{BIND2}}}bound") is None  # the bind request is ignored
    features = c.next()
    assert features.tag == f"{{{STREAMS}}}features"
    bodies = []
    while not bodies:
        el = c.next()
        bodies = [b.text for b in el.iter("{jabber:client}body")]
    assert bodies == ["while away"]
    server.wait_for_log(f"resumed {jid}")
    c.close()

    c, _ = tls_stream(server, ca_file)
    success = authenticate_plain(c, "alice", PASSWORD, AGENT + resume)
    failed = success.find(f"{{{SM}}}failed")
    assert (
        failed is not None
        and failed.find("{urn:ietf:params:xml:ns:xmpp-stanzas}item-not-found") is not None
    )
    assert success.findtext(f"{{{NS}}}authorization-identifier").startswith(
        "alice@localhost/phone/"
    )
    assert success.find(f"{{{BIND2}}}bound") is not None
    c.close()
    sender.close()


async def test_sasl1_clients_are_unaffected(server: ServerProcess, ca_file: str) -> None:
    """slixmpp knows no SASL2: it ignores <authentication/> and logs in with RFC 6120 SASL
    and resource binding as before, next to a SASL2 session of the same account."""
    import asyncio

    from slix_client import SlixClient

    c, _ = tls_stream(server, ca_file)
    assert authenticate_plain(c, "dave", PASSWORD, f"<bind xmlns='{BIND2}'/>").tag == (
        f"{{{NS}}}success"
    )
    client = SlixClient("dave@localhost/slix", ca_file, mechanism="SCRAM-SHA-1")
    try:
        await client.online(server.port)
        assert str(client.boundjid) == "dave@localhost/slix"
    finally:
        client.disconnect()
        await asyncio.sleep(0.1)
        c.close()
    log = server.log_text()
    assert "authenticated dave@localhost with SCRAM-SHA-1\n" in log.replace("\r", "")


def test_tokens_per_account_are_bounded(server: ServerProcess, ca_file: str) -> None:
    """A client that knows the password cannot make the token store grow without bound:
    past 32 clients (user-agent ids) per account, the token expiring first goes."""
    tokens = []
    for i in range(33):
        c, _ = tls_stream(server, ca_file)
        agent = f"<user-agent id='client-{i}'/>"
        request = f"<request-token xmlns='{FAST}' mechanism='HT-SHA-256-NONE'/>"
        success = authenticate_plain(c, "bob", PASSWORD, agent + request)
        tokens.append(success.find(f"{{{FAST}}}token").get("token"))
        c.close()
    c, _ = tls_stream(server, ca_file)
    first = "<user-agent id='client-0'/>"
    assert failure(authenticate_token(c, "bob", tokens[0], inline=first)) == "credentials-expired"
    last = "<user-agent id='client-32'/>"
    assert authenticate_token(c, "bob", tokens[32], inline=last).tag == f"{{{NS}}}success"
    c.close()


def test_failures_are_limited_per_stream(server: ServerProcess, ca_file: str) -> None:
    """RFC 6120 §6.4.5 as for SASL1 (c2s.max_sasl_failures, 3): then the stream is closed."""
    c, _ = tls_stream(server, ca_file)
    for _ in range(3):
        c.send(authenticate("PLAIN", WRONG_PLAIN))
        assert failure(c.next()) == "not-authorized"
    assert c.stream_error() == "policy-violation"
    assert c.wait_closed()


def test_token_guessing_is_throttled_like_passwords(make_server: Any, ca_file: str) -> None:
    """limits.auth_failures_per_account counts wrong FAST tokens as wrong passwords: past it
    even a good token, and the right password, are refused for the account."""
    srv: ServerProcess = make_server(
        "[limits]\nauth_free_failures = 10\nauth_failures_per_ip = 100\n"
        "auth_failures_per_account = 3\n[c2s]\nmax_sasl_failures = 100\n"
    )
    srv.adduser("alice@localhost")
    srv.adduser("bob@localhost")
    srv.start()
    token = get_token(srv, ca_file, "alice")
    c, _ = tls_stream(srv, ca_file)
    for guess in ("guess-1", "guess-2", "guess-3"):
        assert failure(authenticate_token(c, "alice", guess)) == "credentials-expired"
    assert failure(authenticate_token(c, "alice", token)) == "temporary-auth-failure"
    assert failure(authenticate_plain(c, "alice", PASSWORD)) == "temporary-auth-failure"
    assert authenticate_plain(c, "bob", PASSWORD).tag == f"{{{NS}}}success"
    c.close()


def test_bind2_within_the_resource_limit(make_server: Any, ca_file: str) -> None:
    """limits.max_resources_per_account holds for Bind 2 as for RFC 6120 binding (§7.6.2.1):
    no session is made, the <failure/> says why, the stream stays unauthenticated."""
    srv: ServerProcess = make_server("[limits]\nmax_resources_per_account = 1\n")
    srv.adduser("alice@localhost")
    srv.start()
    first = srv.client()
    first.login(ca_file, "alice", PASSWORD, "one")
    c, _ = tls_stream(srv, ca_file)
    outcome = authenticate_plain(c, "alice", PASSWORD, f"<bind xmlns='{BIND2}'/>")
    assert failure(outcome) == "temporary-auth-failure"
    assert "too many sessions" in outcome.findtext(f"{{{NS}}}text")
    c.send("<presence/>")
    assert c.stream_error() == "not-authorized"
    first.close()


def test_bind2_enables_carbons(server: ServerProcess, ca_file: str) -> None:
    """XEP-0386 with XEP-0280 inline: a message to the account's other resource is copied to
    the session bound with <enable xmlns='urn:xmpp:carbons:2'/>."""
    c, _ = tls_stream(server, ca_file)
    inline = f"<bind xmlns='{BIND2}'><tag>c</tag><enable xmlns='urn:xmpp:carbons:2'/></bind>"
    assert authenticate_plain(c, "carol", PASSWORD, inline).tag == f"{{{NS}}}success"
    c.next()  # features
    other = server.client()
    other.login(ca_file, "carol", PASSWORD, "other")
    sender = server.client()
    sender.login(ca_file, "dave", PASSWORD, "d")
    sender.send("<message to='carol@localhost/other' type='chat'><body>copied</body></message>")
    copy = c.next()
    received = copy.find("{urn:xmpp:carbons:2}received")
    assert received is not None, etree.tostring(copy)
    assert [b.text for b in copy.iter("{jabber:client}body")] == ["copied"]
    for client in (c, other, sender):
        client.close()


def test_fast_only_over_tls(make_server: Any, ca_file: str) -> None:
    """XEP-0484 §security: FAST over a secure connection only. With TLS optional
    (c2s.require_encryption = false) a plaintext stream is offered SASL2 without FAST (and
    without PLAIN), and a FAST mechanism there is an invalid-mechanism."""
    srv: ServerProcess = make_server("[c2s]\nrequire_encryption = false\n")
    srv.adduser("alice@localhost")
    srv.start()
    c = srv.client()
    features = c.open_stream()
    auth = features.find(f"{{{NS}}}authentication")
    assert [m.text for m in auth.findall(f"{{{NS}}}mechanism")] == ["SCRAM-SHA-256", "SCRAM-SHA-1"]
    assert auth.find(f"{{{NS}}}inline/{{{FAST}}}fast") is None
    assert failure(authenticate_token(c, "alice", "any")) == "invalid-mechanism"
    c.close()


def test_tokens_go_with_the_account(make_server: Any, ca_file: str) -> None:
    """XEP-0077 §3.2 through `fastxmpp deluser`: the account's FAST tokens are purged with
    it, another account's stay (read from the LMDB store once the server is stopped)."""
    from conftest import run_cli

    from fastxmpp.storage.lmdb_store import Storage

    srv: ServerProcess = make_server()
    srv.adduser("alice@localhost")
    srv.adduser("bob@localhost")
    srv.start()
    get_token(srv, ca_file, "alice")
    get_token(srv, ca_file, "bob")
    srv.stop()
    deleted = run_cli("deluser", "alice@localhost", config=srv.config)
    assert deleted.returncode == 0, deleted.stderr
    with Storage(srv.data_dir) as storage:
        db = storage.database("fast_tokens")
        with storage.env.begin(db=db) as txn:
            keys = [bytes(k) for k in txn.cursor().iternext(values=False)]
    assert [k.split(b"\0")[:2] for k in keys] == [[b"localhost", b"bob"]]


def test_a_disabled_account_over_sasl2(make_server: Any, ca_file: str) -> None:
    """XEP-0133 disable-user, then SASL2 as over SASL1 (RFC 6120 §6.5.1): account-disabled
    for a right password (SCRAM and PLAIN), not-authorized for a wrong one, and its FAST
    tokens end with the disabling, as with a password change (credentials-expired: the
    client falls back to its password, and hears account-disabled then)."""
    from fastxmpp.storage.accounts import AccountStore
    from fastxmpp.storage.lmdb_store import Storage

    srv: ServerProcess = make_server()
    srv.adduser("sleeper@localhost")
    srv.start()
    token = get_token(srv, ca_file, "sleeper")
    srv.stop()
    with Storage(srv.data_dir) as storage:
        AccountStore(storage).set_disabled("localhost", "sleeper", True)
    srv.start()
    for attempt, expected in (
        (lambda c: authenticate_scram(c, "sleeper", PASSWORD), "account-disabled"),
        (lambda c: authenticate_plain(c, "sleeper", PASSWORD), "account-disabled"),
        (lambda c: authenticate_scram(c, "sleeper", "wrong"), "not-authorized"),
        (lambda c: authenticate_token(c, "sleeper", token), "credentials-expired"),
    ):
        c, _ = tls_stream(srv, ca_file)
        assert failure(attempt(c)) == expected
        c.close()


def agent(client_id: str) -> str:
    return f"<user-agent id='{client_id}'><software>t</software></user-agent>"


def test_a_bind_ends_earlier_sessions_of_the_same_client(make_server: Any, ca_file: str) -> None:
    """XEP-0386 §bind-request: upon binding, earlier sessions of the same client (its
    <user-agent id>) end: a live one with the conflict stream error, one waiting for XEP-0198
    resumption at once (resuming it then fails); other clients' sessions stay."""
    srv: ServerProcess = make_server()
    srv.adduser("alice@localhost")
    srv.start()
    phone, laptop = "1b7c2b5e-0000-4000-8000-000000000001", "1b7c2b5e-0000-4000-8000-000000000002"
    bind = f"<bind xmlns='{BIND2}'><tag>t</tag><enable xmlns='{SM}' resume='true'/></bind>"

    def log_in(client_id: str) -> tuple[RawClient, str, str]:
        c, _ = tls_stream(srv, ca_file)
        success = authenticate_plain(c, "alice", PASSWORD, agent(client_id) + bind)
        assert success.tag == f"{{{NS}}}success", etree.tostring(success)
        c.next()  # features
        previd = success.find(f"{{{BIND2}}}bound/{{{SM}}}enabled").get("id")
        return c, success.findtext(f"{{{NS}}}authorization-identifier"), previd

    def alive(c: RawClient) -> bool:
        c.send("<iq type='get' id='alive'><ping xmlns='urn:xmpp:ping'/></iq>")
        while (el := c.next()).get("id") != "alive":
            pass
        return el.get("type") == "result"

    old, old_jid, _ = log_in(phone)
    other, _, _ = log_in(laptop)
    new, new_jid, previd = log_in(phone)
    while (error := old.next()).tag == f"{{{SM}}}a":
        pass  # XEP-0198 §4: the final <a/> comes first
    assert error.tag == f"{{{STREAMS}}}error", etree.tostring(error)
    assert error.find("{urn:ietf:params:xml:ns:xmpp-streams}conflict") is not None
    srv.wait_for_log(f"ends {old_jid}, an earlier session of the same client")
    assert alive(other) and alive(new)

    new.abort()  # lost: it waits for resumption
    srv.wait_for_log(f"{new_jid} lost its connection")
    latest, _, _ = log_in(phone)
    srv.wait_for_log(f"ends {new_jid}, an earlier session of the same client")
    c, _ = tls_stream(srv, ca_file)
    resume = f"<resume xmlns='{SM}' previd='{previd}' h='0'/>"
    failed = authenticate_plain(c, "alice", PASSWORD, agent(phone) + resume).find(f"{{{SM}}}failed")
    assert failed is not None, "the session waiting for resumption should have ended"
    assert alive(other) and alive(latest)
    for client in (c, other, latest, old):
        client.close()


def test_the_same_client_logs_in_again_at_the_resource_limit(
    make_server: Any, ca_file: str
) -> None:
    """With `max_resources_per_account = 1`, a phone whose old session is still bound (its
    connection died unnoticed) logs in again: the old session of the same client ends first
    instead of the new one being refused (RFC 6120 §7.6.2.1 resource-constraint)."""
    srv: ServerProcess = make_server("[limits]\nmax_resources_per_account = 1\n")
    srv.adduser("alice@localhost")
    srv.start()
    phone = agent("1b7c2b5e-0000-4000-8000-000000000003")
    bind = f"<bind xmlns='{BIND2}'><tag>phone</tag></bind>"
    old, _ = tls_stream(srv, ca_file)
    assert authenticate_plain(old, "alice", PASSWORD, phone + bind).tag == f"{{{NS}}}success"
    new, _ = tls_stream(srv, ca_file)
    success = authenticate_plain(new, "alice", PASSWORD, phone + bind)
    assert success.tag == f"{{{NS}}}success", etree.tostring(success)
    other, _ = tls_stream(srv, ca_file)  # another client is still held to the limit
    refused = authenticate_plain(other, "alice", PASSWORD, agent("another") + bind)
    assert failure(refused) == "temporary-auth-failure"  # the limit, told as XEP-0388 says
    for client in (old, new, other):
        client.close()
