"""aioxmpp against a running fastxmpp: one scenario per run, driven by
tests/test_interop_aioxmpp.py. Runs in .venv-aioxmpp (see requirements.txt beside this file).

    scenarios.py SCENARIO --port PORT --ca CA_FILE --password PW --users A,B[,C] [--room JID]

Prints what the clients saw as one JSON object on stdout; the test asserts on it. A step that
never completes raises TimeoutError naming what was awaited (exit code 1, traceback on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aioxmpp
import aioxmpp.carbons
import aioxmpp.connector
import aioxmpp.dispatcher
import aioxmpp.forms
import aioxmpp.muc
import aioxmpp.pep
import aioxmpp.pubsub
import aioxmpp.roster
import aioxmpp.security_layer
import aioxmpp.vcard
import aioxmpp.vcard.xso
import aioxmpp.xso
from lxml import etree

STEP_TIMEOUT = 10.0
NICK_NS = "http://jabber.org/protocol/nick"  # XEP-0172 user nickname, a PEP payload
VCARD_NS = "vcard-temp"


@aioxmpp.pubsub.xso.as_payload_class
class Nick(aioxmpp.xso.XSO):
    TAG = (NICK_NS, "nick")
    text = aioxmpp.xso.Text(default=None)

    def __init__(self, text: str | None = None) -> None:
        super().__init__()
        self.text = text


class OneMechanism(aioxmpp.security_layer.PasswordSASLProvider):
    """aioxmpp picks the strongest mechanism offered; this makes it use the one asked for
    (and fail if the server does not offer it)."""

    def __init__(self, password: str, mechanism: str) -> None:
        async def password_provider(_jid: Any, _attempt: int) -> str:
            return password

        super().__init__(password_provider)
        self.mechanism = mechanism

    def _find_supported(self, features: Any, mechanism_classes: Any) -> Any:
        offered = features[aioxmpp.security_layer.SASLMechanisms].get_mechanism_list()
        if self.mechanism not in offered:
            raise AssertionError(f"{self.mechanism} not offered, only {offered}")
        for mechanism_class in mechanism_classes:
            token = mechanism_class.any_supported([self.mechanism])
            if token is not None:
                return mechanism_class, token
        return None, None


class Session:
    """Connects clients with the test CA (certificates verified, never skipped) and STARTTLS
    on the server's loopback port."""

    def __init__(self, args: argparse.Namespace, stack: contextlib.AsyncExitStack) -> None:
        self.args = args
        self.stack = stack

    def _tls_context(self) -> Any:
        context = aioxmpp.security_layer.default_ssl_context()
        context.load_verify_locations(self.args.ca)
        return context

    async def connect(
        self,
        localpart: str,
        resource: str,
        mechanism: str = "SCRAM-SHA-256",
        notify: tuple[str, ...] = (),
    ) -> Peer:
        security = aioxmpp.security_layer.SecurityLayer(
            self._tls_context,
            aioxmpp.security_layer.PKIXCertificateVerifier,
            True,  # TLS required
            (OneMechanism(self.args.password, mechanism),),
        )
        client = aioxmpp.PresenceManagedClient(
            aioxmpp.JID.fromstr(f"{localpart}@localhost/{resource}"),
            security,
            override_peer=[("127.0.0.1", self.args.port, aioxmpp.connector.STARTTLSConnector())],
        )
        client.presence = aioxmpp.PresenceState(True)  # available once bound
        # Services summoned before the stream starts: the roster is fetched at login, which
        # makes the resource an interested one (RFC 6121 §2.1.6), and the caps in the initial
        # presence carry the '+notify' features (XEP-0163 §4.3).
        peer = Peer(client, notify)
        await asyncio.wait_for(self.stack.enter_async_context(client.connected()), STEP_TIMEOUT)
        await wait_until(lambda: peer.roster_loaded.is_set(), f"{client.local_jid}'s roster")
        return peer


