"""XEP-0163 personal eventing: each account's pubsub nodes and their items.

Database "pep", all keys under the account's prefix (`domain NUL local NUL`):
- `n` + node name: the node, msgpack `{"config": {...}, "order": [item ids, oldest first],
  "created": unix time}`; publication order lives here (XEP-0060 §12.17: a re-published id
  becomes the newest).
- `i` + node name + NUL + item id: msgpack `[payload XML, publisher full JID, unix time]`.
- `u`: the bytes of item payloads the account stores in all (for the account quota).
- `s` + node name + NUL + subscriber JID (bare or full, as subscribed): an explicit
  subscription (XEP-0060 §6.1), msgpack `["subscribed", unix time]`; they go with the node,
  and with the subscriber's account (one seek per account with PEP data, no index).
Node names and item ids never contain NUL (XML cannot), so prefixes cannot collide. Every
operation is one write transaction: a node, its items and the quota change together.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .account_data import (
    account_prefix,
    count_prefix,
    delete_prefix,
    purge_prefixed,
    register_purge,
)
from .lmdb_store import DatabaseStore, Storage, expect, unpack

DATABASE = "pep"


class PepLimit(Exception):
    """A limit of the account would be exceeded; `what` names it ("nodes", "bytes", "key")."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class NodeExists(Exception):
    """Creating a node that is already there."""


@dataclass
class Item:
    id: str
    payload: bytes
    publisher: str
    stamp: float


@dataclass
class Node:
    name: str
    config: dict[str, Any]
    order: list[str] = field(default_factory=list)  # item ids, oldest first
    created: float = 0.0


@dataclass(frozen=True)
class Limits:
    max_nodes: int
    max_bytes: int  # item payloads of one account, all nodes together


def _node_key(prefix: bytes, node: str) -> bytes:
    return prefix + b"n" + node.encode()


def _item_prefix(prefix: bytes, node: str) -> bytes:
    return prefix + b"i" + node.encode() + b"\0"


def _sub_prefix(prefix: bytes, node: str | None = None) -> bytes:
    return prefix + b"s" + (b"" if node is None else node.encode() + b"\0")


def _scan(txn: Any, start: bytes) -> list[tuple[bytes, Any]]:
    found = []
    cursor = txn.cursor()
    more = cursor.set_range(start)
    while more:
        key = bytes(cursor.key())
        if not key.startswith(start):
            break
        found.append((key[len(start) :], cursor.value()))
        more = cursor.next()
    return found


def _decode_node(name: str, raw: bytes) -> Node:
    record = expect(unpack(raw), dict, "node")
    config = expect(record["config"], dict, "node configuration")
    for option, value in config.items():
        expect(option, str, "node option")
        if isinstance(value, list):
            for entry in value:
                expect(entry, str, f"node option {option}")
        else:
            expect(value, (bool, int, float, str, type(None)), f"node option {option}")
    order = [expect(item_id, str, "item id") for item_id in expect(record["order"], list, "items")]
    return Node(name, config, order, float(expect(record["created"], (int, float), "created")))


def _decode_item(raw: bytes) -> tuple[bytes, str, float]:
    payload, publisher, stamp = expect(unpack(raw), list, "item")
    return (
        expect(payload, bytes, "item payload"),
        expect(publisher, str, "item publisher"),
        float(expect(stamp, (int, float), "item time")),
    )


def _decode_usage(raw: bytes) -> int:
    return int(expect(unpack(raw), int, "bytes used"))


def _encode_node(node: Node) -> bytes:
    return bytes(
        msgpack.packb({"config": node.config, "order": node.order, "created": node.created})
    )


