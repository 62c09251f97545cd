"""XEP-0227 (Portable Import/Export Format): an operator's way in from Prosody or ejabberd
(`prosody-migrator` with a `xep0227` output, `ejabberdctl export_piefxis`) and out again.

What goes both ways, per account: credentials (the SCRAM credentials of version 1.1's
`urn:xmpp:pie:0#scram`, or a password: only read, never written, §6), the roster with its
waiting subscription requests (`<presence type='subscribe'/>` beside it, as Prosody and
ejabberd write them), the vCard, private XML (XEP-0049), offline messages, privacy lists
(XEP-0016), PEP nodes with their items and access model (`pubsub` and `pubsub#owner`) and the
message archive (`urn:xmpp:pie:0#mam`, XEP-0313 results). Read: both the 1.1 namespace and the
older `http://www.xmpp.org/extensions/xep-0227.html#ns`, and XInclude `<include href/>` of
relative files (§5: MUST), Prosody's file per account as well as ejabberd's file per host.
Anything else is reported (§4: SHOULD notify the operator) and left out.

Import runs on a stopped server (its lock is held), account by account, the account's
record after its data; an account that already exists is left as it is and reported, so a
run stopped anywhere is completed by running it again (`Importer._user`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from lxml import etree

from .config import Config
from .delay import parse_stamp, stamp
from .jid import JIDError, normalize_domain, parse_jid
from .storage.account_data import account_prefix, purge_account
from .storage.accounts import (
    MECHANISMS,
    AccountExists,
    AccountStore,
    Credentials,
    UnusablePassword,
)
from .storage.lmdb_store import Storage

NS_PIE = "urn:xmpp:pie:0"
NS_PIE_OLD = "http://www.xmpp.org/extensions/xep-0227.html#ns"
NS_SCRAM = "urn:xmpp:pie:0#scram"
NS_PIE_MAM = "urn:xmpp:pie:0#mam"
NS_XINCLUDE = "http://www.w3.org/2001/XInclude"
NS_CLIENT = "jabber:client"
NS_ROSTER = "jabber:iq:roster"
NS_PRIVATE = "jabber:iq:private"
NS_PRIVACY = "jabber:iq:privacy"
NS_VCARD = "vcard-temp"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_PUBSUB_OWNER = "http://jabber.org/protocol/pubsub#owner"
NS_DATA = "jabber:x:data"
NS_MAM = "urn:xmpp:mam:2"
NS_FORWARD = "urn:xmpp:forward:0"
NS_DELAY = "urn:xmpp:delay"
NS_SID = "urn:xmpp:sid:0"

# Bytes this module wrote or read already: no entities, no network.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
MAX_INCLUDE_DEPTH = 8
XINCLUDE = f"{{{NS_XINCLUDE}}}include"


class PortableError(Exception):
    """A file that cannot be read as XEP-0227 data: its message says which and why."""


def _q(namespace: str, name: str) -> str:
    return f"{{{namespace}}}{name}"


def users(path: Path) -> Iterator[tuple[str | None, Any]]:
    """(the host's jid, <user/>) for each user of the file, its XIncluded files in place, read
    as a stream: each user's element is freed once the caller is done with it, so that an
    export of any size (ejabberd's file per host holds every account of the host) takes the
    memory of its largest account. PortableError for what is not XEP-0227 data."""
    yield from _users(path, None, 0)


def _users(path: Path, host: str | None, depth: int) -> Iterator[tuple[str | None, Any]]:
    # The files are the operator's own, but they come from another program: no entities,
    # no network, no DTD (a document with one is refused).
    events = etree.iterparse(
        str(path),
        events=("start", "end"),
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        remove_comments=True,
        remove_pis=True,
    )
    hosts = [host]
    first = True
    try:
        for event, element in events:
            if first:
                first = False
                info = element.getroottree().docinfo
                if info.doctype or info.internalDTD is not None:
                    raise PortableError(f"{path}: has a DOCTYPE, which XEP-0227 data never has")
                if depth == 0 and not _is_pie(element, "server-data"):
                    raise PortableError(
                        f"{path}: the root element is {element.tag}, not XEP-0227's "
                        f"<server-data/> (namespace {NS_PIE} or {NS_PIE_OLD})"
                    )
            if event == "start":
                if _is_pie(element, "host"):
                    hosts.append(element.get("jid"))
                continue
            if element.tag == XINCLUDE:
                yield from _users(_included(element, path.parent, depth), hosts[-1], depth + 1)
            elif _is_pie(element, "user"):
                yield hosts[-1], element
            elif _is_pie(element, "host"):
                hosts.pop()
            else:
                continue  # (inside a user: freed with it)
            _free(element)
    except etree.XMLSyntaxError as exc:
        raise PortableError(f"{path}: {exc}") from None
    except OSError as exc:
        raise PortableError(f"{path}: {exc.strerror or exc}") from None


def _included(element: Any, base: Path, depth: int) -> Path:
    """§5: <include/> with a relative 'href' and neither 'parse' nor 'xpointer', resolved
    against the including file's directory (done here rather than by libxml2's XInclude,
    which would follow any URL)."""
    href = element.get("href")
    if href is None or element.get("parse") not in (None, "xml") or element.get("xpointer"):
        raise PortableError(f"an XInclude this import does not follow: {_describe(element)}")
    parts = urlsplit(href)
    if parts.scheme or parts.netloc or href.startswith("/"):
        raise PortableError(f"XInclude of {href!r}: only relative file names are followed")
    if depth >= MAX_INCLUDE_DEPTH:
        raise PortableError(f"XInclude of {href!r}: more than {MAX_INCLUDE_DEPTH} levels")
    return base / unquote(parts.path)


def _free(element: Any) -> None:
    """Drop a finished element and the siblings read before it (iterparse keeps them)."""
    element.clear(keep_tail=False)
    parent = element.getparent()
    if parent is not None:
        while element.getprevious() is not None:
            del parent[0]


def _describe(element: Any) -> str:
    return etree.tostring(element, with_tail=False).decode()[:120]


def _local(element: Any) -> tuple[str | None, str]:
    qname = etree.QName(element)
    return qname.namespace, qname.localname


def _is_pie(element: Any, name: str) -> bool:
    namespace, local = _local(element)
    return local == name and namespace in (NS_PIE, NS_PIE_OLD)


def _serialize(element: Any) -> bytes:
    """The element alone, declaring only the namespaces it uses."""
    alone = etree.fromstring(etree.tostring(element, with_tail=False), _PARSER)
    etree.cleanup_namespaces(alone)
    return bytes(etree.tostring(alone))


@dataclass
class Report:
    """What an import or export did and what it left out, for the operator (§4)."""

    accounts: int = 0
    skipped: list[str] = field(default_factory=list)
    left_out: dict[str, int] = field(default_factory=dict)
    sha1_only: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, what: str, n: int = 1) -> None:
        if n:
            self.counts[what] = self.counts.get(what, 0) + n

    def leave_out(self, what: str) -> None:
        self.left_out[what] = self.left_out.get(what, 0) + 1

    def lines(self) -> list[str]:
        out = [
            f"{self.accounts} account{'' if self.accounts == 1 else 's'}"
            + "".join(f", {n} {what}" for what, n in sorted(self.counts.items()))
        ]
        out += [f"skipped: {reason}" for reason in self.skipped]
        out += [f"left out: {what} ({n})" for what, n in sorted(self.left_out.items())]
        if self.sha1_only:
            out.append(
                f"{len(self.sha1_only)} account(s) came with SCRAM-SHA-1 credentials only "
                "(Prosody's default): they log in with SCRAM-SHA-1 or PLAIN, not "
                "SCRAM-SHA-256, until their next PLAIN login or password change; a client "
                "that picks SCRAM-SHA-256 fails for them unless [c2s] sasl_mechanisms "
                "leaves it out (docs/CONFIGURATION.md, 'Moving from another server')"
            )
        return out


# --- import ----------------------------------------------------------------------------


class Importer:
    """Writes what the files hold through each module's store (the storage formats stay
    theirs); one instance per run, on a stopped server's storage."""

    def __init__(self, config: Config, storage: Storage) -> None:
        # Imported here: the stores register their purge functions on import, and the
        # modules' parsers (privacy items, PEP node forms) are reused as they are.
        from .modules import pep as pep_module
        from .modules import privacy_rules
        from .storage.mam import ArchiveStore
        from .storage.offline import OfflineStore
        from .storage.pep import Limits, PepStore
        from .storage.privacy import PrivacyStore
        from .storage.private import PrivateStore
        from .storage.roster import RosterStore
        from .storage.vcard import VCardStore

        self.config = config
        self.storage = storage
        self.accounts = AccountStore(storage, config.storage.scram_iterations)
        self.rosters = RosterStore(storage)
        self.vcards = VCardStore(storage)
        self.private = PrivateStore(storage)
        self.offline = OfflineStore(storage)
        self.privacy = PrivacyStore(storage)
        self.pep = PepStore(storage)
        self.archive = ArchiveStore(storage)
        self._pep_module = pep_module
        self._privacy_rules = privacy_rules
        self._pep_limits = Limits(config.pep.max_nodes, config.pep.max_bytes_per_account)
        self.report = Report()
        self._foreign: dict[str, int] = {}  # hosts not served here: their accounts

    def run(self, path: Path) -> Report:
        for host, user in users(path):
            try:
                domain = normalize_domain(host or "")
            except JIDError:
                domain = host or "(no jid)"
            if domain in self.config.hosts:
                self._user(domain, user)
            else:
                self._foreign[domain] = self._foreign.get(domain, 0) + 1
        return self.report

    def finish(self) -> Report:
        """The report, with the hosts whose accounts were not imported."""
        for domain, count in sorted(self._foreign.items()):
            # §4.1: an importing server that does not add hosts SHOULD tell the operator.
            self.report.skipped.append(
                f"host {domain} with {count} account(s): not a configured host (add a "
                "[hosts.DOMAIN] section first)"
            )
        self._foreign.clear()
        return self.report

    def _user(self, domain: str, user: Any) -> None:
        name = user.get("name") or ""
        try:
            local = parse_jid(f"{name}@{domain}").local
        except JIDError as exc:
            self.report.skipped.append(f"{name!r}@{domain}: not a valid user name ({exc})")
            return
        try:
            credentials = self._credentials(user, f"{local}@{domain}")
        except UnusablePassword as exc:
            self.report.skipped.append(f"{local}@{domain}: {exc}")
            return
        if credentials is None:
            self.report.skipped.append(f"{local}@{domain}: neither password nor credentials")
            return
        if self.accounts.exists(domain, local):
            self.report.skipped.append(f"{local}@{domain}: the account exists already")
            return
        # The account's record is written last: an import stopped anywhere (a crash, a full
        # disk) leaves no account, only data, which the next run purges before it writes the
        # account again (offline messages and archived ones would otherwise be there twice).
        self.storage.write(lambda txn: purge_account(self.storage, txn, domain, local))
        self.archive.drop_tail(account_prefix(domain, local))
        self._user_data(domain, local, user)
        try:
            self.accounts.create_with(domain, local, credentials)
        except AccountExists:  # made meanwhile by a running server? (the lock forbids it)
            self.report.skipped.append(f"{local}@{domain}: the account exists already")
            return
        self.report.accounts += 1
        if "SCRAM-SHA-256" not in credentials:
            self.report.sha1_only.append(f"{local}@{domain}")

    def _user_data(self, domain: str, local: str, user: Any) -> None:
        pending = []
        for child in user:
            if not isinstance(child.tag, str):
                continue
            namespace, tag = _local(child)
            if namespace == NS_SCRAM:
                continue  # read above
            handler = self._HANDLERS.get((namespace, tag))
            if handler is not None:
                handler(self, domain, local, child)
            elif tag == "presence" and namespace in (NS_CLIENT, NS_PIE, NS_PIE_OLD):
                # ejabberd writes them in jabber:client, Prosody in the file's namespace.
                if child.get("type") == "subscribe":
                    pending.append(child)
            elif _is_pie(child, "offline-messages"):
                self._offline(domain, local, child)
            else:
                self.report.leave_out(f"{{{namespace}}}{tag}")
        if pending:
            self._pending(domain, local, pending)

    def _credentials(self, user: Any, account: str) -> Credentials | None:
        found: Credentials = {}
        for element in user.iterchildren(_q(NS_SCRAM, "scram-credentials")):
            mechanism = element.get("mechanism", "")
            if mechanism not in MECHANISMS:
                self.report.leave_out(f"{mechanism or 'unnamed'} credentials")
                continue
            found[mechanism] = _scram(element, mechanism, account)
        password = user.get("password")
        if password and password.startswith("scram:"):
            # ejabberd before XEP-0227 1.1: "scram:[sha256,]StoredKey,ServerKey,salt,count"
            mechanism, info = _ejabberd_scram(password[6:], account)
            if mechanism is not None:
                found.setdefault(mechanism, info)
        elif password and not found:
            return self.accounts.credentials_of(password)
        return found or None

    # Roster (RFC 6121 §2.1.2: the item as a roster get returns it).
    def _roster(self, domain: str, local: str, query: Any) -> None:
        from .storage.roster import RosterItem

        roster = self.rosters.load(domain, local)
        own = f"{local}@{domain}"
        entries: list[RosterItem] = []
        for item in query.iterchildren(_q(NS_ROSTER, "item")):
            jid = _bare(item.get("jid"))
            subscription = item.get("subscription", "none")
            if jid is None or jid == own or subscription not in ("none", "to", "from", "both"):
                self.report.leave_out("roster items without a usable jid or subscription")
                continue
            if len(entries) >= self.config.roster.max_items:
                self.report.leave_out("roster items beyond [roster] max_items")
                break
            groups = tuple(
                dict.fromkeys(g.text.strip() for g in item.iterchildren(_q(NS_ROSTER, "group"))
                              if g.text and g.text.strip())
            )  # fmt: skip
            roster.version += 1
            entry = RosterItem(
                jid=jid,
                name=item.get("name") or None,
                groups=groups,
                subscription=subscription,
                ask=item.get("ask") == "subscribe",
                version=roster.version,
            )
            roster.items[jid] = entry
            entries.append(entry)
        self.rosters.save_many(domain, local, entries, roster)
        self.report.count("roster items", len(entries))

    def _pending(self, domain: str, local: str, requests: list[Any]) -> None:
        """Subscription requests waiting for the account's answer (RFC 6121 §3.1.3): kept
        on the contact's item, shown at the next login."""
        from .storage.roster import RosterItem

        roster = self.rosters.load(domain, local)
        waiting = []
        for request in requests:
            jid = _bare(request.get("from"))
            if jid is None:
                continue
            stanza = etree.Element("presence", {"from": jid, "to": f"{local}@{domain}"})
            stanza.set("type", "subscribe")
            item = roster.items.get(jid) or RosterItem(jid=jid, listed=False)
            item.pending_in = etree.tostring(stanza)
            roster.items[jid] = item
            waiting.append(item)
        self.rosters.save_many(domain, local, waiting, roster)
        self.report.count("subscription requests", len(waiting))

    def _vcard(self, domain: str, local: str, vcard: Any) -> None:
        data = _serialize(vcard)
        if len(data) > self.config.vcard.max_size:
            self.report.leave_out(f"vCards over [vcard] max_size ({self.config.vcard.max_size})")
            return
        self.vcards.put(domain, local, data)
        self.report.count("vCards")

    def _private(self, domain: str, local: str, query: Any) -> None:
        from .modules.private import MAX_NAMESPACES, fragment_xml

        fragments: dict[str, bytes] = {}
        for child in query:
            if isinstance(child.tag, str):
                namespace = etree.QName(child).namespace or ""
                fragments[namespace] = fragments.get(namespace, b"") + fragment_xml(child)
        if fragments:
            self.private.now(self.private.setting_many(domain, local, fragments, MAX_NAMESPACES))
            self.report.count("private XML namespaces", len(fragments))

    def _offline(self, domain: str, local: str, holder: Any) -> None:
        messages = [_serialize(m) for m in holder.iterchildren(_q(NS_CLIENT, "message"))]
        if messages:
            # Beyond [offline] max_messages the newest are refused, as for new messages.
            stored = self.offline.push_many(
                domain, local, messages, self.config.offline.max_messages
            )
            self.report.count("offline messages", stored)
            if stored < len(messages):
                self.report.leave_out("offline messages beyond [offline] max_messages")

    def _privacy(self, domain: str, local: str, query: Any) -> None:
        from .storage.privacy import StoredLists

        rules = self._privacy_rules
        roster = self.rosters.load(domain, local)
        groups = {g for item in roster.listed() for g in item.groups}
        stored = StoredLists()
        for child in query:
            if not isinstance(child.tag, str):
                continue
            namespace, tag = _local(child)
            if namespace != NS_PRIVACY:
                continue
            if tag == "default":
                stored.default = child.get("name") or None
            elif tag == "list":
                try:
                    items = rules.parse_items(child, groups.__contains__)
                    stored.lists[rules.list_name(child)] = tuple(i.record() for i in items)
                except Exception as exc:  # the module's StanzaError for a malformed list
                    self.report.leave_out(f"privacy lists that do not parse ({exc})")
        if stored.default not in stored.lists:
            stored.default = None
        if stored.lists:
            self.privacy.save(domain, local, stored)
            self.report.count("privacy lists", len(stored.lists))

    def _pubsub_items(self, domain: str, local: str, pubsub: Any) -> None:
        """PEP items (Prosody writes them under pubsub/items); the node's configuration is
        in the pubsub#owner element beside it, read first."""
        from .storage.pep import Item

        configs = self._node_configs(pubsub.getparent())
        pep = self._pep_module
        cap = self.config.pep.max_items
        published = 0
        for items in pubsub.iterchildren(_q(NS_PUBSUB, "items")):
            node = items.get("node")
            if not node:
                continue
            config = {**pep.DEFAULT_CONFIG, **configs.get(node, {})}
            for item in items.iterchildren(_q(NS_PUBSUB, "item")):
                payload = [c for c in item if isinstance(c.tag, str)]
                item_id = item.get("id") or uuid.uuid4().hex
                if len(payload) != 1:
                    self.report.leave_out("PEP items without exactly one payload")
                    continue
                entry = Item(item_id, _serialize(payload[0]), f"{local}@{domain}", time.time())
                try:
                    self.pep.now(
                        self.pep.publishing(
                            domain,
                            local,
                            node,
                            entry,
                            config,
                            lambda c: pep.effective_max(c, cap),
                            self._pep_limits,
                        )
                    )
                except Exception as exc:  # PepLimit, a name too long for a key
                    self.report.leave_out(f"PEP items over the [pep] limits ({exc})")
                    break
                published += 1
        self.report.count("PEP items", published)

    def _node_configs(self, user: Any) -> dict[str, dict[str, Any]]:
        pep = self._pep_module
        configs: dict[str, dict[str, Any]] = {}
        for owner in user.iterchildren(_q(NS_PUBSUB_OWNER, "pubsub")):
            for configure in owner.iterchildren(_q(NS_PUBSUB_OWNER, "configure")):
                node = configure.get("node")
                form = configure.find(_q(NS_DATA, "x"))
                if not node or form is None:
                    continue
                config: dict[str, Any] = {}
                for var, values in _form_fields(form):
                    name = var.removeprefix("pubsub#")
                    if not values or name not in pep.FIELDS or name in ("type", "title"):
                        continue  # (Prosody lists the options left at their defaults empty)
                    try:
                        config[name] = pep.parse_field(name, values, self.config.pep.max_items)
                    except Exception:  # the module's FormError: a value it does not take
                        self.report.leave_out(f"PEP node option {var} = {values!r}")
                configs[node] = config
        return configs

    def _owner(self, domain: str, local: str, owner: Any) -> None:
        """Node configurations: read with the items (`_pubsub_items`). A node without items
        is not made: PEP makes it again at the owner's next publish (XEP-0163 §3)."""

    def _archive(self, domain: str, local: str, archive: Any) -> None:
        from .storage.mam import Record

        own = f"{local}@{domain}"
        batch = []
        for result in archive.iterchildren(_q(NS_MAM, "result")):
            forwarded = result.find(_q(NS_FORWARD, "forwarded"))
            message = None if forwarded is None else forwarded.find(_q(NS_CLIENT, "message"))
            delay = None if forwarded is None else forwarded.find(_q(NS_DELAY, "delay"))
            when = None if delay is None else parse_stamp(delay.get("stamp", ""))
            if message is None or when is None:
                self.report.leave_out("archived messages without message or time")
                continue
            sender, recipient = _bare(message.get("from")), _bare(message.get("to"))
            outgoing = sender == own
            with_ = recipient if outgoing else sender
            if with_ is None:
                self.report.leave_out("archived messages without the other party")
                continue
            # The archive's own stanza-id is the record id (XEP-0359 §4: a new one here).
            for sid in message.findall(_q(NS_SID, "stanza-id")):
                if sid.get("by") == own:
                    message.remove(sid)
            record = Record(
                self.archive.next_id(), when, with_, "out" if outgoing else "in",
                _serialize(message),
            )  # fmt: skip
            batch.append((domain, local, record))
        if batch:
            mam = self.config.mam
            self.archive.append(batch, mam.max_messages_per_account, mam.max_age_days * 86400)
            self.report.count("archived messages", len(batch))

    _HANDLERS: ClassVar[dict[tuple[str | None, str], Callable[[Importer, str, str, Any], None]]] = {
        (NS_ROSTER, "query"): _roster,
        (NS_VCARD, "vCard"): _vcard,
        (NS_PRIVATE, "query"): _private,
        (NS_PRIVACY, "query"): _privacy,
        (NS_PUBSUB, "pubsub"): _pubsub_items,
        (NS_PUBSUB_OWNER, "pubsub"): _owner,
        (NS_PIE_MAM, "archive"): _archive,
    }


