"""Per-session records: what a module keeps for each session, declared rather than attached.

A module that keeps state per session declares it once, at import, as a small typed class
(`__slots__`, or `dataclass(slots=True)`) and the slot that holds it:

    @dataclass(slots=True)
    class RosterRecord:
        requested: bool = False      # RFC 6121 §2.1.6: an interested resource

    ROSTER = RecordSlot(RosterRecord)

and reads it with `ROSTER.get(session)` (None while the session has none), creates it with
`ROSTER.of(session)`, ends it with `ROSTER.drop(session)`. mypy types each record through
its slot. The records live in one list on the session (`Session.records`, a C-level slot of
the router's Session), which exists only once a module stored something: an idle session
holds none (docs/PERFORMANCE.md, "Many connections").

A slot is its module's own: another module that needs the data asks the owning module's
documented interface (`hub.get("presence").last_presence(session)`), never the record. A
session's records go with the session; nothing has to clean them up. Records made for a
client stream before it was bound (XEP-0077, XEP-0078 counters) go at bind, with the rest of
its negotiation state (stream/c2s_negotiation.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

R = TypeVar("R")


class RecordSlot(Generic[R]):
    """The place of one kind of per-session record, made by `make` when first needed."""

    __slots__ = ("index", "make")

    declared: ClassVar[int] = 0  # slots declared so far: the length of a records list

    def __init__(self, make: Callable[[], R]) -> None:
        self.make = make
        self.index = RecordSlot.declared
        RecordSlot.declared += 1

    def get(self, session: Any) -> R | None:
        """The session's record, or None when it has none."""
        records = session.records
        if records is None or self.index >= len(records):
            return None
        record: R | None = records[self.index]
        return record

    def of(self, session: Any) -> R:
        """The session's record, made now when it has none."""
        records = session.records
        if records is None:
            records = session.records = [None] * RecordSlot.declared
        elif self.index >= len(records):
            # A slot declared after this list was made (a module imported later).
            records.extend([None] * (RecordSlot.declared - len(records)))
        record: R | None = records[self.index]
        if record is None:
            record = records[self.index] = self.make()
        return record

    def drop(self, session: Any) -> R | None:
        """The session no longer has this record; the one it had, or None."""
        records = session.records
        if records is None or self.index >= len(records):
            return None
        record: R | None = records[self.index]
        records[self.index] = None
        return record
