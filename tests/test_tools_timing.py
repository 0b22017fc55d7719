"""tools/_timing.py, the side-by-side timing that tools/coverage_worker.py's ``side_by_side``
and tools/bench_runtime.py's ``ratio_medians`` share, driven by fake sessions on fake clocks
that only the sessions advance, so every figure is exact.
"""
from __future__ import annotations

import types

import pytest

import tool_modules

timing = tool_modules.load("_timing")


class _Clocks:
    """A wall clock and a CPU clock that move only when a fake session runs."""

    def __init__(self):
        self.wall, self.cpu, self.calls = 0.0, 0.0, []

    def perf_counter(self):
        return self.wall

    def thread_time(self):
        return self.cpu


class _Session:
    """Costs ``cost`` wall seconds per run, ``cpu_share`` of them on the CPU clock."""

    def __init__(self, name, cost, clocks, inputs=("x",), cpu_share=1.0):
        self.name, self.cost, self.clocks, self.inputs, self.cpu_share = name, cost, clocks, inputs, cpu_share
        self.feeds = []

    def get_inputs(self):
        return [types.SimpleNamespace(name=n) for n in self.inputs]

    def run(self, names, feed):
        self.feeds.append(dict(feed))
        self.clocks.wall += self.cost
        self.clocks.cpu += self.cost * self.cpu_share
        self.clocks.calls.append(self.name)


def test_a_session_twice_as_slow_reads_twice_as_slow_in_every_round():
    clocks = _Clocks()
    fns = [timing.session_call(_Session(n, c, clocks), {"x": 1}) for n, c in (("a", 0.25), ("b", 0.5))]
    rounds = timing.rotated_rounds(fns, rounds=4, inner=3, clocks=(clocks.perf_counter,))
    assert rounds == [[(0.25,), (0.5,)]] * 4  # per call, indexed by session whatever slot it ran in
    assert [r[1][0] / r[0][0] for r in rounds] == [2.0] * 4
    # three calls per sample; with two sessions the rotation alternates a b, b a, ...
    assert clocks.calls == ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3 + ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3


def test_rounds_rotate_the_order_through_every_slot():
    clocks = _Clocks()
    fns = [timing.session_call(_Session(n, 1.0, clocks), {"x": 1}) for n in "abc"]
    timing.rotated_rounds(fns, rounds=4, inner=1, clocks=(clocks.perf_counter,))
    assert "".join(clocks.calls) == "abc" "bca" "cab" "abc"


def test_clocks_nest_so_the_first_encloses_the_others():
    reads = []
    outer = iter([0.0, 10.0])
    inner = iter([3.0, 4.0])

    def wall():
        reads.append("wall")
        return next(outer)

    def cpu():
        reads.append("cpu")
        return next(inner)

    out = timing.rotated_rounds([lambda: None], rounds=1, inner=2, clocks=(wall, cpu))
    assert out == [[(5.0, 0.5)]]
    assert reads == ["wall", "cpu", "cpu", "wall"]


def test_runs_per_sample():
    assert timing.runs_per_sample(2 ** -7, 0.02) == 2  # 7.8 ms runs, 20 ms samples
    assert timing.runs_per_sample(1.0, 0.003) == 1     # never fewer than one run
    assert timing.runs_per_sample(0.0, 0.003) == 3000  # a probe under 1 us counts as 1 us


def test_session_call_passes_only_the_sessions_own_inputs_when_asked():
    clocks = _Clocks()
    sess = _Session("a", 1.0, clocks)
    timing.session_call(sess, {"x": 1, "sr": 2}, own_inputs=True)()
    timing.session_call(sess, {"x": 1, "sr": 2})()
    assert sess.feeds == [{"x": 1}, {"x": 1, "sr": 2}]


def test_bench_runtime_ratio_medians_on_fake_clocks(monkeypatch):
    """ratio_medians' tuples, exactly: (median wall s, wall / first, cpu / first,
    fastest / first's fastest, wall / second)."""
    bench = tool_modules.load("bench_runtime")
    clocks = _Clocks()
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=clocks.perf_counter,
                                                             thread_time=clocks.thread_time))
    sessions = {"float": _Session("float", 2 ** -10, clocks),
                "fp8onnx": _Session("fp8onnx", 2 ** -9, clocks, cpu_share=0.5),
                "ours": _Session("ours", 3 * 2 ** -10, clocks)}
    rows = bench.ratio_medians(sessions, {"x": 1}, repeats=5)
    assert rows == [(2 ** -10, 1.0, 1.0, 1.0, 0.5), (2 ** -9, 2.0, 1.0, 2.0, 1.0),
                    (3 * 2 ** -10, 3.0, 3.0, 3.0, 1.5)]
    # 3 warm-ups each, one probe of the first (~1 ms: 3 calls per ~3 ms sample), 5 rotated repeats
    calls = clocks.calls
    assert calls[:10] == ["float"] * 3 + ["fp8onnx"] * 3 + ["ours"] * 3 + ["float"]
    assert calls[10::3] == ["float", "fp8onnx", "ours", "fp8onnx", "ours", "float", "ours", "float",
                            "fp8onnx", "float", "fp8onnx", "ours", "fp8onnx", "ours", "float"]
    assert len(calls) == 10 + 5 * 3 * 3


@pytest.mark.parametrize("slow", [2.0, 0.5])
def test_coverage_worker_side_by_side_reads_the_ratio(slow):
    worker = tool_modules.load("coverage_worker")
    clocks = _Clocks()
    r = worker.side_by_side([_Session("fp32", 0.125, clocks), _Session("ours", 0.125 * slow, clocks)], {"x": 1},
                            clock=clocks.perf_counter)
    assert r["ratio"] == slow and r["inner"] == 1


def test_coverage_worker_side_by_side_takes_a_pair_only():
    worker = tool_modules.load("coverage_worker")
    clocks = _Clocks()
    with pytest.raises(ValueError, match="two sessions, got 3"):
        worker.side_by_side([_Session(k, 0.125, clocks) for k in ("a", "b", "c")], {"x": 1},
                            clock=clocks.perf_counter)
    assert clocks.calls == []  # refused before any run