def _form_fields(form: Any) -> Iterator[tuple[str, list[str]]]:
    for field_element in form.iterchildren(_q(NS_DATA, "field")):
        var = field_element.get("var")
        if var and var != "FORM_TYPE":
            yield var, [v.text or "" for v in field_element.iterchildren(_q(NS_DATA, "value"))]


def _bare(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return parse_jid(text).bare
    except JIDError:
        return None


def _b64(element: Any, name: str, account: str) -> bytes:
    text = element.findtext(_q(NS_SCRAM, name))
    try:
        return base64.b64decode((text or "").strip(), validate=True)
    except (binascii.Error, ValueError):
        raise PortableError(f"{account}: <{name}/> is not base64") from None


def _scram(element: Any, mechanism: str, account: str) -> list[Any]:
    try:
        iterations = int((element.findtext(_q(NS_SCRAM, "iter-count")) or "").strip())
    except ValueError:
        raise PortableError(f"{account}: {mechanism} <iter-count/> is not a number") from None
    salt, stored_key, server_key = (
        _b64(element, name, account) for name in ("salt", "stored-key", "server-key")
    )
    size = 20 if mechanism == "SCRAM-SHA-1" else 32
    if len(stored_key) != size and len(server_key) != size:
        # ejabberd 23 exports each value base64-encoded twice (it keeps them as base64 text
        # and encodes that again); its keys then decode to the right size a second time.
        with contextlib.suppress(binascii.Error, ValueError):
            salt, stored_key, server_key = (
                base64.b64decode(value, validate=True) for value in (salt, stored_key, server_key)
            )
    if iterations < 1 or not salt or len(stored_key) != size or len(server_key) != size:
        raise PortableError(f"{account}: {mechanism} credentials of the wrong size")
    return [salt, stored_key, server_key, iterations]


def _ejabberd_scram(text: str, account: str) -> tuple[str | None, list[Any]]:
    parts = text.split(",")
    hashes = {"sha256": "SCRAM-SHA-256"}
    mechanism = "SCRAM-SHA-1"
    if len(parts) == 5:
        if parts[0] not in hashes:
            return None, []
        mechanism = hashes[parts.pop(0)]
    if len(parts) != 4:
        raise PortableError(f"{account}: a 'scram:' password of an unknown form")
    try:
        stored_key, server_key, salt = (base64.b64decode(p, validate=True) for p in parts[:3])
        return mechanism, [salt, stored_key, server_key, int(parts[3])]
    except (binascii.Error, ValueError):
        raise PortableError(f"{account}: a 'scram:' password of an unknown form") from None


# --- export ----------------------------------------------------------------------------


def export(config: Config, storage: Storage, out: Path, hosts: list[str]) -> Report:
    """Every account of `hosts` into one XEP-0227 1.1 file, readable by its owner only (§6:
    it holds what users expect to be protected). Credentials go as SCRAM credentials: the
    server never had the passwords."""
    from .storage.mam import ArchiveStore
    from .storage.offline import OfflineStore
    from .storage.pep import PepStore
    from .storage.privacy import PrivacyStore
    from .storage.roster import RosterStore
    from .storage.vcard import VCardStore

    report = Report()
    accounts = AccountStore(storage, config.storage.scram_iterations)
    rosters, vcards = RosterStore(storage), VCardStore(storage)
    offline, privacy = OfflineStore(storage), PrivacyStore(storage)
    pep, archive = PepStore(storage), ArchiveStore(storage)
    # Written as it is read, account by account (the memory of the largest account), under
    # a temporary name until complete and on disk: a file with the name asked for is a
    # whole export, whenever the command was stopped.
    partial = out.with_name(out.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        with etree.xmlfile(f, encoding="UTF-8") as xf:
            xf.write_declaration()
            with xf.element(_q(NS_PIE, "server-data"), nsmap={None: NS_PIE}):
                for domain in hosts:
                    with xf.element(_q(NS_PIE, "host"), jid=domain):
                        for _, local in accounts.list(domain):
                            user = etree.Element(_q(NS_PIE, "user"), nsmap={None: NS_PIE})
                            user.set("name", local)
                            _export_credentials(user, accounts.stored_credentials(domain, local))
                            _export_roster(user, rosters.load(domain, local), report)
                            vcard = vcards.get(domain, local)
                            if vcard is not None:
                                user.append(etree.fromstring(vcard, _PARSER))
                                report.count("vCards")
                            _export_private(user, storage, domain, local)
                            _export_offline(user, offline, domain, local, report)
                            _export_privacy(user, privacy.load(domain, local))
                            _export_pep(user, pep, domain, local, config, report)
                            _export_archive(user, archive, domain, local, report)
                            xf.write(user, pretty_print=True)
                            report.accounts += 1
        f.flush()
        os.fsync(f.fileno())
    if out.exists():
        partial.unlink()
        raise FileExistsError(errno.EEXIST, "exists already", str(out))
    os.rename(partial, out)
    directory = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return report


def _export_credentials(user: Any, credentials: Credentials) -> None:
    for mechanism, (salt, stored_key, server_key, count) in credentials.items():
        scram = etree.SubElement(user, _q(NS_SCRAM, "scram-credentials"), nsmap={None: NS_SCRAM})
        scram.set("mechanism", mechanism)
        for name, value in (
            ("iter-count", str(count)),
            ("salt", base64.b64encode(salt).decode()),
            ("server-key", base64.b64encode(server_key).decode()),
            ("stored-key", base64.b64encode(stored_key).decode()),
        ):
            etree.SubElement(scram, _q(NS_SCRAM, name)).text = value


def _export_roster(user: Any, roster: Any, report: Report) -> None:
    listed = roster.listed()
    if listed:
        query = etree.SubElement(user, _q(NS_ROSTER, "query"), nsmap={None: NS_ROSTER})
        for item in listed:
            element = etree.SubElement(query, _q(NS_ROSTER, "item"), jid=item.jid)
            if item.name is not None:
                element.set("name", item.name)
            element.set("subscription", item.subscription)
            if item.ask:
                element.set("ask", "subscribe")
            for group in item.groups:
                etree.SubElement(element, _q(NS_ROSTER, "group")).text = group
        report.count("roster items", len(listed))
    for item in roster.items.values():
        if item.pending_in is not None:
            etree.SubElement(
                user, _q(NS_CLIENT, "presence"), {"from": item.jid, "type": "subscribe"},
                nsmap={None: NS_CLIENT},
            )  # fmt: skip
            report.count("subscription requests")


def _export_private(user: Any, storage: Storage, domain: str, local: str) -> None:
    from .storage.account_data import prefixed

    prefix = account_prefix(domain, local)
    db = storage.database("private")
    with storage.env.begin(db=db) as txn:
        stored = [bytes(value) for _, value in prefixed(txn, prefix, db)]
    if stored:
        query = etree.SubElement(user, _q(NS_PRIVATE, "query"), nsmap={None: NS_PRIVATE})
        for data in stored:
            for element in etree.fromstring(b"<x>" + data + b"</x>", _PARSER):
                query.append(element)


def _export_offline(user: Any, offline: Any, domain: str, local: str, report: Report) -> None:
    messages = [data for _, data in offline.peek(domain, local)]
    if messages:
        holder = etree.SubElement(user, _q(NS_PIE, "offline-messages"))
        for data in messages:
            holder.append(_client_element(data))
        report.count("offline messages", len(messages))


def _client_element(data: bytes) -> Any:
    """A stored stanza (as it went on a client stream: jabber:client inherited, or declared)
    as an element in jabber:client."""
    wrapper = etree.fromstring(b"<w xmlns='jabber:client'>" + data + b"</w>", _PARSER)
    return wrapper[0]


def _export_privacy(user: Any, stored: Any) -> None:
    from .modules.privacy_rules import Item

    if not stored.lists:
        return
    query = etree.SubElement(user, _q(NS_PRIVACY, "query"), nsmap={None: NS_PRIVACY})
    if stored.default is not None:
        etree.SubElement(query, _q(NS_PRIVACY, "default"), name=stored.default)
    for name, records in stored.lists.items():
        items = "".join(Item.from_record(r).xml() for r in records)
        query.append(
            etree.fromstring(f"<list xmlns='{NS_PRIVACY}' name='{_attr(name)}'>{items}</list>")
        )


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace("'", "&apos;").replace("<", "&lt;")


def _export_pep(
    user: Any, pep: Any, domain: str, local: str, config: Config, report: Report
) -> None:
    from .modules.pep import FIELDS, effective_max

    nodes = pep.nodes(domain, local)
    if not nodes:
        return
    owner = etree.SubElement(user, _q(NS_PUBSUB_OWNER, "pubsub"), nsmap={None: NS_PUBSUB_OWNER})
    pubsub = etree.SubElement(user, _q(NS_PUBSUB, "pubsub"), nsmap={None: NS_PUBSUB})
    for node in nodes:
        configure = etree.SubElement(owner, _q(NS_PUBSUB_OWNER, "configure"), node=node.name)
        form = etree.SubElement(configure, _q(NS_DATA, "x"), nsmap={None: NS_DATA}, type="submit")
        form_type = etree.SubElement(form, _q(NS_DATA, "field"), var="FORM_TYPE")
        etree.SubElement(
            form_type, _q(NS_DATA, "value")
        ).text = "http://jabber.org/protocol/pubsub#node_config"
        for name, value in node.config.items():
            if name not in FIELDS:
                continue
            if name == "max_items":
                value = effective_max(node.config, config.pep.max_items)
            values = value if isinstance(value, list) else [value]
            element = etree.SubElement(form, _q(NS_DATA, "field"), var=f"pubsub#{name}")
            for v in values:
                text = ("1" if v else "0") if isinstance(v, bool) else str(v)
                etree.SubElement(element, _q(NS_DATA, "value")).text = text
        items = etree.SubElement(pubsub, _q(NS_PUBSUB, "items"), node=node.name)
        for item in pep.items(domain, local, node, list(node.order)):
            element = etree.SubElement(items, _q(NS_PUBSUB, "item"), id=item.id)
            element.append(etree.fromstring(item.payload, _PARSER))
            report.count("PEP items")


def _export_archive(user: Any, archive: Any, domain: str, local: str, report: Report) -> None:
    """The archive in id order: what is folded into it, then its rows still in the journal
    (a running server folds them later; storage/mam.py)."""
    holder = None
    for record in _archived(archive, domain, local):
        if holder is None:
            holder = etree.SubElement(user, _q(NS_PIE_MAM, "archive"), nsmap={None: NS_PIE_MAM})
        result = etree.SubElement(holder, _q(NS_MAM, "result"), nsmap={None: NS_MAM}, id=record.id)
        forwarded = etree.SubElement(result, _q(NS_FORWARD, "forwarded"), nsmap={None: NS_FORWARD})
        etree.SubElement(
            forwarded, _q(NS_DELAY, "delay"), nsmap={None: NS_DELAY}, stamp=stamp(record.when)
        )
        forwarded.append(_client_element(record.xml))
        report.count("archived messages")


def _archived(archive: Any, domain: str, local: str) -> Iterator[Any]:
    after = None
    while True:
        records, complete = archive.query(domain, local, after=after, limit=500)
        yield from records
        if complete or not records:
            break
        after = records[-1].id
    yield from archive.journaled(domain, local)
