"""What three real clients send, stanza for stanza, for four everyday tasks, replayed over
raw streams; each test asserts what that client relies on in the answers.

The sequences were read from the clients' sources (a reference for the stanzas, not code
taken over):

- Conversations 2.12.8 (github.com/iNPUTmice/Conversations, branch master; development
  continues on Codeberg): joining a room in
  `services/XmppConnectionService.java` (`joinMuc`: room disco#info first, then presence
  with caps and `<history maxchars='0'/>` when the room has MAM, else `<history since=.../>`);
  bookmarks in the same file (`fetchBookmarks`/`pushBookmarksPrivateXml`: jabber:iq:private
  unless the account offers urn:xmpp:bookmarks-conversion:0, then `pushBookmarksPep` with
  `xmpp/pep/PublishOptions.java` persist_items + access_model whitelist, item 'current');
  archive catch-up in `services/MessageArchiveService.java` (`catchup`, `processFin`: page
  on <last/> until complete='true' or no <last/>) and `generator/IqGenerator.java`
  (`queryMessageArchiveManagement`: no 'to', queryid, form with start, RSM <after/> and
  <max>50</max>); stream management in `xmpp/XmppConnection.java` (`enableStreamManagement`
  after bind, `<r/>` on <enabled/>, `processResumed` needs 'h' and sends <r/>,
  `processFailed` acknowledges up to 'h' and binds).
- Gajim (github.com/gajim/gajim) on python-nbxmpp (github.com/gajim/python-nbxmpp): joining
  in `gajim/common/modules/muc.py` (`join` → room disco, `_join`: presence with
  `<history maxchars='0'/>`; the join completes on the subject, `_on_subject_change`);
  bookmarks in `gajim/common/modules/bookmarks.py` (`_bookmark_module`: native XEP-0402
  only when the account lists publish-options, urn:xmpp:bookmarks:1#compat-pep and
  pubsub#config-node-max) and `nbxmpp/modules/bookmarks/native_bookmarks.py`
  (BOOKMARK_OPTIONS), `nbxmpp/modules/pubsub.py` (`publish` with force_node_options: on
  precondition-not-met `reconfigure_node`, then publish again); archive in
  `gajim/common/modules/mam.py` (`_execute_query`: to the own bare JID, start a week back
  or after the last known id, page on <last/> until complete) and `nbxmpp/modules/mam.py`
  (`make_query`: <max>70</max>; an incomplete page without <first/>/<last/> is malformed);
  stream management in `nbxmpp/smacks.py` (enable resume='true', `resume_request`,
  `_on_resumed` validates 'h', `_on_failed` reads 'h' of <item-not-found/>).
- Dino (github.com/dino/dino): joining in `xmpp-vala/src/module/xep/0045_muc/module.vala`
  (`enter`: `<x/>` with `<mav xmlns='urn:xmpp:muc:affiliations:1'/>`, `<history/>` only
  for since/maxchars; done at the self-presence, status 110) and
  `libdino/src/service/muc_manager.vala` (`join`: room disco first, affiliation lists
  member/admin/owner after); bookmarks in `xmpp-vala/src/module/xep/0402_bookmarks2.vala`
  (only with urn:xmpp:bookmarks:1#compat on the account, `muc_manager.vala`), else
  `0048_bookmarks.vala` (private XML), publish and `change_node_config` in
  `0060_pubsub.vala`; archive in `0313_2_message_archive_management.vala` and
  `0059_result_set_management.vala` (start, <max>20</max>, <before/> and then
  <before>first</before> until complete; <first/> and <last/> both or neither); stream
  management in `0198_stream_management.vala`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import PASSWORD, FreshNames, ServerProcess, module_server
from lxml import etree
from test_pep import CAPS_NODE, caps_ver, disco_answer, is_caps_query
from test_roster import sync
from xmpp_raw import BIND, CLIENT, SASL, RawClient, stanza_error

MUC = "http://jabber.org/protocol/muc"
USER = MUC + "#user"
ADMIN = MUC + "#admin"
OWNER = MUC + "#owner"
DATA = "jabber:x:data"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
PUBSUB = "http://jabber.org/protocol/pubsub"
PUBSUB_OWNER = PUBSUB + "#owner"
PUBSUB_ERRORS = PUBSUB + "#errors"
PUBSUB_EVENT = PUBSUB + "#event"
PUBLISH_OPTIONS = PUBSUB + "#publish-options"
NODE_CONFIG = PUBSUB + "#node_config"
BOOKMARKS_1 = "urn:xmpp:bookmarks:1"
LEGACY_BOOKMARKS = "storage:bookmarks"
PRIVATE = "jabber:iq:private"
MAM = "urn:xmpp:mam:2"
RSM = "http://jabber.org/protocol/rsm"
SID = "urn:xmpp:sid:0"
SM = "urn:xmpp:sm:3"
DELAY = "urn:xmpp:delay"
CAPS = "http://jabber.org/protocol/caps"
SERVICE = "conference.localhost"
PRESENCE = f"{{{CLIENT}}}presence"
MESSAGE = f"{{{CLIENT}}}message"
IQ = f"{{{CLIENT}}}iq"
CAPS_VER = "q07IKJEyjvHSyhy//CH0CxmKi8w="  # any XEP-0115 'ver': the server may ask for it
MAX_PAGE = 3  # small, so that every client's catch-up has to page

POOL = FreshNames("cf", 80)


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(
        ca,
        tmp_path_factory,
        POOL,
        f"[mam]\nmax_page = {MAX_PAGE}\n[stream_management]\nresume_timeout = 3\n",
    )


@pytest.fixture
def users() -> Iterator[str]:
    return POOL.names()


class Client:
    """One logged-in raw client: its stream and its JIDs."""

    def __init__(self, c: RawClient, name: str, full: str) -> None:
        self.c = c
        self.name = name
        self.bare = f"{name}@localhost"
        self.full = full

    def send(self, data: str) -> None:
        self.c.send(data)

    def iq(self, itype: str, payload: str, to: str | None = None, iq_id: str = "q") -> Any:
        """Send an iq; its answer. What arrives before it stays queued for later reads."""
        target = "" if to is None else f" to='{to}'"
        self.send(f"<iq type='{itype}' id='{iq_id}'{target}>{payload}</iq>")
        return self.until(lambda el: el.tag == IQ and el.get("id") == iq_id)[-1]

    def until(self, last: Any) -> list[Any]:
        """Every element up to and including the first one `last` accepts."""
        seen = []
        while True:
            el = self.c.next()
            seen.append(el)
            if last(el):
                return seen


@pytest.fixture
def login(srv: ServerProcess, ca_file: str, clients: list[RawClient]) -> Any:
    def connect(name: str, resource: str = "r", presence: bool = True) -> Client:
        c = srv.client()
        clients.append(c)
        full = c.login(ca_file, name, PASSWORD, resource)
        if presence:
            c.send("<presence/>")
            sync(c)
        return Client(c, name, full)

    return connect


def status_codes(el: Any) -> set[str]:
    x = el.find(f"{{{USER}}}x")
    return set() if x is None else {s.get("code") for s in x.findall(f"{{{USER}}}status")}


def is_subject(el: Any) -> bool:
    # XEP-0045 §7.2.15: a groupchat message with <subject/> and no <body/>.
    return (
        el.tag == MESSAGE
        and el.find(f"{{{CLIENT}}}subject") is not None
        and el.find(f"{{{CLIENT}}}body") is None
    )


def body_of(el: Any) -> str | None:
    return el.findtext(f"{{{CLIENT}}}body") if el.tag == MESSAGE else None


def form(form_type: str, fields: dict[str, str]) -> str:
    """An XEP-0004 submit form as the clients build it (FORM_TYPE first)."""
    text = (
        f"<x xmlns='{DATA}' type='submit'><field var='FORM_TYPE' type='hidden'>"
        f"<value>{form_type}</value></field>"
    )
    for var, value in fields.items():
        text += f"<field var='{var}'><value>{value}</value></field>"
    return text + "</x>"


def features_of(info: Any) -> set[str]:
    return {f.get("var") for f in info.iter(f"{{{DISCO_INFO}}}feature")}


# --- (1) joining a room ------------------------------------------------------------------------


def room_with_history(owner: Client, messages: int = 3, subject: str = "Topic") -> str:
    """A room `owner` created (instant, §10.1.2), with `messages` messages and a subject."""
    room = f"room-{owner.name}@{SERVICE}"
    owner.send(f"<presence to='{room}/owner'><x xmlns='{MUC}'/></presence>")
    created = owner.until(lambda el: el.tag == PRESENCE and "110" in status_codes(el))[-1]
    assert "201" in status_codes(created), etree.tostring(created)
    reply = owner.iq(
        "set", f"<query xmlns='{OWNER}'><x xmlns='{DATA}' type='submit'/></query>", room
    )
    assert reply.get("type") == "result", etree.tostring(reply)
    for n in range(messages):
        owner.send(f"<message to='{room}' type='groupchat'><body>m{n}</body></message>")
    owner.send(f"<message to='{room}' type='groupchat'><subject>{subject}</subject></message>")
    sync(owner.c)
    return room


def room_disco(client: Client, room: str) -> set[str]:
    """What Conversations, Gajim and Dino all ask before they join."""
    info = client.iq("get", f"<query xmlns='{DISCO_INFO}'/>", room, "disco-room")
    assert info.get("type") == "result", etree.tostring(info)
    features = features_of(info)
    assert MUC in features
    return features


def test_conversations_joins_with_history_since(login: Any, users: Iterator[str]) -> None:
    owner, user = login(next(users)), login(next(users))
    room = room_with_history(owner)
    features = room_disco(user, room)
    # A temporary room keeps no archive ([muc] archive_rooms = "persistent"): Conversations
    # falls back to MUC history since its last message (the epoch for a conversation it
    # never saw: everything the room keeps). Room archives: test_muc_archive.py.
    assert MAM not in features
    user.send(
        f"<presence to='{room}/conv'><show>chat</show>"
        f"<c xmlns='{CAPS}' hash='sha-1' node='http://conversations.im' ver='{CAPS_VER}'/>"
        f"<x xmlns='{MUC}'><history since='1970-01-01T00:00:00.000Z'/></x></presence>"
    )
    seen = user.until(is_subject)
    presences = [el for el in seen if el.tag == PRESENCE]
    # §7.2.3: the others first, the self-presence (110) last; then history, then subject.
    assert [p.get("from") for p in presences] == [f"{room}/owner", f"{room}/conv"]
    assert "110" in status_codes(presences[-1])
    self_at = seen.index(presences[-1])
    history = [el for el in seen[self_at:] if body_of(el) is not None]
    assert [body_of(el) for el in history] == ["m0", "m1", "m2"]
    assert all(el.find(f"{{{DELAY}}}delay") is not None for el in history)
    assert seen[-1].findtext(f"{{{CLIENT}}}subject") == "Topic"
    assert seen[-1].get("from") == f"{room}/owner"


def test_gajim_joins_with_maxchars_0_and_waits_for_the_subject(
    login: Any, users: Iterator[str]
) -> None:
    owner, user = login(next(users)), login(next(users))
    room = room_with_history(owner)
    room_disco(user, room)
    user.send(
        f"<presence to='{room}/gajim'><show>away</show><status>brb</status>"
        f"<c xmlns='{CAPS}' hash='sha-1' node='https://gajim.org' ver='{CAPS_VER}'/>"
        f"<x xmlns='{MUC}'><history maxchars='0'/></x></presence>"
    )
    seen = user.until(is_subject)  # Gajim: JOINING -> JOINED on the subject
    assert [body_of(el) for el in seen if body_of(el) is not None] == []
    self_presence = next(el for el in seen if el.tag == PRESENCE and "110" in status_codes(el))
    assert self_presence.findtext(f"{{{CLIENT}}}show") == "away"
    assert seen[-1].findtext(f"{{{CLIENT}}}subject") == "Topic"
    # Gajim then asks for the affiliation lists it may see (_request_affiliation_list).
    reply = user.iq("get", f"<query xmlns='{ADMIN}'><item affiliation='owner'/></query>", room)
    assert reply.get("type") in ("result", "error")


def test_gajim_joining_a_room_that_does_not_exist_yet(login: Any, users: Iterator[str]) -> None:
    """An autojoin bookmark for a room that is gone: Gajim sends its usual join (JOINING,
    not CREATING) and completes it only on the subject, which a new room sends empty."""
    user = login(next(users))
    room = f"gone-{user.name}@{SERVICE}"
    user.send(
        f"<presence to='{room}/gajim'><x xmlns='{MUC}'><history maxchars='0'/></x></presence>"
    )
    seen = user.until(lambda el: el.tag == PRESENCE and "110" in status_codes(el))
    assert "201" in status_codes(seen[-1])
    after = sync(user.c)
    assert any(is_subject(el) and el.findtext(f"{{{CLIENT}}}subject") == "" for el in after), [
        etree.tostring(el) for el in after
    ]


def test_dino_joins_with_mav_and_reads_affiliations(login: Any, users: Iterator[str]) -> None:
    owner, user = login(next(users)), login(next(users))
    room = room_with_history(owner)
    room_disco(user, room)
    # First join, no MAM on the room: no <history/> at all (the room's default), and the
    # XEP-0463 <mav/> Dino always puts into <x/>, which a server without it ignores.
    user.send(
        f"<presence to='{room}/dino' id='dino-join'><x xmlns='{MUC}'>"
        "<mav xmlns='urn:xmpp:muc:affiliations:1'/></x></presence>"
    )
    seen = user.until(lambda el: el.tag == PRESENCE and "110" in status_codes(el))
    assert seen[-1].get("type") is None and seen[-1].get("from") == f"{room}/dino"
    rest = user.until(is_subject)
    assert [body_of(el) for el in rest if body_of(el) is not None] == ["m0", "m1", "m2"]
    # muc_manager.vala: member, admin and owner lists; a participant may be refused them,
    # and then Dino keeps what it knows (an error is an answer, not a hang).
    for n, affiliation in enumerate(("member", "admin", "owner")):
        reply = user.iq(
            "get",
            f"<query xmlns='{ADMIN}'><item affiliation='{affiliation}'/></query>",
            room,
            f"aff{n}",
        )
        assert reply.get("type") == "result" or stanza_error(reply) == "forbidden"
    reply = owner.iq("get", f"<query xmlns='{ADMIN}'><item affiliation='owner'/></query>", room)
    assert [i.get("jid") for i in reply.iter(f"{{{ADMIN}}}item")] == [owner.bare]


# --- (2) bookmarks -----------------------------------------------------------------------------

NATIVE_OPTIONS = {  # nbxmpp BOOKMARK_OPTIONS; Dino sends the last four
    "pubsub#notify_delete": "true",
    "pubsub#notify_retract": "true",
    "pubsub#persist_items": "true",
    "pubsub#max_items": "max",
    "pubsub#access_model": "whitelist",
    "pubsub#send_last_published_item": "never",
}


def publish_bookmark(client: Client, room: str, name: str, iq_id: str) -> Any:
    conference = (
        f"<conference xmlns='{BOOKMARKS_1}' autojoin='true' name='{name}'>"
        f"<nick>{client.name}</nick></conference>"
    )
    return client.iq(
        "set",
        f"<pubsub xmlns='{PUBSUB}'><publish node='{BOOKMARKS_1}'><item id='{room}'>{conference}"
        f"</item></publish><publish-options>{form(PUBLISH_OPTIONS, NATIVE_OPTIONS)}"
        "</publish-options></pubsub>",
        iq_id=iq_id,
    )


def bookmark_items(client: Client) -> dict[str, str | None]:
    reply = client.iq("get", f"<pubsub xmlns='{PUBSUB}'><items node='{BOOKMARKS_1}'/></pubsub>")
    assert reply.get("type") == "result", etree.tostring(reply)
    return {
        item.get("id"): item.find(f"{{{BOOKMARKS_1}}}conference").get("name")
        for item in reply.iter(f"{{{PUBSUB}}}item")
    }


def test_account_features_decide_which_bookmarks_clients_use(
    login: Any, users: Iterator[str]
) -> None:
    """What the three clients look for on the account before they pick a storage."""
    user = login(next(users))
    info = user.iq("get", f"<query xmlns='{DISCO_INFO}'/>", user.bare)
    features = features_of(info)
    assert {PUBLISH_OPTIONS, PUBSUB + "#config-node-max"} <= features
    # XEP-0402 §5.3 compatibility (the bookmarks module): Gajim (#compat-pep) and Dino
    # (#compat) use XEP-0402; Conversations (no bookmarks-conversion, XEP-0411 is
    # deprecated) keeps XEP-0048 in private XML, which the server keeps in sync with it.
    assert BOOKMARKS_1 + "#compat" in features
    assert BOOKMARKS_1 + "#compat-pep" in features
    assert "urn:xmpp:bookmarks-conversion:0" not in features


def test_native_bookmarks_gajim_and_dino(login: Any, users: Iterator[str]) -> None:
    phone = login(next(users))
    # nbxmpp request_bookmarks before anything was stored: the node does not exist.
    reply = phone.iq("get", f"<pubsub xmlns='{PUBSUB}'><items node='{BOOKMARKS_1}'/></pubsub>")
    assert stanza_error(reply) == "item-not-found"
    for n, room in enumerate(("a@conference.localhost", "b@conference.localhost")):
        reply = publish_bookmark(phone, room, f"Room {n}", f"pub{n}")
        assert reply.get("type") == "result", etree.tostring(reply)
        published = reply.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish/{{{PUBSUB}}}item")
        assert published is not None and published.get("id") == room
    # max_items 'max' keeps every bookmark, not only the last one.
    assert bookmark_items(phone) == {
        "a@conference.localhost": "Room 0",
        "b@conference.localhost": "Room 1",
    }
    config = phone.iq(
        "get", f"<pubsub xmlns='{PUBSUB_OWNER}'><configure node='{BOOKMARKS_1}'/></pubsub>"
    )
    values = {f.get("var"): f.findtext(f"{{{DATA}}}value") for f in config.iter(f"{{{DATA}}}field")}
    assert values["pubsub#access_model"] == "whitelist"
    assert values["pubsub#send_last_published_item"] == "never"
    # Dino's remove_conference: a retract with notify='true'.
    reply = phone.iq(
        "set",
        f"<pubsub xmlns='{PUBSUB}'><retract node='{BOOKMARKS_1}' notify='true'>"
        "<item id='a@conference.localhost'/></retract></pubsub>",
    )
    assert reply.get("type") == "result"
    assert bookmark_items(phone) == {"b@conference.localhost": "Room 1"}


def online_with_notify(client: Client, node: str) -> list[Any]:
    """Available presence whose XEP-0115 caps ask for `node`+notify, as all three clients'
    caps do for their bookmark node; the server's caps query answered once. What else
    arrived meanwhile."""
    features = [CAPS, DISCO_INFO, f"{node}+notify"]
    ver = caps_ver(features)
    client.send(
        f"<presence><c xmlns='{CAPS}' hash='sha-1' node='{CAPS_NODE}' ver='{ver}'/></presence>"
    )
    seen = []
    for el in sync(client.c) + sync(client.c):
        if is_caps_query(el):
            client.send(disco_answer(el, features))
        else:
            seen.append(el)
    return seen + sync(client.c)


def bookmark_events(elements: list[Any]) -> list[tuple[str, str | None]]:
    found = []
    for el in elements:
        items = el.find(f"{{{PUBSUB_EVENT}}}event/{{{PUBSUB_EVENT}}}items")
        if el.tag == MESSAGE and items is not None and items.get("node") == BOOKMARKS_1:
            found += [(child.tag.split("}")[1], child.get("id")) for child in items]
    return found


def test_native_bookmarks_pushed_to_the_other_resources(login: Any, users: Iterator[str]) -> None:
    """Gajim (_bookmark_1_event_received), Dino (on_pupsub_item) and Conversations follow
    bookmark changes from their other devices through +notify events; with
    send_last_published_item 'never' a resource coming online gets none (it asks)."""
    name = next(users)
    phone, laptop = login(name, "phone"), login(name, "laptop", presence=False)
    online_with_notify(laptop, BOOKMARKS_1)
    reply = publish_bookmark(phone, f"a@{SERVICE}", "A", "pub-a")
    assert reply.get("type") == "result", etree.tostring(reply)
    assert bookmark_events(sync(laptop.c)) == [("item", f"a@{SERVICE}")]
    tablet = login(name, "tablet", presence=False)
    assert bookmark_events(online_with_notify(tablet, BOOKMARKS_1)) == []
    reply = phone.iq(
        "set",
        f"<pubsub xmlns='{PUBSUB}'><retract node='{BOOKMARKS_1}' notify='true'>"
        f"<item id='a@{SERVICE}'/></retract></pubsub>",
    )
    assert reply.get("type") == "result"
    for device in (laptop, tablet):
        assert bookmark_events(sync(device.c)) == [("retract", f"a@{SERVICE}")]


def test_native_bookmarks_precondition_not_met_then_reconfigured(
    login: Any, users: Iterator[str]
) -> None:
    """A node another client made with defaults: the publish-options fail, the client
    (nbxmpp reconfigure_node, Dino change_node_config) submits the node's own form with its
    values changed, and publishes again."""
    user = login(next(users))
    reply = user.iq(
        "set",
        f"<pubsub xmlns='{PUBSUB}'><publish node='{BOOKMARKS_1}'><item id='old@{SERVICE}'>"
        f"<conference xmlns='{BOOKMARKS_1}'/></item></publish></pubsub>",
    )
    assert reply.get("type") == "result"
    reply = publish_bookmark(user, f"new@{SERVICE}", "New", "pub-fails")
    # XEP-0060 §7.1.5: conflict with the pubsub#errors precondition-not-met.
    assert reply.get("type") == "error" and stanza_error(reply) == "conflict"
    assert reply.find(f"{{{CLIENT}}}error/{{{PUBSUB_ERRORS}}}precondition-not-met") is not None
    config = user.iq(
        "get", f"<pubsub xmlns='{PUBSUB_OWNER}'><configure node='{BOOKMARKS_1}'/></pubsub>"
    )
    x = config.find(f"{{{PUBSUB_OWNER}}}pubsub/{{{PUBSUB_OWNER}}}configure/{{{DATA}}}x")
    assert x is not None, etree.tostring(config)
    # Dino: every field of the returned form goes back, changed where the options say so.
    x.set("type", "submit")
    for field in x.findall(f"{{{DATA}}}field"):
        wanted = NATIVE_OPTIONS.get(field.get("var"))
        if wanted is not None:
            for value in field.findall(f"{{{DATA}}}value"):
                field.remove(value)
            etree.SubElement(field, f"{{{DATA}}}value").text = wanted
    submitted = etree.tostring(x).decode()
    reply = user.iq(
        "set",
        f"<pubsub xmlns='{PUBSUB_OWNER}'><configure node='{BOOKMARKS_1}'>{submitted}"
        "</configure></pubsub>",
    )
    assert reply.get("type") == "result", etree.tostring(reply)
    reply = publish_bookmark(user, f"new@{SERVICE}", "New", "pub-again")
    assert reply.get("type") == "result", etree.tostring(reply)
    assert set(bookmark_items(user)) == {f"old@{SERVICE}", f"new@{SERVICE}"}


def test_legacy_bookmarks_private_xml_conversations_and_dino(
    login: Any, users: Iterator[str]
) -> None:
    phone = login(next(users))
    query = f"<query xmlns='{PRIVATE}'><storage xmlns='{LEGACY_BOOKMARKS}'/></query>"
    reply = phone.iq("get", query)  # fetchBookmarks: nothing stored yet is an empty storage
    assert reply.get("type") == "result"
    storage = reply.find(f"{{{PRIVATE}}}query/{{{LEGACY_BOOKMARKS}}}storage")
    assert storage is not None and len(storage) == 0
    conferences = (
        f"<conference jid='a@{SERVICE}' autojoin='true' name='A'><nick>me</nick></conference>"
        f"<conference jid='b@{SERVICE}' autojoin='false'><password>pw</password></conference>"
    )
    reply = phone.iq(
        "set",
        f"<query xmlns='{PRIVATE}'><storage xmlns='{LEGACY_BOOKMARKS}'>{conferences}"
        "</storage></query>",
    )
    assert reply.get("type") == "result", etree.tostring(reply)
    laptop = login(phone.name, "laptop")
    reply = laptop.iq("get", query)
    stored = reply.findall(f"{{{PRIVATE}}}query/{{{LEGACY_BOOKMARKS}}}storage/*")
    assert [(c.get("jid"), c.get("autojoin")) for c in stored] == [
        (f"a@{SERVICE}", "true"),
        (f"b@{SERVICE}", "false"),
    ]
    assert stored[0].findtext(f"{{{LEGACY_BOOKMARKS}}}nick") == "me"
    assert stored[1].findtext(f"{{{LEGACY_BOOKMARKS}}}password") == "pw"


def test_legacy_bookmarks_pep_conversations(login: Any, users: Iterator[str]) -> None:
    """pushBookmarksPep: the whole storage as item 'current' of node storage:bookmarks,
    PublishOptions.persistentWhitelistAccess()."""
    user = login(next(users))
    storage = (
        f"<storage xmlns='{LEGACY_BOOKMARKS}'><conference jid='a@{SERVICE}' autojoin='true'/>"
        "</storage>"
    )
    options = {"pubsub#persist_items": "true", "pubsub#access_model": "whitelist"}
    for n in range(2):  # the second push finds the node as the first one made it
        reply = user.iq(
            "set",
            f"<pubsub xmlns='{PUBSUB}'><publish node='{LEGACY_BOOKMARKS}'><item id='current'>"
            f"{storage}</item></publish><publish-options>{form(PUBLISH_OPTIONS, options)}"
            "</publish-options></pubsub>",
            iq_id=f"push{n}",
        )
        assert reply.get("type") == "result", etree.tostring(reply)
    reply = user.iq("get", f"<pubsub xmlns='{PUBSUB}'><items node='{LEGACY_BOOKMARKS}'/></pubsub>")
    items = list(reply.iter(f"{{{PUBSUB}}}item"))
    assert [i.get("id") for i in items] == ["current"]


# --- (3) catching up with the archive ----------------------------------------------------------


def chat(sender: Client, to: str, bodies: list[str]) -> None:
    for body in bodies:
        sender.send(f"<message to='{to}' type='chat' id='{body}'><body>{body}</body></message>")
    sync(sender.c)


def query(
    client: Client, queryid: str, fields: dict[str, str], rsm: str, to: str | None
) -> tuple[list[str], Any]:
    """One MAM page as the clients read it: the bodies of the <result/>s carrying our
    queryid, in arrival order, and the <fin/>."""
    target = "" if to is None else f" to='{to}'"
    client.send(
        f"<iq type='set' id='iq-{queryid}'{target}><query xmlns='{MAM}' queryid='{queryid}'>"
        f"{form(MAM, fields)}<set xmlns='{RSM}'>{rsm}</set></query></iq>"
    )
    seen = client.until(lambda el: el.tag == IQ and el.get("id") == f"iq-{queryid}")
    bodies = []
    for el in seen[:-1]:
        result = el.find(f"{{{MAM}}}result")
        if result is None:
            continue
        assert result.get("queryid") == queryid and el.get("from") == client.bare
        inner = result.find(f"{{urn:xmpp:forward:0}}forwarded/{MESSAGE}")
        bodies.append(inner.findtext(f"{{{CLIENT}}}body"))
    fin = seen[-1].find(f"{{{MAM}}}fin")
    assert seen[-1].get("type") == "result" and fin is not None, etree.tostring(seen[-1])
    return bodies, fin


def rsm_value(fin: Any, name: str) -> str | None:
    return fin.findtext(f"{{{RSM}}}set/{{{RSM}}}{name}")


def stanza_id(message: Any, by: str) -> str:
    sid = next(s for s in message.iter(f"{{{SID}}}stanza-id") if s.get("by") == by)
    return str(sid.get("id"))


def test_conversations_catches_up_after_the_last_stanza_id(
    login: Any, users: Iterator[str]
) -> None:
    alice, bob = login(next(users)), login(next(users))
    chat(alice, bob.bare, ["seen1", "seen2"])
    got = [el for el in sync(bob.c) if body_of(el) is not None]
    reference = stanza_id(got[-1], bob.bare)  # Conversations keeps the last one it saw
    bob.c.close()
    new = [f"new{n}" for n in range(7)]
    chat(alice, bob.bare, new)
    bob = login(bob.name, "phone", presence=False)
    pages, after, collected = 0, reference, []
    while True:  # MessageArchiveService.processFin: next page after <last/>
        bodies, fin = query(bob, f"c{pages}", {}, f"<after>{after}</after><max>50</max>", None)
        pages += 1
        collected += bodies
        last = rsm_value(fin, "last")
        if fin.get("complete") == "true" or last is None:
            break
        assert len(bodies) == MAX_PAGE  # the server's cap, not the client's 50
        after = last
    assert collected == new
    assert pages == 3


def test_gajim_pages_forward_until_complete(login: Any, users: Iterator[str]) -> None:
    alice, bob = login(next(users)), login(next(users))
    sent = [f"g{n}" for n in range(5)]
    chat(alice, bob.bare, sent)
    week_ago = (datetime.now(UTC) - timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%SZ")
    start = {"start": week_ago}
    collected, after, n = [], "", 0
    while True:  # _execute_query: while not result.complete, after=<last>
        rsm = "<max>70</max>" + (f"<after>{after}</after>" if after else "")
        bodies, fin = query(bob, f"g{n}", start, rsm, bob.bare)
        n += 1
        collected += bodies
        if fin.get("complete") == "true":
            break
        # nbxmpp make_query: an incomplete page must name its <first/> and <last/>.
        assert rsm_value(fin, "first") and rsm_value(fin, "last")
        after = rsm_value(fin, "last")
    assert collected == sent
    last_id = rsm_value(fin, "last")
    assert last_id is not None
    # The next sign-in asks after the last id it stored: nothing new is one complete,
    # empty page (without complete='true' nbxmpp would call it malformed).
    bodies, fin = query(bob, "g-next", {}, f"<max>70</max><after>{last_id}</after>", bob.bare)
    assert bodies == [] and fin.get("complete") == "true"
    # An id the archive no longer has: item-not-found, and Gajim starts over by date.
    bob.send(
        f"<iq type='set' id='gone' to='{bob.bare}'><query xmlns='{MAM}' queryid='x'>"
        f"{form(MAM, {})}<set xmlns='{RSM}'><max>70</max><after>no-such-id</after></set>"
        "</query></iq>"
    )
    reply = bob.until(lambda el: el.get("id") == "gone")[-1]
    assert stanza_error(reply) == "item-not-found"


def test_dino_pages_backwards_from_the_latest(login: Any, users: Iterator[str]) -> None:
    alice, bob = login(next(users)), login(next(users))
    before_all = datetime.now(UTC) - timedelta(seconds=5)
    sent = [f"d{n}" for n in range(7)]
    chat(alice, bob.bare, sent)
    start = {"start": before_all.strftime("%Y-%m-%dT%H:%M:%SZ")}
    pages: list[list[str]] = []
    bodies, fin = query(bob, "d0", start, "<max>20</max><before/>", bob.bare)
    while True:
        first, last = rsm_value(fin, "first"), rsm_value(fin, "last")
        assert (first is None) == (last is None)  # Dino: both or neither, else malformed
        pages.append(bodies)
        if fin.get("complete") == "true":
            break
        bodies, fin = query(
            bob, f"d{len(pages)}", start, f"<max>20</max><before>{first}</before>", bob.bare
        )
    # Newest page first, each page in chronological order; complete at the oldest.
    assert pages == [["d4", "d5", "d6"], ["d1", "d2", "d3"], ["d0"]]


# --- (4) resuming the stream (XEP-0198) --------------------------------------------------------


def enable(client: Client) -> Any:
    client.send(f"<enable xmlns='{SM}' resume='true'/>")
    enabled = client.c.next()
    assert enabled.tag == f"{{{SM}}}enabled", etree.tostring(enabled)
    assert enabled.get("resume") in ("true", "1") and enabled.get("id")
    return enabled


def authenticate(srv: ServerProcess, ca_file: str, clients: list[RawClient], name: str) -> Client:
    c = srv.client()
    clients.append(c)
    c.open_stream()
    c.starttls(ca_file)
    assert c.sasl_scram(name, PASSWORD).tag == f"{{{SASL}}}success"
    features = c.open_stream()
    assert features.find(f"{{{SM}}}sm") is not None
    return Client(c, name, "")


def test_conversations_resumes_and_counts(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], login: Any, users: Iterator[str]
) -> None:
    alice, bob = login(next(users)), login(next(users), "phone", presence=False)
    enabled = enable(bob)
    bob.send(f"<r xmlns='{SM}'/>")  # processEnabled: an <r/> at once
    ack = bob.c.next()
    assert ack.tag == f"{{{SM}}}a" and ack.get("h") == "0"
    bob.send("<presence/>")
    bob.send(f"<message to='{alice.bare}' type='chat'><body>from phone</body></message>")
    sync(bob.c)  # the ping is the third stanza the server handled
    bob.c.abort()  # the train enters a tunnel
    srv.wait_for_log(f"{bob.bare}/phone lost its connection")
    alice.send(f"<message to='{bob.full}' type='chat'><body>while away</body></message>")
    sync(alice.c)

    back = authenticate(srv, ca_file, clients, bob.name)
    back.send(f"<resume xmlns='{SM}' previd='{enabled.get('id')}' h='1'/>")
    resumed = back.c.next()
    # processResumed: 'h' is required (else INCOMPATIBLE_SERVER): presence, message, ping.
    assert resumed.tag == f"{{{SM}}}resumed", etree.tostring(resumed)
    assert resumed.get("h") == "3" and resumed.get("previd") == enabled.get("id")
    back.send(f"<r xmlns='{SM}'/>")
    after = back.until(lambda el: el.tag == f"{{{SM}}}a")
    assert [body_of(el) for el in after if body_of(el) is not None] == ["while away"]
    assert after[-1].get("h") == "3"


def test_resume_failed_then_bind(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], login: Any, users: Iterator[str]
) -> None:
    """Conversations processFailed / nbxmpp _on_failed / Dino on_resume_failed: a session
    the server no longer has gets <failed/> with <item-not-found/> and the 'h' it ended
    with, and the same stream binds a new session."""
    bob = login(next(users), "laptop", presence=False)
    enabled = enable(bob)
    bob.send("<presence/>")
    sync(bob.c)  # h = 2
    bob.c.abort()
    srv.wait_for_log(f"{bob.bare}/laptop was not resumed in time", timeout=15)
    back = authenticate(srv, ca_file, clients, bob.name)
    back.send(f"<resume xmlns='{SM}' previd='{enabled.get('id')}' h='0'/>")
    failed = back.c.next()
    assert failed.tag == f"{{{SM}}}failed", etree.tostring(failed)
    assert failed.find("{urn:ietf:params:xml:ns:xmpp-stanzas}item-not-found") is not None
    assert failed.get("h") == "2"
    back.send(f"<iq type='set' id='bind2'><bind xmlns='{BIND}'/></iq>")
    bound = back.c.next()
    assert bound.get("type") == "result"
    assert bound.findtext(f"{{{BIND}}}bind/{{{BIND}}}jid", "").startswith(bob.bare + "/")
    enable(back)


def test_dino_answers_the_servers_ack_requests(login: Any, users: Iterator[str]) -> None:
    alice, bob = login(next(users)), login(next(users), presence=False)
    enable(bob)
    for n in range(5):
        alice.send(f"<message to='{bob.full}' type='chat'><body>n{n}</body></message>")
    sync(alice.c)
    seen = bob.until(lambda el: el.tag == f"{{{SM}}}r")  # [stream_management] every 5
    assert [body_of(el) for el in seen if body_of(el) is not None] == [f"n{n}" for n in range(5)]
    bob.send(f"<a xmlns='{SM}' h='5'/>")
    bob.send(f"<r xmlns='{SM}'/>")
    ack = bob.c.next()
    assert ack.tag == f"{{{SM}}}a" and ack.get("h") == "0"