class PepStore(DatabaseStore):
    """Nodes, items and subscriptions; `publishing` and `retracting` are changes to commit
    (`now` or `later`)."""

    def __init__(self, storage: Storage) -> None:
        super().__init__(storage, DATABASE)
        self.max_key_size = storage.env.max_key_size()

    # --- decoding (a record that does not decode is quarantined, and reads as missing) ----

    def _node(self, key: bytes, name: str, raw: Any) -> Node | None:
        return self.storage.decode(DATABASE, key, raw, lambda raw: _decode_node(name, raw))

    def _item(self, key: bytes, raw: Any) -> tuple[bytes, str, float] | None:
        return self.storage.decode(DATABASE, key, raw, _decode_item)

    def _usage(self, key: bytes, raw: Any) -> int:
        return 0 if raw is None else self.storage.decode(DATABASE, key, raw, _decode_usage) or 0

    def _payload_size(self, key: bytes, raw: Any) -> int:
        item = None if raw is None else self._item(key, raw)
        return 0 if item is None else len(item[0])

    # --- reading --------------------------------------------------------------------------

    def node(self, domain: str, local: str, name: str) -> Node | None:
        key = _node_key(account_prefix(domain, local), name)
        with self.storage.env.begin(db=self._db) as txn:
            raw = txn.get(key)
        return None if raw is None else self._node(key, name, raw)

    def nodes(self, domain: str, local: str) -> list[Node]:
        start = account_prefix(domain, local) + b"n"
        with self.storage.env.begin(db=self._db) as txn:
            records = [(start + rest, bytes(raw)) for rest, raw in _scan(txn, start)]
        found = []
        for key, raw in records:
            node = self._node(key, key[len(start) :].decode(errors="replace"), raw)
            if node is not None:
                found.append(node)
        return found

    def items(self, domain: str, local: str, node: Node, ids: list[str]) -> list[Item]:
        """The items `ids` of `node` that exist, in the order asked."""
        prefix = _item_prefix(account_prefix(domain, local), node.name)
        stored = []
        with self.storage.env.begin(db=self._db) as txn:
            for item_id in ids:
                key = prefix + item_id.encode()
                raw = txn.get(key) if len(key) <= self.max_key_size else None
                if raw is not None:
                    stored.append((item_id, key, bytes(raw)))
        found = []
        for item_id, key, raw in stored:
            item = self._item(key, raw)
            if item is not None:
                found.append(Item(item_id, *item))
        return found

    def subscriptions(
        self, domain: str, local: str, name: str | None = None
    ) -> list[tuple[str, str]]:
        """The explicit subscriptions (node name, subscriber JID) of the account's nodes, of
        node `name` only when given; by node, then JID."""
        start = _sub_prefix(account_prefix(domain, local), name)
        with self.storage.env.begin(db=self._db) as txn:
            rest = [key for key, _value in _scan(txn, start)]
        if name is not None:
            return [(name, key.decode()) for key in rest]
        found = []
        for key in rest:
            node, _, jid = key.partition(b"\0")
            found.append((node.decode(), jid.decode()))
        return found

    def subscribed(
        self, accounts: list[tuple[str, str]], jids: tuple[str, ...]
    ) -> dict[int, set[str]]:
        """For each (domain, local) of `accounts` (by index) with a node one of `jids` is
        subscribed to: those nodes. One read transaction."""
        wanted = {jid.encode() for jid in jids}
        found: dict[int, set[str]] = {}
        with self.storage.env.begin(db=self._db) as txn:
            for index, (domain, local) in enumerate(accounts):
                for key, _value in _scan(txn, _sub_prefix(account_prefix(domain, local))):
                    node, _, jid = key.partition(b"\0")
                    if jid in wanted:
                        found.setdefault(index, set()).add(node.decode())
        return found

    def usage(self, domain: str, local: str) -> int:
        key = account_prefix(domain, local) + b"u"
        with self.storage.env.begin(db=self._db) as txn:
            raw = txn.get(key)
        return self._usage(key, raw)

    # --- writing --------------------------------------------------------------------------

    def _check_key(self, key: bytes) -> bytes:
        if len(key) > self.max_key_size:
            raise PepLimit("key")
        return key

    def _count_nodes(self, txn: Any, prefix: bytes) -> int:
        return count_prefix(txn, prefix + b"n")

    def _add_usage(self, txn: Any, prefix: bytes, delta: int, limit: int | None = None) -> None:
        used = self._usage(prefix + b"u", txn.get(prefix + b"u")) + delta
        if limit is not None and delta > 0 and used > limit:
            raise PepLimit("bytes")
        txn.put(prefix + b"u", msgpack.packb(max(used, 0)))

    def _new_node(
        self, txn: Any, prefix: bytes, name: str, config: dict[str, Any], limits: Limits
    ) -> Node:
        if self._count_nodes(txn, prefix) >= limits.max_nodes:
            raise PepLimit("nodes")
        node = Node(name, dict(config), [], time.time())
        txn.put(self._check_key(_node_key(prefix, name)), _encode_node(node))
        return node

    def create(
        self, domain: str, local: str, name: str, config: dict[str, Any], limits: Limits
    ) -> Node:
        prefix = account_prefix(domain, local)

        def work(txn: Any) -> Node:
            if txn.get(self._check_key(_node_key(prefix, name))) is not None:
                raise NodeExists(name)
            return self._new_node(txn, prefix, name, config, limits)

        return self.storage.write(work, db=self._db)

    def _drop_items(self, txn: Any, prefix: bytes, node: Node, ids: list[str]) -> None:
        item_prefix = _item_prefix(prefix, node.name)
        freed = 0
        for item_id in ids:
            key = item_prefix + item_id.encode()
            raw = txn.get(key)
            if raw is not None:
                freed += self._payload_size(key, raw)
                txn.delete(key)
        self._add_usage(txn, prefix, -freed)

    def publishing(
        self,
        domain: str,
        local: str,
        name: str,
        item: Item,
        new_config: dict[str, Any],
        max_items: Any,
        limits: Limits,
    ) -> Callable[[Any], tuple[Node, bool]]:
        """The work that stores `item` as the newest of node `name`, creating the node with
        `new_config` if it is not there (XEP-0060 §7.1.4 auto-create); items beyond
        `max_items(config)` (oldest first) go. It returns (the node, whether it was
        created). A node that does not persist items keeps none."""
        prefix = account_prefix(domain, local)

        def work(txn: Any) -> tuple[Node, bool]:
            key = self._check_key(_node_key(prefix, name))
            raw = txn.get(key)
            # A corrupt node is made anew (its record goes to the quarantine).
            node = None if raw is None else self._node(key, name, raw)
            created = node is None
            if node is None:
                node = self._new_node(txn, prefix, name, new_config, limits)
            if node.config.get("persist_items", True):
                item_key = self._check_key(_item_prefix(prefix, name) + item.id.encode())
                delta = len(item.payload) - self._payload_size(item_key, txn.get(item_key))
                self._add_usage(txn, prefix, delta, limits.max_bytes)
                txn.put(item_key, msgpack.packb([item.payload, item.publisher, item.stamp]))
                if item.id in node.order:
                    node.order.remove(item.id)
                node.order.append(item.id)
                self._trim(txn, prefix, node, max_items(node.config))
            txn.put(key, _encode_node(node))
            return node, created

        return work

    def _trim(self, txn: Any, prefix: bytes, node: Node, keep: int) -> None:
        if len(node.order) > keep:
            dropped = node.order[: len(node.order) - keep]
            del node.order[: len(node.order) - keep]
            self._drop_items(txn, prefix, node, dropped)

    def configure(
        self, domain: str, local: str, name: str, config: dict[str, Any], keep: int
    ) -> Node | None:
        """Replace the node's configuration; items beyond `keep` (oldest first) go, all of
        them when the node no longer persists items. None if there is no such node."""
        prefix = account_prefix(domain, local)

        def work(txn: Any) -> Node | None:
            key = _node_key(prefix, name)
            raw = txn.get(key) if len(key) <= self.max_key_size else None
            node = None if raw is None else self._node(key, name, raw)
            if node is None:
                return None
            node.config = dict(config)
            self._trim(txn, prefix, node, keep if config.get("persist_items", True) else 0)
            txn.put(key, _encode_node(node))
            return node

        return self.storage.write(work, db=self._db)

    def retracting(
        self, domain: str, local: str, name: str, item_id: str
    ) -> Callable[[Any], bool | None]:
        """The work that retracts an item; it returns None: no such node; False: no such
        item; True: retracted."""
        prefix = account_prefix(domain, local)

        def work(txn: Any) -> bool | None:
            key = _node_key(prefix, name)
            raw = txn.get(key) if len(key) <= self.max_key_size else None
            node = None if raw is None else self._node(key, name, raw)
            if node is None:
                return None
            if item_id not in node.order:
                return False
            node.order.remove(item_id)
            self._drop_items(txn, prefix, node, [item_id])
            txn.put(key, _encode_node(node))
            return True

        return work

    def subscribe(
        self, domain: str, local: str, name: str, jid: str, max_subscriptions: int
    ) -> bool | None:
        """Subscribe `jid` to node `name`: True when added, False when it already was (one
        subscription per JID, XEP-0060 §6.1.6), None when there is no such node; PepLimit
        "subscriptions" when the node has `max_subscriptions` already."""
        prefix = account_prefix(domain, local)

        def work(txn: Any) -> bool | None:
            key = _node_key(prefix, name)
            if len(key) > self.max_key_size or txn.get(key) is None:
                return None
            sub_key = self._check_key(_sub_prefix(prefix, name) + jid.encode())
            if txn.get(sub_key) is not None:
                return False
            if len(_scan(txn, _sub_prefix(prefix, name))) >= max_subscriptions:
                raise PepLimit("subscriptions")
            txn.put(sub_key, msgpack.packb(["subscribed", time.time()]))
            return True

        return self.storage.write(work, db=self._db)

    def unsubscribe(self, domain: str, local: str, name: str, jids: list[str]) -> list[str] | None:
        """Remove the subscriptions of `jids` to node `name`: the JIDs that were subscribed,
        or None when there is no such node."""
        prefix = account_prefix(domain, local)

        def work(txn: Any) -> list[str] | None:
            key = _node_key(prefix, name)
            if len(key) > self.max_key_size or txn.get(key) is None:
                return None
            removed = []
            for jid in jids:
                sub_key = _sub_prefix(prefix, name) + jid.encode()
                if len(sub_key) <= self.max_key_size and txn.delete(sub_key):
                    removed.append(jid)
            return removed

        return self.storage.write(work, db=self._db)

    def purge(self, domain: str, local: str, name: str, delete: bool = False) -> Node | None:
        """Drop every item of the node (and the node itself, with its subscriptions, with
        `delete`); the node as it was, or None if there is no such node."""
        prefix = account_prefix(domain, local)

        def work(txn: Any) -> Node | None:
            key = _node_key(prefix, name)
            raw = txn.get(key) if len(key) <= self.max_key_size else None
            node = None if raw is None else self._node(key, name, raw)
            if node is None:
                return None
            self._drop_items(txn, prefix, node, list(node.order))
            # Anything left under the node's item prefix (never expected) goes too.
            delete_prefix(txn, self._db, _item_prefix(prefix, name))
            if delete:
                txn.delete(key)
                delete_prefix(txn, self._db, _sub_prefix(prefix, name))
            else:
                txn.put(key, _encode_node(Node(name, node.config, [], node.created)))
            return node

        return self.storage.write(work, db=self._db)


