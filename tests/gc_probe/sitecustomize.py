"""Imported by a fastxmpp server started with this directory on PYTHONPATH and GC_PROBE_OUT
set (tests/test_cycles.py): the cyclic garbage collector keeps what it frees
(gc.DEBUG_SAVEALL), and SIGUSR2 collects, then writes the type of every object freed so far,
and the code of every frame among them, one per line, to GC_PROBE_OUT."""

from __future__ import annotations

import gc
import os
import signal
from typing import Any

OUT = os.environ.get("GC_PROBE_OUT")


def _report(signum: int, frame: Any) -> None:
    assert OUT is not None
    gc.unfreeze()  # fastxmpp.memory.FrozenSurvivors: frozen objects are never collected
    gc.collect()
    lines = []
    for obj in gc.garbage:
        kind = type(obj)
        lines.append(f"{kind.__module__}.{kind.__qualname__}")
        if kind.__name__ == "frame":
            lines.append(f"frame {obj.f_code.co_filename}:{obj.f_code.co_qualname}")
    with open(OUT + ".part", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(OUT + ".part", OUT)


if OUT:
    gc.set_debug(gc.DEBUG_SAVEALL)
    signal.signal(signal.SIGUSR2, _report)
