"""Rosters (RFC 6121 §2) with their hidden subscription state (§3, Appendix A).

Database "roster", one record per (account, contact) and one per account:

- key `domain NUL local NUL contact`: msgpack map of the item (see `RosterItem.record`). An
  item that is not "listed" is not in the roster the client sees: it is either a pending
  inbound subscription request from someone the account has not added (§3.1.3: the request
  is kept, with its status and nick, until answered) or a tombstone of a removed item, kept
  so that roster versioning (§2.6) can tell a client that had the item to remove it.
- key `domain NUL local NUL` (empty contact): msgpack map {"v": version counter, "f": floor}.
  Every change a client can see takes the next version; the item remembers the version of
  its last change, so a client that presents version N gets exactly the items changed after
  N. Old tombstones are dropped now and then; `floor` is then raised to the newest version
  dropped, and a client presenting a version below it gets the whole roster.

Every change is one write transaction (item and counter together). A record that does not
decode is quarantined (Storage.decode) and the item reads as missing; the counter then takes
a new version that is also the floor, so that every client gets the whole roster once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgpack

from .account_data import account_prefix, register_purge
from .lmdb_store import CorruptRecord, Storage, StorageFull, expect, unpack

log = logging.getLogger("fastxmpp.storage.roster")
DATABASE = "roster"
SUBSCRIPTIONS = ("none", "to", "from", "both")


@dataclass
class RosterItem:
    jid: str
    name: str | None = None
    groups: tuple[str, ...] = ()
    subscription: str = "none"  # "none", "to", "from", "both"
    ask: bool = False  # Pending Out: shown as ask="subscribe" (§2.1.2.2)
    approved: bool = False  # pre-approved (§3.4), shown as approved="true"
    listed: bool = True  # in the roster the client sees
    pending_in: bytes | None = None  # the contact's waiting subscription request (stanza)
    version: int = 0  # the roster version of the last visible change

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"s": self.subscription, "v": self.version}
        if self.name is not None:
            out["n"] = self.name
        if self.groups:
            out["g"] = list(self.groups)
        if self.ask:
            out["a"] = True
        if self.approved:
            out["p"] = True
        if not self.listed:
            out["x"] = True
        if self.pending_in is not None:
            out["i"] = self.pending_in
        return out

    @classmethod
    def from_record(cls, jid: str, record: dict[str, Any]) -> RosterItem:
        """The item of a stored record; CorruptRecord when it is not one `record` wrote."""
        expect(record, dict, "roster item")
        subscription = record.get("s", "none")
        if subscription not in SUBSCRIPTIONS:
            raise CorruptRecord(f"roster item subscription {subscription!r:.40}")
        return cls(
            jid=jid,
            name=expect(record.get("n"), (str, type(None)), "roster item name"),
            groups=tuple(
                expect(group, str, "roster group")
                for group in expect(record.get("g", []), list, "roster groups")
            ),
            subscription=subscription,
            ask=expect(record.get("a", False), bool, "roster item ask"),
            approved=expect(record.get("p", False), bool, "roster item approved"),
            listed=not expect(record.get("x", False), bool, "roster item listed"),
            pending_in=expect(record.get("i"), (bytes, type(None)), "roster item request"),
            version=expect(record.get("v", 0), int, "roster item version"),
        )

    def visible(self) -> tuple[Any, ...]:
        """What a client sees of the item: a change here takes a new roster version."""
        return (self.listed, self.name, self.groups, self.subscription, self.ask, self.approved)


@dataclass
class Roster:
    """One account's roster as loaded: every record, listed or not, and the version."""

    version: int = 0
    floor: int = 0
    items: dict[str, RosterItem] = field(default_factory=dict)

    def listed(self) -> list[RosterItem]:
        return [item for item in self.items.values() if item.listed]

    def listed_count(self) -> int:
        return sum(1 for item in self.items.values() if item.listed)


class RosterStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._db = storage.database(DATABASE)

    def load(self, domain: str, local: str) -> Roster:
        prefix = account_prefix(domain, local)
        roster = Roster()
        with self.storage.env.begin(db=self._db) as txn:
            cursor = txn.cursor()
            found = cursor.set_range(prefix)
            records = []
            while found:
                key = bytes(cursor.key())
                if not key.startswith(prefix):
                    break
                records.append((key, bytes(cursor.value())))
                found = cursor.next()
        counter = None
        lost = False
        for key, raw in records:  # decoded outside the read transaction: it may quarantine
            if key == prefix:
                counter = self.storage.decode(DATABASE, key, raw, _decode_counter)
                lost = lost or counter is None
                continue
            contact = key[len(prefix) :]
            item = self.storage.decode(DATABASE, key, raw, partial(_decode_item, contact))
            if item is None:
                lost = True
            else:
                roster.items[item.jid] = item
        newest = max((item.version for item in roster.items.values()), default=0)
        roster.version, roster.floor = counter or (newest, newest)
        if lost:
            # A record just quarantined: a client's cached roster may hold what is gone, so
            # no version handed out so far can be diffed from; every client gets the whole
            # roster once (RFC 6121 §2.6.3).
            roster.version = max(roster.version, newest) + 1
            roster.floor = roster.version
            try:
                self.storage.write(lambda txn: txn.put(prefix, _meta(roster)), db=self._db)
            except StorageFull as exc:
                log.error("roster counter of %s@%s not stored: %s", local, domain, exc)
        return roster

    def save(self, domain: str, local: str, item: RosterItem, roster: Roster) -> None:
        """Write `item` (a record with nothing left in it is deleted) and the account's
        version counter, in one transaction."""
        prefix = account_prefix(domain, local)
        key = prefix + item.jid.encode()
        keep = item.listed or item.pending_in is not None or item.version > 0

        def write(txn: Any) -> None:
            if keep:
                txn.put(key, msgpack.packb(item.record()), db=self._db)
            else:
                txn.delete(key, db=self._db)
            txn.put(prefix, _meta(roster), db=self._db)

        self.storage.write(write)

    def save_many(self, domain: str, local: str, items: list[RosterItem], roster: Roster) -> None:
        """`save` for several items in one transaction (an import of a whole roster)."""
        prefix = account_prefix(domain, local)

        def write(txn: Any) -> None:
            for item in items:
                txn.put(prefix + item.jid.encode(), msgpack.packb(item.record()), db=self._db)
            txn.put(prefix, _meta(roster), db=self._db)

        self.storage.write(write)

    def forget(self, domain: str, local: str, jids: list[str], roster: Roster) -> None:
        """Delete records outright (old tombstones) and store the new floor, at once."""
        prefix = account_prefix(domain, local)

        def write(txn: Any) -> None:
            for jid in jids:
                txn.delete(prefix + jid.encode(), db=self._db)
            txn.put(prefix, _meta(roster), db=self._db)

        self.storage.write(write)


def _decode_item(contact: bytes, raw: bytes) -> RosterItem:
    return RosterItem.from_record(contact.decode(), unpack(raw))


def _decode_counter(raw: bytes) -> tuple[int, int]:
    record = expect(unpack(raw), dict, "roster counter")
    return (
        expect(record.get("v", 0), int, "roster version"),
        expect(record.get("f", 0), int, "roster floor"),
    )


def _meta(roster: Roster) -> bytes:
    return bytes(msgpack.packb({"v": roster.version, "f": roster.floor}))


register_purge(DATABASE)