def drop_subscriber(txn: Any, db: Any, bare: str) -> int:
    """Delete every subscription of bare JID `bare` (bare or full) to any account's nodes;
    the count. One seek per account that has PEP data."""
    wanted = bare.encode()
    cursor = txn.cursor(db=db)
    removed = 0
    more = cursor.first()
    while more:
        domain, _, rest = bytes(cursor.key()).partition(b"\0")
        local, sep, _ = rest.partition(b"\0")
        if not sep:
            more = cursor.next()  # not an account's key: never written here
            continue
        prefix = domain + b"\0" + local + b"\0"
        start = prefix + b"s"
        found = cursor.set_range(start)
        while found:
            key = bytes(cursor.key())
            if not key.startswith(start):
                break
            jid = key[len(start) :].partition(b"\0")[2]
            if jid == wanted or jid.startswith(wanted + b"/"):
                cursor.delete()  # moves to the next record (b"" past the last one)
                removed += 1
                found = bool(cursor.key())
            else:
                found = cursor.next()
        # Past every key of this account (they go on with an ASCII tag byte).
        more = cursor.set_range(prefix + b"\xff")
    return removed


def _purge(txn: Any, db: Any, domain: str, local: str) -> None:
    """The account's nodes, items and the subscriptions to them; and its own subscriptions
    to other accounts' nodes (XEP-0077 §3.2: all data of the account)."""
    purge_prefixed(txn, db, domain, local)
    drop_subscriber(txn, db, f"{local}@{domain}")


register_purge(DATABASE, _purge)
