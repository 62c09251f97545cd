"""Returning freed heap memory to the system after connection churn, and the garbage
collector's frozen survivors (fastxmpp/memory.py)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from fastxmpp import memory
from fastxmpp.memory import FrozenSurvivors


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


def test_survivors_of_a_full_collection_are_frozen_until_the_interval_ends() -> None:
    """memory.FrozenSurvivors: a full collection freezes what survived it; at the interval
    everything is unfrozen for the next full collection; stop undoes it all."""

    async def run() -> None:
        survivors = FrozenSurvivors(0.2)
        survivors.start()
        try:
            kept = [[n] for n in range(1000)]  # tracked objects that survive
            gc.collect()
            frozen = gc.get_freeze_count()
            assert frozen >= len(kept)
            young = [[n] for n in range(100)]
            gc.collect(0)  # a young collection freezes nothing more
            assert gc.get_freeze_count() == frozen
            await asyncio.sleep(0.4)  # the interval: unfrozen
            assert gc.get_freeze_count() == 0
            gc.collect()
            assert gc.get_freeze_count() >= len(kept) + len(young)
        finally:
            survivors.stop()
        assert gc.get_freeze_count() == 0
        assert survivors._collected not in gc.callbacks
        gc.collect()
        assert gc.get_freeze_count() == 0  # stopped: nothing is frozen any more

    asyncio.run(run())


def test_zero_interval_leaves_the_collector_alone() -> None:
    async def run() -> None:
        survivors = FrozenSurvivors(0)
        survivors.start()
        gc.collect()
        assert gc.get_freeze_count() == 0
        survivors.stop()

    asyncio.run(run())
