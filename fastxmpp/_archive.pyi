# Types of fastxmpp/_archive.pyx (the archive writer's per-row work, compiled).
from collections.abc import Callable
from typing import Any

def record_value(when: float, with_: str, direction: str, xml: bytes) -> bytes: ...
def fold_tail(
    archive_put: Callable[..., bool],
    prefix: bytes,
    tail: list[Any],
    stats: list[Any],
    on_duplicate: Callable[..., None],
) -> None: ...
def put_rows(
    rows: list[Any],
    folded: dict[bytes, list[Any]],
    journal_put: Callable[..., bool],
    archive_put: Callable[..., bool],
    journaled: list[Any],
    on_duplicate: Callable[..., None],
) -> int: ...
def trim_journal(cursor: Any, end: bytes | None) -> None: ...
