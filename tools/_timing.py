"""Timing several onnxruntime sessions (or any callables) side by side, for the tools.

tools/coverage_worker.py (``side_by_side``: a quantized model's run time over the FP32
model's) and tools/bench_runtime.py (``ratio_medians``: each zoo variant's over the float
model's) both compare run times on a machine whose cores other processes share. Load
from those processes comes and goes, so timing each session in a stretch of its own would
put a different load on each. Instead both time the sessions in *rounds*: a round runs
every session once, and a caller's figure is the median over rounds of a ratio taken
within one round, where load that drifts between rounds falls on both sides alike.

What this module does once for both:

* Order. Round ``r`` starts at session ``r mod n`` and goes on in order, wrapping round
  (0 1 2, 1 2 0, 2 0 1, ...). A session that always runs right after another one inherits
  its cache and thread-pool state: the slot after another session's run was measured
  slower for any session placed there. Rotating moves every session through every slot.
  With two sessions this is plain alternation: A B, B A, A B, ...
* Samples. One sample is ``inner`` back-to-back calls of a session, timed together and
  divided by ``inner``, so that runs shorter than the clock's resolution or than a
  time slice lost to another process still give usable figures. ``runs_per_sample``
  picks ``inner`` from one probe run and the sample length the caller wants.

Warming up, the probe and the rounds' count stay with the callers: they are the callers'
policy (the coverage worker fills a time budget with ~20 ms samples, the benchmark runs
a fixed number of repeats of ~3 ms samples).

Clocks are arguments, so tests drive all of this with a fake clock that only the fake
sessions advance (tests/test_tools_timing.py).
"""
from __future__ import annotations

import time
from typing import Callable, List, Sequence, Tuple

__all__ = ["session_call", "runs_per_sample", "rotated_rounds"]


def session_call(session, feed: dict, *, own_inputs: bool = False) -> Callable[[], object]:
    """A no-argument callable running ``session`` on ``feed``.

    ``own_inputs`` passes only the feed entries the session declares as inputs: a model
    the compiler specialized can take fewer inputs than the one the feed was made for.
    Without it the feed goes as it is (onnxruntime rejects names it does not know).
    """
    if own_inputs:
        names = {i.name for i in session.get_inputs()}
        feed = {k: v for k, v in feed.items() if k in names}
    return lambda: session.run(None, feed)


def runs_per_sample(probe_s: float, target_s: float) -> int:
    """Calls per sample so a sample lasts about ``target_s``, given one call took
    ``probe_s`` (at least 1; a probe under a microsecond counts as one microsecond)."""
    return max(1, int(target_s / max(probe_s, 1e-6)))


def rotated_rounds(fns: Sequence[Callable[[], object]], rounds: int, inner: int,
                   clocks: Sequence[Callable[[], float]] = (time.perf_counter,)
                   ) -> List[List[Tuple[float, ...]]]:
    """Time ``fns`` in ``rounds`` rounds, rotating the order each round (see the module
    docstring); one sample is ``inner`` calls.

    Returns ``out[r][i][c]``: seconds per call of ``fns[i]`` in round ``r`` on
    ``clocks[c]``, indexed by the callable whatever slot it ran in. The clocks are read in
    nested order (first clock first at the start and last at the end), so the first clock's
    interval encloses the others' (wall time around thread CPU time, say).
    """
    n = len(fns)
    out = []
    for r in range(rounds):
        per: List[Tuple[float, ...]] = [()] * n
        for k in range(n):
            i = (k + r) % n
            start = [clock() for clock in clocks]
            for _ in range(inner):
                fns[i]()
            end = [clock() for clock in reversed(clocks)][::-1]
            per[i] = tuple((e - s) / inner for s, e in zip(start, end))
        out.append(per)
    return out
