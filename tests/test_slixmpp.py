"""A real client library (slixmpp) against the server: STARTTLS with the test CA, SCRAM-SHA-1
and SCRAM-SHA-256, binding, messages to full and bare JIDs, an iq to an absent resource."""

from __future__ import annotations

import asyncio
import logging

import pytest
from conftest import ServerProcess
from slix_client import SlixClient
from slixmpp import ClientXMPP
from slixmpp.exceptions import IqError

logging.getLogger("slixmpp").setLevel(logging.WARNING)


async def connect(server: ServerProcess, jid: str, mechanism: str, ca_file: str) -> SlixClient:
    client = SlixClient(jid, ca_file, mechanism=mechanism)
    await client.online(server.port)
    return client


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
async def test_two_accounts_exchange_messages(
    server: ServerProcess, ca_file: str, mechanism: str
) -> None:
    alice = await connect(server, "alice@localhost/slix", mechanism, ca_file)
    bob = await connect(server, "bob@localhost/slix", mechanism, ca_file)
    try:
        assert alice.authenticated and bob.authenticated
        assert str(alice.boundjid) == "alice@localhost/slix"
        assert alice.features and "starttls" in alice.features
        # TLS really is on: slixmpp's transport carries an SSL object.
        assert alice.transport.get_extra_info("ssl_object") is not None
        await asyncio.sleep(0.2)  # let both initial presences be processed

        alice.send_message(mto="bob@localhost/slix", mbody="to full", mtype="chat")
        msg = await asyncio.wait_for(bob.messages.get(), 10)
        assert msg["body"] == "to full"
        assert str(msg["from"]) == "alice@localhost/slix"

        bob.send_message(mto="alice@localhost", mbody="to bare", mtype="chat")
        msg = await asyncio.wait_for(alice.messages.get(), 10)
        assert msg["body"] == "to bare"
        assert str(msg["from"]) == "bob@localhost/slix"
        assert str(msg["to"]) == "alice@localhost"

        iq = alice.make_iq_get(queryxmlns="jabber:iq:version", ito="bob@localhost/absent")
        with pytest.raises(IqError) as err:
            await iq.send(timeout=10)
        assert err.value.iq["error"]["condition"] == "service-unavailable"
    finally:
        alice.disconnect()
        bob.disconnect()
        await asyncio.sleep(0.1)


async def test_wrong_password_is_refused(server: ServerProcess, ca_file: str) -> None:
    client = ClientXMPP("alice@localhost/x", "not the password")
    client.ca_certs = ca_file
    failed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    client.add_event_handler("failed_all_auth", lambda _e: failed.done() or failed.set_result(True))
    client.connect("127.0.0.1", server.port)
    try:
        assert await asyncio.wait_for(failed, 20)
        assert not client.authenticated
    finally:
        client.disconnect()
        await asyncio.sleep(0.1)