class Peer:
    """A client with the services the scenarios use, and what it received."""

    def __init__(self, client: aioxmpp.PresenceManagedClient, notify: tuple[str, ...]) -> None:
        self.client = client
        self.jid = client.local_jid
        self.roster = client.summon(aioxmpp.RosterClient)
        self.muc = client.summon(aioxmpp.MUCClient)
        self.pep = client.summon(aioxmpp.PEPClient)
        self.carbons = client.summon(aioxmpp.CarbonsClient)
        self.vcard = client.summon(aioxmpp.vcard.VCardService)
        self.pep_nodes = {node: self.pep.claim_pep_node(node, notify=True) for node in notify}
        self.roster_loaded = asyncio.Event()
        self.roster.on_initial_roster_received.connect(lambda: self.roster_loaded.set())
        self.messages: list[aioxmpp.Message] = []
        dispatcher = client.summon(aioxmpp.dispatcher.SimpleMessageDispatcher)
        dispatcher.register_callback(None, None, self.messages.append)
        self.presence: list[dict[str, Any]] = []
        # The stream's presence filter sees every presence before the services consume it.
        client.stream.app_inbound_presence_filter.register(self._on_presence, 0)

    def _on_presence(self, stanza: aioxmpp.Presence) -> aioxmpp.Presence:
        self.presence.append(
            {
                "from": str(stanza.from_),
                "to": str(stanza.to) if stanza.to is not None else None,
                "type": stanza.type_.value,
                "show": stanza.show.value,
                "status": stanza.status.any() if stanza.status else None,
            }
        )
        return stanza


async def wait_until(check: Callable[[], Any], what: str, timeout: float = STEP_TIMEOUT) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (result := check()):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"never got {what}")
        await asyncio.sleep(0.02)
    return result


async def wait_for(awaitable: Awaitable[Any], what: str) -> Any:
    try:
        return await asyncio.wait_for(awaitable, STEP_TIMEOUT)
    except TimeoutError:
        raise TimeoutError(f"never got {what}") from None


def message_summary(msg: aioxmpp.Message) -> dict[str, Any]:
    return {
        "from": str(msg.from_),
        "to": str(msg.to),
        "type": msg.type_.value,
        "body": msg.body.any() if msg.body else None,
    }


async def subscribe_both_ways(a: Peer, b: Peer) -> None:
    """RFC 6121 §3: a asks, b approves and asks back, a approves; both rosters end at 'both'."""
    for peer in (a, b):
        peer.roster.on_subscribe.connect(
            lambda stanza, peer=peer: peer.roster.approve(stanza.from_.bare())
        )
    asked = asyncio.Event()
    b.roster.on_subscribe.connect(lambda _stanza: asked.set())
    a.roster.subscribe(b.jid.bare())
    await wait_for(asked.wait(), "the subscription request at b")
    b.roster.subscribe(a.jid.bare())
    for peer, contact in ((a, b), (b, a)):
        await wait_until(
            lambda peer=peer, contact=contact: (
                (item := peer.roster.items.get(contact.jid.bare())) and item.subscription == "both"
            ),
            f"{peer.jid}'s subscription 'both' with {contact.jid.bare()}",
        )


def chat(to: aioxmpp.JID, text: str, type_: Any = aioxmpp.MessageType.CHAT) -> aioxmpp.Message:
    msg = aioxmpp.Message(type_, to=to)
    msg.body[None] = text
    return msg


# --- scenarios ---------------------------------------------------------------------------


async def scenario_login(session: Session) -> dict[str, Any]:
    peer = await session.connect(session.args.users[0], "login", session.args.mechanism)
    return {"jid": str(peer.jid)}


