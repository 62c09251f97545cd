"""SCRAM-*-PLUS with channel binding (RFC 5802 §6; RFC 6120 §13.8 makes SCRAM-SHA-1-PLUS
mandatory to implement) and the XEP-0440 announcement of the binding types, over real TLS.

The client side is never our own code: scramp's SCRAM client (with its own RFC 5929
certificate hash, and the ssl module's tls-unique), and, for tls-exporter (RFC 9266), node's
TLS stack exporting the keying material (tests/interop/js/scram_plus.mjs)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ssl
from typing import Any

import pytest
from conftest import PASSWORD, ServerProcess, assert_still_serving
from interop_clients import JS_DIR, require_command, run_json
from xmpp_raw import SASL, RawClient

SASL2 = "urn:xmpp:sasl:2"
CB = "{urn:xmpp:sasl-cb:0}sasl-channel-binding"
PLUS = ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"]


def tls_client(srv: ServerProcess, ca_file: str, version: Any = None) -> tuple[RawClient, Any]:
    c = srv.client()
    c.open_stream()
    return c, c.starttls(ca_file, version=version)


def offered(features: Any) -> tuple[list[str], list[str]]:
    """(the SASL mechanisms, the XEP-0440 binding types) of a features element."""
    mechanisms = [m.text for m in features.find(f"{{{SASL}}}mechanisms")]
    bindings = features.find(CB)
    return mechanisms, [] if bindings is None else [b.get("type") for b in bindings]


def end_point(c: RawClient) -> tuple[str, Any]:
    """tls-server-end-point, which scramp computes from the certificate the connection got."""
    return "tls-server-end-point", c.sock


@pytest.mark.parametrize("mechanism", PLUS)
def test_tls_server_end_point(server: ServerProcess, ca_file: str, mechanism: str) -> None:
    """RFC 5929 §4 on TLS 1.3: the client hashes the certificate it was sent."""
    c, features = tls_client(server, ca_file)
    mechanisms, bindings = offered(features)
    assert mechanisms[:2] == PLUS  # preferred: offered first
    assert bindings == ["tls-exporter", "tls-server-end-point"]
    outcome = c.sasl_scram("alice", PASSWORD, mechanism, channel_binding=end_point(c))
    assert outcome.tag == f"{{{SASL}}}success"  # scramp checked the server's signature too
    c.open_stream()
    assert c.bind("cb").startswith("alice@localhost/")
    server.wait_for_log(f"authenticated alice@localhost with {mechanism} (tls-server-end-point)")
    c.close()


def test_tls_unique_on_tls_1_2(server: ServerProcess, ca_file: str) -> None:
    """RFC 5929 §3: tls-unique where it is defined (TLS 1.2), and no tls-exporter there."""
    c, features = tls_client(server, ca_file, ssl.TLSVersion.TLSv1_2)
    assert c.sock.version() == "TLSv1.2"
    assert offered(features)[1] == ["tls-unique", "tls-server-end-point"]
    outcome = c.sasl_scram(
        "bob", PASSWORD, "SCRAM-SHA-1-PLUS", channel_binding=("tls-unique", c.sock)
    )
    assert outcome.tag == f"{{{SASL}}}success"
    server.wait_for_log("authenticated bob@localhost with SCRAM-SHA-1-PLUS (tls-unique)")
    c.close()


def node_scram(srv: ServerProcess, ca_file: str, mechanism: str, binding: str) -> Any:
    node = require_command("node", "node (nodejs)")
    return run_json(
        [
            node,
            str(JS_DIR / "scram_plus.mjs"),
            str(srv.port),
            "carol",
            PASSWORD,
            mechanism,
            binding,
        ],
        env={"NODE_EXTRA_CA_CERTS": ca_file},
    )


@pytest.mark.parametrize("mechanism", PLUS)
def test_tls_exporter_against_node(server: ServerProcess, ca_file: str, mechanism: str) -> None:
    """RFC 9266 on TLS 1.3: node's TLS exports the keying material; the server's matches,
    and node verifies the server's signature."""
    report = node_scram(server, ca_file, mechanism, "tls-exporter")
    assert report["tls"] == "TLSv1.3"
    assert report["bindings"] == ["tls-exporter", "tls-server-end-point"]
    assert report["outcome"] == "success" and report["verified"] is True
    server.wait_for_log(f"authenticated carol@localhost with {mechanism} (tls-exporter)")


