"""Returning freed heap memory to the system after connection churn (fastxmpp/memory.py)."""

from __future__ import annotations

import asyncio

import pytest

from fastxmpp import memory


def test_malloc_trim_is_available_on_glibc() -> None:
    # The CI machines run Debian (glibc): the trim must really be wired up there.
    assert memory.release_free_memory() is True


def test_one_trim_per_burst_of_churn(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(memory, "_MALLOC_TRIM", lambda pad: calls.append(pad) or 1)

    async def scenario() -> None:
        trimmer = memory.HeapTrimmer(0.05)
        for _ in range(100):  # a wave of logins
            trimmer.churned()
        await asyncio.sleep(0.2)
        assert calls == [0]
        trimmer.churned()  # later churn: one more trim
        await asyncio.sleep(0.2)
        assert calls == [0, 0]
        trimmer.churned()
        trimmer.stop()  # a server shutting down cancels the pending trim
        await asyncio.sleep(0.2)
        assert calls == [0, 0]

    asyncio.run(scenario())


def test_zero_delay_turns_trimming_off(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(memory, "_MALLOC_TRIM", lambda pad: calls.append(pad) or 1)

    async def scenario() -> None:
        trimmer = memory.HeapTrimmer(0.0)
        trimmer.churned()
        await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert calls == []