async def scenario_roster_presence_messages(session: Session) -> dict[str, Any]:
    name_a, name_b = session.args.users[:2]
    a = await session.connect(name_a, "desk")
    b = await session.connect(name_b, "phone")
    await subscribe_both_ways(a, b)

    # Once subscribed both ways, each gets the other's available presence (RFC 6121 §3.1.5,
    # §4.4.2).
    for peer, contact in ((a, b), (b, a)):
        await wait_until(
            lambda peer=peer, contact=contact: any(
                p["from"] == str(contact.jid) and p["type"] is None for p in peer.presence
            ),
            f"available presence of {contact.jid} at {peer.jid}",
        )
    # A presence change is broadcast to the contact (RFC 6121 §4.4.2).
    a.client.set_presence(aioxmpp.PresenceState(True, aioxmpp.PresenceShow.AWAY), "out for lunch")
    await wait_until(
        lambda: any(p["status"] == "out for lunch" for p in b.presence), "the away presence"
    )

    # Messages both ways: to the bare JID, and the reply to the full JID (RFC 6121 §8.5).
    await a.client.send(chat(b.jid.bare(), "hello bob"))
    await wait_until(lambda: any(m.body for m in b.messages), "the message at b")
    await b.client.send(chat(a.jid, "hello alice"))
    await wait_until(lambda: any(m.body for m in a.messages), "the reply at a")

    # A name and a group on a's roster item for b come back in the roster push (RFC 6121 §2.3).
    await a.roster.set_entry(b.jid.bare(), name="Bob", add_to_groups={"Friends"})
    await wait_until(
        lambda: a.roster.items[b.jid.bare()].name == "Bob", "the roster push with the name"
    )
    item = a.roster.items[b.jid.bare()]
    named = {"name": item.name, "groups": sorted(item.groups)}

    # Removing the item cancels both subscriptions (RFC 6121 §2.5.2): b sees a go offline
    # and its own item for a drops to 'none'.
    await a.roster.remove_entry(b.jid.bare())
    await wait_until(
        lambda: any(p["from"] == str(a.jid) and p["type"] == "unavailable" for p in b.presence),
        "a's unavailable presence at b",
    )
    await wait_until(
        lambda: (item := b.roster.items.get(a.jid.bare())) is None or item.subscription == "none",
        "b's roster item for a at 'none'",
    )
    item_at_b = b.roster.items.get(a.jid.bare())
    return {
        "a": str(a.jid),
        "b": str(b.jid),
        "presence_at_a": a.presence,
        "presence_at_b": b.presence,
        "messages_at_a": [message_summary(m) for m in a.messages if m.body],
        "messages_at_b": [message_summary(m) for m in b.messages if m.body],
        "named_item": named,
        "b_item_for_a_after_removal": item_at_b.subscription if item_at_b else None,
    }


async def scenario_muc(session: Session) -> dict[str, Any]:
    name_a, name_b = session.args.users[:2]
    room_jid = aioxmpp.JID.fromstr(session.args.room)
    a = await session.connect(name_a, "muc")
    b = await session.connect(name_b, "muc")

    # Creation (XEP-0045 §10.1.2): the first occupant gets status 201 and the owner role.
    room_a, joined_a = a.muc.join(room_jid, "owner")
    created: dict[str, Any] = {}
    room_a.on_muc_enter.connect(
        lambda presence, occupant, muc_status_codes=frozenset(), **_: created.update(
            codes=sorted(int(getattr(c, "value", c)) for c in muc_status_codes),
            role=str(occupant.role),
            affiliation=str(occupant.affiliation),
        )
    )
    await wait_for(joined_a, "the room's self-presence")
    # The subject (empty for a new room) ends the join (XEP-0045 §7.2.15, §7.2.16): a
    # client counts itself fully in the room only after it.
    await wait_until(
        lambda: room_a.muc_state == aioxmpp.muc.RoomState.ACTIVE, "the subject after creation"
    )
    # An instant room: the owner accepts the default configuration (§10.1.2).
    await a.muc.set_room_config(room_jid, aioxmpp.forms.Data(aioxmpp.forms.DataType.SUBMIT))

    said_at_a: list[list[str]] = []
    room_a.on_message.connect(
        lambda msg, member, source, **_: said_at_a.append(
            [msg.from_.resource, msg.body.any() if msg.body else ""]
        )
    )
    for text in ("first", "second"):
        room_a.send_message(chat(room_jid, text, aioxmpp.MessageType.GROUPCHAT))
    await wait_until(lambda: len(said_at_a) >= 2, "a's own messages reflected by the room")

    # A later occupant gets the history (with delay stamps) before the subject (§7.2.15).
    room_b, joined_b = b.muc.join(room_jid, "guest")
    history_at_b: list[dict[str, Any]] = []
    room_b.on_message.connect(
        lambda msg, member, source, **_: history_at_b.append(
            {
                "nick": msg.from_.resource,
                "body": msg.body.any() if msg.body else None,
                "delayed": bool(msg.xep0203_delay),
                "state": room_b.muc_state.name,
            }
        )
    )
    await wait_for(joined_b, "b's self-presence")
    await wait_until(lambda: room_b.muc_state == aioxmpp.muc.RoomState.ACTIVE, "b's subject")
    room_b.send_message(chat(room_jid, "hello room", aioxmpp.MessageType.GROUPCHAT))
    await wait_until(lambda: ["guest", "hello room"] in said_at_a, "b's message at a")
    return {
        "created": created,
        "history_at_b": history_at_b,
        "said_at_a": said_at_a,
        "occupants_at_a": sorted(member.nick for member in room_a.members),
    }


