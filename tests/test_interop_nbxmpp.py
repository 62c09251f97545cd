"""nbxmpp, Gajim's XMPP library (Debian's python3-nbxmpp), against the server, through the flows
Gajim runs: login (STARTTLS, SCRAM, bind, XEP-0198), roster with versioning, disco of the
server and the account, carbons, caps presence, a chat with its carbons, MAM catch-up with RSM
paging, resumption after a dropped connection, a password change; bookmarks (XEP-0402, XEP-0048
in PEP, XEP-0049), avatars (XEP-0084) and their notification, OMEMO keys, vCard-temp,
blocking; a room from creation to history, self-ping and its archive, HTTP upload.

The package is built for Debian's own Python (with PyGObject and GLib), so the scenarios of
tests/interop/nbxmpp/scenarios.py run as a subprocess of /usr/bin/python3; each prints what its
clients saw as JSON and the assertions are here. nbxmpp verifies the server's certificate
against the test CA (GLib's TLS database replaced by one with only that CA)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSWORD, FreshNames, ServerProcess, module_server
from interop_clients import NBXMPP_SCENARIOS, require_nbxmpp, run_json
from ws_client import HTTP_LISTENER, http_port

POOL = FreshNames("nb", 12)
UPLOAD = f"{HTTP_LISTENER}\n[upload]\nmax_file_size = 1000000\n"
PNG_SHA1 = "4a5eb7171b58e08a6881721e3b43d5a44419a2be"  # the avatar and upload bytes


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(ca, tmp_path_factory, POOL, UPLOAD)


@pytest.fixture
def names() -> Iterator[str]:
    return POOL.names()


def scenario(srv: ServerProcess, ca_file: str, tmp_path: Path, name: str, users: list[str]) -> Any:
    python = require_nbxmpp()
    return run_json(
        [
            python,
            str(NBXMPP_SCENARIOS),
            name,
            "--port",
            str(srv.port),
            "--ca",
            ca_file,
            "--password",
            PASSWORD,
            "--users",
            ",".join(users),
            "--http-port",
            str(http_port(srv)),
            "--tmp",
            str(tmp_path),
        ],
        timeout=90,
    )


def test_session_chat_carbons_archive_and_resumption(
    srv: ServerProcess, ca_file: str, names: Iterator[str], tmp_path: Path
) -> None:
    a_name, b_name, c_name = next(names), next(names), next(names)
    r = scenario(srv, ca_file, tmp_path, "session", [a_name, b_name, c_name])
    a_bare, b_bare = f"{a_name}@localhost", f"{b_name}@localhost"

    # nbxmpp 4.2 knows SASL2 by an older draft's <mechanisms/> only: it takes SASL (RFC 6120
    # §6) with the strongest SCRAM offered over TLS, binds, and enables XEP-0198 with resume.
    srv.wait_for_log(f"authenticated {a_name}@localhost with SCRAM-SHA-256")
    assert r["a1_jid"] == f"{a_bare}/desktop"
    for who in ("a1", "a2", "b"):
        login = r[who]
        assert login["sm_supported"] and login["roster_versioning"]
        # RFC 6121 §2.6.2: asked with ver='' the roster comes with a version
        assert login["roster"]["items"] == [] and login["roster"]["version"]
        assert login["server_identities"] == ["pubsub/pep", "server/im"]
        assert {"urn:xmpp:carbons:2", "urn:xmpp:blocking", "urn:xmpp:ping"} <= set(
            login["server_features"]
        )
        assert {"conference.localhost", "upload.localhost"} <= set(login["server_items"])
        # XEP-0313 §6.1 and XEP-0163 §4: on the account, where Gajim looks for them
        assert {"urn:xmpp:mam:2", "http://jabber.org/protocol/pubsub#publish-options"} <= set(
            login["account_features"]
        )
        assert "pubsub/pep" in login["account_identities"]
        assert login["carbons"] == "result" and login["blocklist"] == []

    # The chat: b got a1's messages with a stanza-id of b's archive (XEP-0359); a2 got the
    # sent carbon (XEP-0280 §6) and the received carbon of b's answer to a1's full JID (§5).
    assert r["b_got"] == {
        "from": f"{a_bare}/desktop",
        "to": b_bare,
        "type": "chat",
        "body": "message 4",
    }
    assert [sid["by"] for sid in r["b_got_stanza_ids"]] == [b_bare]
    assert r["a2_carbon"] == r["b_got"]
    assert r["a2_received_carbon"]["body"] == "answer"
    assert r["a2_received_carbon"]["to"] == f"{a_bare}/desktop"

    # MAM (XEP-0313 §4.3, XEP-0059 §2.2): pages of two, forwards, in order, the last complete.
    bodies = [f"message {i}" for i in range(5)] + ["answer"]
    assert r["mam_bodies"] == bodies
    assert [len(p["bodies"]) for p in r["mam_pages"]] == [2, 2, 2]
    assert [p["complete"] for p in r["mam_pages"]] == [False, False, True]
    assert r["mam_after_last"] == {"complete": True, "count": 0}
    assert r["mam_unknown_after"] == "item-not-found"

    # XEP-0198 §4: the server's h counts every stanza a1 sent.
    assert r["sm_enabled"] and r["sm_resume"]
    assert r["sm_ack_h"] == r["sm_out_h"] and r["sm_queue_after_ack"] == 0
    # §5: resumed after the dropped connection; what b sent meanwhile arrives once.
    srv.wait_for_log(f"resumed {a_bare}/desktop")
    assert r["after_resume"]["body"] == "while away" and r["after_resume"]["count"] == 1
    # XEP-0313 §6.2 preferences as Gajim's dialog reads and writes them
    assert r["mam_prefs"] in ("always", "roster")
    assert r["mam_prefs_set"] == {"default": "roster", "always": [b_bare], "never": []}
    assert r["server_version"] == "fastxmpp" and r["server_uptime"] >= 0 and r["server_time"]
    # XEP-0077 §3.3: the new password works at once
    assert r["new_password_login"] == f"{c_name}@localhost/again"


def test_bookmarks_avatar_omemo_vcard_and_blocking(
    srv: ServerProcess, ca_file: str, names: Iterator[str], tmp_path: Path
) -> None:
    a_name, b_name = next(names), next(names)
    r = scenario(srv, ca_file, tmp_path, "pep", [a_name, b_name])
    a_bare, b_bare = f"{a_name}@localhost", f"{b_name}@localhost"

    # RFC 6121 §2.6.3: the current version gets an empty result, an old one the changes as
    # pushes.
    assert r["roster_same_version"]["items"] is None
    assert r["roster_old_version"]["items"] is None
    assert r["roster_old_version"]["pushed"] == [b_bare]

    # XEP-0402 with Gajim's publish-options (whitelist, max_items max ...), read back, and
    # the notification to a's own resource only (XEP-0402 §3, whitelist: b gets none).
    room = "room@conference.localhost"
    assert r["native_publish"] == {"node": "urn:xmpp:bookmarks:1", "id": room}
    assert r["native_bookmarks"] == [
        {"jid": room, "name": "The Room", "nick": "alice", "autojoin": True}
    ]
    assert r["native_config"]["pubsub#access_model"] == "whitelist"
    assert r["native_config"]["pubsub#max_items"] == "max"
    assert r["native_event"] == room
    assert r["b_bookmark_events"] == []
    assert r["b_reads_bookmarks"] == "not-allowed"
    assert r["legacy_publish"] == {"node": "storage:bookmarks", "id": "current"}
    assert r["legacy_bookmarks"] == [room]
    # With #compat-pep and config-node-max on the account Gajim uses XEP-0402; what it wrote
    # there is found in private XML storage (XEP-0402 §5.3.1, the bookmarks module) before
    # any XEP-0049 store, and the store of the same list changes nothing.
    assert r["gajim_bookmarks"] == "NativeBookmarks"
    assert r["private_before_store"] == r["native_bookmarks"]
    assert r["private_bookmarks"] == r["native_bookmarks"]

    # XEP-0084: b (subscribed, +notify in its caps) is told of a's avatar and fetches it.
    note = r["avatar_notification"]
    assert note["from"] == a_bare and note["to"] == f"{b_bare}/gajim"
    assert note["id"] == PNG_SHA1 and note["infos"][0]["id"] == PNG_SHA1
    assert r["avatar_data_sha"] == PNG_SHA1 and r["avatar_metadata_default"] == PNG_SHA1
    # OMEMO device list notified (+notify), bundle readable ('open')
    assert r["omemo_devicelist_notification"] == [1234]
    assert r["omemo_bundle"] == {"ik": "identity-key", "prekeys": 3}
    # XEP-0054
    assert r["own_vcard"] == {"FN": "Alice Gajim", "avatar": PNG_SHA1}
    assert r["b_vcard_of_a"] == r["own_vcard"]

    # XEP-0191 §3.3 push; §3.4 (a blocked contact's message: service-unavailable, nothing
    # delivered); §3.5 (to a blocked contact: not-acceptable with <blocked/>)
    assert r["block_push"] == [b_bare] and r["blocklist_after_block"] == [b_bare]
    assert r["blocked_error"]["condition"] == "service-unavailable"
    assert r["to_blocked_error"] == {"condition": "not-acceptable", "blocked_ns": True}
    assert r["a_got_while_blocked"] == []
    assert r["unblock_push"] == [b_bare]
    # XEP-0377 report inside the block
    assert r["blocklist_after_report"] == [b_bare]


def test_room_history_self_ping_archive_and_upload(
    srv: ServerProcess, ca_file: str, names: Iterator[str], tmp_path: Path
) -> None:
    a_name, b_name = next(names), next(names)
    r = scenario(srv, ca_file, tmp_path, "muc_upload", [a_name, b_name])
    room = r["room"]

    # XEP-0045 §6.4: no room yet; §10.1.2: created (201) with a self-presence (110)
    assert r["info_before"] == "item-not-found"
    assert r["created_codes"] == ["StatusCode.CREATED", "StatusCode.SELF"]
    assert {"http://jabber.org/protocol/muc", "urn:xmpp:mam:2", "muc_persistent"} <= set(
        r["room_features"]
    )
    # §7.2.15: maxstanzas=2 gives the last two, delayed
    assert r["b_history"] == [
        {"body": "history 1", "delayed": True},
        {"body": "history 2", "delayed": True},
    ]
    assert r["b_live"]["from"] == f"{room}/alice"
    assert [sid["by"] for sid in r["b_live"]["stanza_ids"]] == [room]
    # XEP-0410 §3
    assert r["self_ping_not_joined"] == "not-acceptable"
    assert r["self_ping"] == "result"
    assert r["ghost_ping_error"] in ("item-not-found", "not-acceptable")
    # XEP-0313 §5: the room's archive, paged by three, from the room
    pages = r["room_mam"]
    assert [b for p in pages for b in p["bodies"]] == [
        "history 0",
        "history 1",
        "history 2",
        "live",
    ]
    assert pages[-1]["complete"] and all(p["fin_from"] == room for p in pages)
    assert {f for p in pages for f in p["froms"]} == {f"{room}/alice"}

    # XEP-0363: the service found through disco, its limit, a slot, the PUT and the GET
    # through libsoup as Gajim does them
    assert r["upload_service"] == "upload.localhost"
    assert r["upload_max_size"] == 1000000
    # §4.1: too large, with the limit Gajim shows
    assert r["too_big"] == {"condition": "not-acceptable", "max_file_size": 1000000}
    assert r["put"]["complete"] and r["put"]["status"] == 201
    assert r["get"] == {
        "complete": True,
        "error": None,
        "status": 200,
        "sha1": PNG_SHA1,
        "content_type": "image/png",
    }