def test_exporter_data_under_another_name_is_refused(server: ServerProcess, ca_file: str) -> None:
    """The same exchange naming tls-server-end-point: the data no longer matches."""
    report = node_scram(server, ca_file, "SCRAM-SHA-256-PLUS", "tls-server-end-point")
    assert "not-authorized" in report["outcome"]


def test_a_type_not_offered_is_refused(server: ServerProcess, ca_file: str) -> None:
    """tls-unique is undefined for TLS 1.3 (RFC 9266 §4) and not offered there."""
    c, _ = tls_client(server, ca_file)
    assert c.sock.version() == "TLSv1.3"
    outcome = c.sasl_scram(
        "alice", PASSWORD, "SCRAM-SHA-256-PLUS", channel_binding=("tls-unique", c.sock)
    )
    assert outcome.find(f"{{{SASL}}}not-authorized") is not None
    c.close()
    assert_still_serving(server, ca_file)


def test_another_certificate_is_refused(server: ServerProcess, ca_file: str) -> None:
    """A man in the middle presents its own certificate: the client's hash is of that one,
    not of the server's, and the exchange fails (here: the CA's certificate stands in)."""
    c, _ = tls_client(server, ca_file)
    with open(ca_file) as pem:
        der = ssl.PEM_cert_to_DER_cert(pem.read())
    other = ("tls-server-end-point", hashlib.sha256(der).digest())
    outcome = c.sasl_scram("alice", PASSWORD, "SCRAM-SHA-256-PLUS", channel_binding=other)
    assert outcome.find(f"{{{SASL}}}not-authorized") is not None
    c.close()


def test_stripped_plus_mechanisms_are_detected(server: ServerProcess, ca_file: str) -> None:
    """RFC 5802 §6: a client that could bind but saw no -PLUS says 'y'; the server did
    offer them, so someone removed them: refused."""
    c, _ = tls_client(server, ca_file)
    outcome = c.sasl_scram("alice", PASSWORD, "SCRAM-SHA-256", channel_binding=end_point(c))
    assert outcome.find(f"{{{SASL}}}not-authorized") is not None
    c.close()


def test_plus_without_a_binding_is_malformed(server: ServerProcess, ca_file: str) -> None:
    c, _ = tls_client(server, ca_file)
    first = base64.b64encode(b"n,,n=alice,r=abcdefghijklmnop").decode()
    c.send(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256-PLUS'>{first}</auth>")
    assert c.next().find(f"{{{SASL}}}malformed-request") is not None
    c.close()


def test_sasl2_with_channel_binding(server: ServerProcess, ca_file: str) -> None:
    """XEP-0388: the same mechanisms, and the same binding, inside SASL2."""
    from scramp import ScramClient

    c, features = tls_client(server, ca_file)
    sasl2 = [m.text for m in features.find(f"{{{SASL2}}}authentication")]
    assert sasl2[:2] == PLUS
    client = ScramClient(["SCRAM-SHA-256-PLUS"], "dave", PASSWORD, channel_binding=end_point(c))
    first = base64.b64encode(client.get_client_first().encode()).decode()
    c.send(
        f"<authenticate xmlns='{SASL2}' mechanism='SCRAM-SHA-256-PLUS'>"
        f"<initial-response>{first}</initial-response></authenticate>"
    )
    challenge = c.next()
    client.set_server_first(base64.b64decode(challenge.text).decode())
    final = base64.b64encode(client.get_client_final().encode()).decode()
    c.send(f"<response xmlns='{SASL2}'>{final}</response>")
    success = c.next()
    assert success.tag == f"{{{SASL2}}}success"
    client.set_server_final(
        base64.b64decode(success.findtext(f"{{{SASL2}}}additional-data")).decode()
    )
    server.wait_for_log(
        "authenticated dave@localhost with SCRAM-SHA-256-PLUS (tls-server-end-point) (SASL2)"
    )
    c.close()


def scram_with_authzid(c: RawClient, user: str, authzid: str) -> Any:
    """SCRAM-SHA-1 with an authzid in the GS2 header (RFC 5802 §5.1 'a='), which scramp's
    client cannot send: the client side written out here."""
    gs2 = f"n,a={authzid},".encode()
    first = f"n={user},r=fyko+d2lbbFgONRv9qkxdawL".encode()
    initial = base64.b64encode(gs2 + first).decode()
    c.send(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-1'>{initial}</auth>")
    server_first = base64.b64decode(c.next().text)
    fields = dict(part.split(b"=", 1) for part in server_first.split(b","))
    salted = hashlib.pbkdf2_hmac(
        "sha1", PASSWORD.encode(), base64.b64decode(fields[b"s"]), int(fields[b"i"])
    )
    client_key = hmac.new(salted, b"Client Key", "sha1").digest()
    stored_key = hashlib.sha1(client_key).digest()
    without_proof = b"c=" + base64.b64encode(gs2) + b",r=" + fields[b"r"]
    message = first + b"," + server_first + b"," + without_proof
    signature = hmac.new(stored_key, message, "sha1").digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True)))
    final = base64.b64encode(without_proof + b",p=" + proof).decode()
    c.send(f"<response xmlns='{SASL}'>{final}</response>")
    return c.next()


