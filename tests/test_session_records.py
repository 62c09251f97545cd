"""Per-session state is declared, not attached (issue 11, item 3; fastxmpp/records.py).

The behaviour that rests on the records (presence broadcast and probes, directed presence,
privacy lists' presence moves, roster pushes, PEP notifications, XEP-0012 statuses, MUC
leave statuses, registration and non-SASL limits) is what the protocol suites test through
real servers; here: the slot mechanism itself, that a client session cannot be given
attributes, and that no module reads another's state off a session."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastxmpp._router import Session

import fastxmpp
from fastxmpp.records import RecordSlot
from fastxmpp.stream.c2s import C2SStream


@dataclass(slots=True)
class Counter:
    seen: int = 0


def test_a_record_is_made_on_first_use_and_kept() -> None:
    slot = RecordSlot(Counter)
    session = Session()
    assert slot.get(session) is None
    assert session.records is None  # nothing allocated for a session no module used
    record = slot.of(session)
    record.seen += 1
    assert slot.get(session) is record
    assert slot.of(session) is record and record.seen == 1
    assert slot.drop(session) is record
    assert slot.get(session) is None
    assert slot.drop(session) is None


def test_records_of_different_slots_and_sessions_are_apart() -> None:
    first, second = RecordSlot(Counter), RecordSlot(Counter)
    one, two = Session(), Session()
    first.of(one).seen = 1
    second.of(one).seen = 2
    first.of(two).seen = 3
    assert first.get(one) == Counter(1) and second.get(one) == Counter(2)
    assert first.get(two) == Counter(3) and second.get(two) is None


def test_a_slot_declared_after_a_session_has_records_fits_in() -> None:
    # A module imported later (an entry-point module) declares its slot after sessions
    # already hold records.
    early = RecordSlot(Counter)
    session = Session()
    early.of(session).seen = 5
    late = RecordSlot(Counter)
    assert late.get(session) is None
    late.of(session).seen = 7
    assert early.get(session) == Counter(5) and late.get(session) == Counter(7)


def test_a_client_session_takes_no_attributes_beyond_its_declared_ones() -> None:
    # The stream's attributes are __slots__ over the router's compiled Session: a module
    # that tried to keep state on a session would fail at once, and a session carries no
    # per-instance dict (docs/PERFORMANCE.md, "Many connections").
    assert C2SStream.__dictoffset__ == 0
    session = C2SStream.__new__(C2SStream)
    with pytest.raises(AttributeError):
        session.roster_requested = True  # type: ignore[attr-defined]


SESSION_NAMES = {"session", "origin", "stream", "target", "contact", "other", "old", "s"}


def _reads_off_sessions(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and node.args
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id in SESSION_NAMES
        ):
            found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    return found


def test_no_module_reads_or_sets_session_state_by_name() -> None:
    # The installed package's sources (the .py files ship in the wheel).
    package = Path(fastxmpp.__file__).parent
    sources = sorted(package.rglob("*.py"))
    assert any(p.name == "presence.py" for p in sources)
    found = [hit for path in sources for hit in _reads_off_sessions(path)]
    assert found == []