async def scenario_vcard(session: Session) -> dict[str, Any]:
    name_a, name_b = session.args.users[:2]
    a = await session.connect(name_a, "vcard")
    b = await session.connect(name_b, "vcard")
    card = aioxmpp.vcard.xso.VCard()
    etree.SubElement(card.elements, etree.QName(VCARD_NS, "FN")).text = "Alice Liddell"
    card.set_photo_data("image/png", b"not really a png")
    await a.vcard.set_vcard(card)

    def summary(vcard: Any) -> dict[str, Any]:
        full_name = vcard.elements.find(etree.QName(VCARD_NS, "FN"))
        return {
            "fn": full_name.text if full_name is not None else None,
            "photo_type": vcard.get_photo_mime_type(),
            "photo": (vcard.get_photo_data() or b"").decode("latin-1"),
        }

    # XEP-0054 §3.1: the owner reads it back; §3.3: anyone reads it at the bare JID.
    own = await a.vcard.get_vcard()
    other = await b.vcard.get_vcard(a.jid.bare())
    return {"own": summary(own), "read_by_b": summary(other)}


async def scenario_pep(session: Session) -> dict[str, Any]:
    name_a, name_b = session.args.users[:2]
    a = await session.connect(name_a, "pep")
    # b wants nick notifications: '+notify' in its XEP-0115 caps, which the server verifies
    # with a disco#info query to b (XEP-0163 §4.3, XEP-0115 §5.4).
    b = await session.connect(name_b, "pep", notify=(NICK_NS,))
    notified: list[dict[str, Any]] = []
    b.pep_nodes[NICK_NS].on_item_publish.connect(
        lambda jid, node, item, message=None: notified.append(
            {"from": str(jid), "node": node, "nick": item.registered_payload.text}
        )
    )
    # The default access model is 'presence' (XEP-0163 §4.2): b needs a subscription to a.
    await subscribe_both_ways(a, b)
    await a.pep.publish(NICK_NS, Nick("Ally"))
    await wait_until(lambda: notified, "the PEP notification at b")
    return {"notified": notified, "publisher": str(a.jid.bare())}


async def scenario_carbons(session: Session) -> dict[str, Any]:
    name_a, name_b = session.args.users[:2]
    desk = await session.connect(name_a, "desk")
    phone = await session.connect(name_a, "phone")
    b = await session.connect(name_b, "carbons")
    for peer in (desk, phone):
        await peer.carbons.enable()  # XEP-0280 §4

    await b.client.send(chat(desk.jid, "to the desk"))
    await wait_until(lambda: desk.messages, "b's message at the desk")
    await desk.client.send(chat(b.jid, "from the desk"))
    await wait_until(lambda: len(phone.messages) >= 2, "two carbons at the phone")
    await wait_until(lambda: b.messages, "the desk's message at b")

    def carbon(msg: aioxmpp.Message) -> dict[str, Any]:
        for kind in ("received", "sent"):
            wrapper = getattr(msg, f"xep0280_{kind}")
            if wrapper is not None:
                return {"kind": kind, "wrapper_from": str(msg.from_)} | message_summary(
                    wrapper.stanza
                )
        return {"kind": None} | message_summary(msg)

    return {
        "desk": str(desk.jid),
        "phone": str(phone.jid),
        "b": str(b.jid),
        "at_phone": [carbon(m) for m in phone.messages],
        "at_desk": [message_summary(m) for m in desk.messages],
    }


SCENARIOS: dict[str, Callable[[Session], Awaitable[dict[str, Any]]]] = {
    "login": scenario_login,
    "roster_presence_messages": scenario_roster_presence_messages,
    "muc": scenario_muc,
    "vcard": scenario_vcard,
    "pep": scenario_pep,
    "carbons": scenario_carbons,
}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--users", type=lambda s: s.split(","), required=True)
    parser.add_argument("--mechanism", default="SCRAM-SHA-256")
    parser.add_argument("--room")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    async with contextlib.AsyncExitStack() as stack:
        result = await SCENARIOS[args.scenario](Session(args, stack))
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