def test_authzid_of_the_account_itself(server: ServerProcess, ca_file: str) -> None:
    """RFC 6120 §6.4.6: an authzid naming the authenticated account is that account;
    another one is invalid-authzid (no account acts as another)."""
    c, _ = tls_client(server, ca_file)
    assert scram_with_authzid(c, "alice", "alice@localhost").tag == f"{{{SASL}}}success"
    c.close()
    c, _ = tls_client(server, ca_file)
    refused = scram_with_authzid(c, "alice", "bob@localhost")
    assert refused.find(f"{{{SASL}}}invalid-authzid") is not None
    c.close()


def test_channel_binding_off(make_server: Any, ca_file: str) -> None:
    """[c2s] channel_binding = false: no -PLUS, no XEP-0440 feature, and a client's 'y'
    is then what it should be."""
    srv = make_server("[c2s]\nchannel_binding = false\n")
    srv.adduser("erin@localhost")
    srv.start()
    c, features = tls_client(srv, ca_file)
    mechanisms, bindings = offered(features)
    assert mechanisms == ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"] and bindings == []
    outcome = c.sasl_scram("erin", PASSWORD, "SCRAM-SHA-256", channel_binding=end_point(c))
    assert outcome.tag == f"{{{SASL}}}success"
    c.close()


def test_mangled_scram_messages_fail_cleanly(tmp_path: Any) -> None:
    """The SCRAM parser is ours now: any byte of a valid exchange changed, dropped or
    doubled (4 000 variants from a fixed seed) ends in a challenge or a failure, never an
    exception, and a mangled final message never succeeds."""
    import asyncio
    import random

    from scramp import ScramClient

    from fastxmpp.storage.accounts import AccountStore
    from fastxmpp.storage.lmdb_store import Storage
    from fastxmpp.stream.sasl import Challenge, Failure, ScramExchange, Success

    rng = random.Random(6120)

    def mangle(data: bytes) -> bytes:
        at = rng.randrange(len(data))
        how = rng.randrange(3)
        if how == 0:
            return data[:at] + bytes([rng.randrange(256)]) + data[at + 1 :]
        if how == 1:
            return data[:at] + data[at + 1 :]
        return data[:at] + data[at : at + rng.randrange(1, 8)] * 2 + data[at:]

    async def run() -> None:
        with Storage(tmp_path / "data") as storage:
            accounts = AccountStore(storage, iterations=4096)
            accounts.create("localhost", "alice", PASSWORD)
            for attempt in range(4_000):
                mechanism = ("SCRAM-SHA-1", "SCRAM-SHA-256")[attempt % 2]
                client = ScramClient([mechanism], "alice", PASSWORD)
                exchange = ScramExchange(mechanism, "localhost", accounts)
                first = client.get_client_first().encode()
                if attempt % 4 < 2:  # the first message mangled
                    outcome = await exchange.start(mangle(first))
                    assert isinstance(outcome, (Challenge, Failure))
                    continue
                challenge = await exchange.start(first)
                assert isinstance(challenge, Challenge)
                client.set_server_first(challenge.data.decode())
                final = client.get_client_final().encode()
                mangled = mangle(final)
                outcome = await exchange.respond(mangled)
                assert isinstance(outcome, (Success, Failure))
                if isinstance(outcome, Success):
                    # only another spelling of the same proof may pass (base64 leaves the
                    # last character's low bits unused): the signed part is unchanged
                    signed, _, proof = final.rpartition(b",p=")
                    assert mangled.startswith(signed + b",p="), mangled
                    spelled = mangled[len(signed) + 3 :]
                    assert base64.b64decode(spelled) == base64.b64decode(proof), mangled

    asyncio.run(run())
