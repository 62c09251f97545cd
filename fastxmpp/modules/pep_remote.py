"""The resources of contacts on other servers (or at components) that PEP notifies: what it
learns from the available presence they send to accounts here (XEP-0163 §4.3.1: a service
with presence information about a contact sends to the full JIDs of its available
resources), kept in memory and bounded.

A `RemoteResource` stands for one full JID and looks to the PEP module like a session: its
`send` goes out over server-to-server links (or to the component), it carries PEP's
per-session record (caps, +notify nodes, the caps query under way), and it is available
while some account here last got available presence from it (`seen_by`).

`RemoteResources` holds them: at most `size` (the least recently heard of goes first) and
at most `PER_CONTACT` per bare JID, so that no peer can make the table grow without end by
sending presence from new resources; a resource goes when the last account that saw it
gets its unavailable presence.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

# Resources of one contact remembered at once: a peer inventing resources pushes out only
# its own contact's oldest ones.
PER_CONTACT = 32

Deliver = Callable[[bytes, str], bool]


class RemoteResource:
    """A contact's resource on another server, as PEP uses a session."""

    __slots__ = ("_deliver", "bare", "domain", "full", "local", "records", "seen_by")

    available = True  # while it is listed: its unavailable presence takes it out
    stanza_filter = None  # its privacy lists are its own server's to apply
    is_remote = True

    def __init__(self, full: str, deliver: Deliver) -> None:
        self.full = full
        self.bare, _, _resource = full.partition("/")
        local, _, self.domain = self.bare.rpartition("@")
        self.local = local
        self.records: list[object] | None = None  # fastxmpp/records.py: PEP's record
        # The local accounts (bare JIDs) it sent available presence to, oldest first.
        self.seen_by: dict[str, None] = {}
        self._deliver = deliver

    def send(self, data: bytes) -> None:
        self._deliver(data, self.full)


class RemoteResources:
    """Remote resources by full JID, least recently heard of first; `dropped` hears of each
    that goes (unavailable, pushed out by the bounds, its last account gone)."""

    def __init__(
        self, size: int, deliver: Deliver, dropped: Callable[[RemoteResource], None]
    ) -> None:
        self.size = size
        self._deliver = deliver
        self._dropped = dropped
        self._by_full: OrderedDict[str, RemoteResource] = OrderedDict()
        self._by_bare: dict[str, dict[str, RemoteResource]] = {}

    def __len__(self) -> int:
        return len(self._by_full)

    def available(self, full: str, owner: str) -> tuple[RemoteResource, bool]:
        """`full` sent account `owner` available presence: its resource, and whether
        `owner` is new to it (initial presence toward that account)."""
        resource = self._by_full.get(full)
        if resource is None:
            resource = RemoteResource(full, self._deliver)
            siblings = self._by_bare.setdefault(resource.bare, {})
            if len(siblings) >= PER_CONTACT:
                self._drop(next(iter(siblings.values())))
            while len(self._by_full) >= self.size:
                self._drop(next(iter(self._by_full.values())))
            self._by_full[full] = resource
            siblings[full] = resource
        else:
            self._by_full.move_to_end(full)
            siblings = self._by_bare[resource.bare]
            del siblings[full]
            siblings[full] = resource
        new = owner not in resource.seen_by
        resource.seen_by[owner] = None
        return resource, new

    def unavailable(self, full: str, owner: str) -> None:
        """`full` sent account `owner` unavailable presence."""
        resource = self._by_full.get(full)
        if resource is not None:
            self._unseen(resource, owner)

    def of(self, bare: str) -> list[RemoteResource]:
        """The resources of contact `bare`, oldest first."""
        return list(self._by_bare.get(bare, {}).values())

    def forget(self, owner: str, bare: str | None = None) -> None:
        """Account `owner` no longer hears from contact `bare` (None: from anyone)."""
        found = self.of(bare) if bare is not None else list(self._by_full.values())
        for resource in found:
            if owner in resource.seen_by:
                self._unseen(resource, owner)

    def _unseen(self, resource: RemoteResource, owner: str) -> None:
        resource.seen_by.pop(owner, None)
        if not resource.seen_by:
            self._drop(resource)

    def _drop(self, resource: RemoteResource) -> None:
        del self._by_full[resource.full]
        siblings = self._by_bare[resource.bare]
        del siblings[resource.full]
        if not siblings:
            del self._by_bare[resource.bare]
        self._dropped(resource)
