"""`DeadlineHeap.peek_due` (asked before every API answer) against a brute-force model.

`peek_due` drops buckets emptied since they were pushed from the top of the heap, so it stays
O(1) while nothing is due (docs/benchmarks.md "API latency"). These tests pin that the
dropping never loses or invents a deadline: after any mix of `set`, `clear`, `pop_due` and
`peek_due`, both answers equal a plain dict of deadlines. Operation counts only, no timing.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from inventory.gaps import DeadlineHeap

_N = 6

_op = st.one_of(
    st.tuples(st.just("set"), st.integers(0, _N - 1), st.integers(0, 400)),
    st.tuples(st.just("clear"), st.integers(0, _N - 1), st.just(0)),
    st.tuples(st.just("peek"), st.just(0), st.integers(0, 60)),
    st.tuples(st.just("pop"), st.just(0), st.integers(0, 60)),
)


@settings(max_examples=400, deadline=None)
@given(ops=st.lists(_op, max_size=80))
def test_peek_and_pop_equal_a_plain_model(ops: list[tuple[str, int, int]]) -> None:
    """Deadlines in tenths of seconds on a coarse grid, so items share and straddle buckets."""
    heap = DeadlineHeap(_N, resolution=1.0)
    model: dict[int, float] = {}
    now = 0.0
    for kind, item, arg in ops:
        if kind == "set":
            deadline = arg / 10
            heap.set(item, deadline)
            model[item] = deadline
        elif kind == "clear":
            heap.clear(item)
            model.pop(item, None)
        elif kind == "peek":
            at = now + arg / 10
            assert sorted(heap.peek_due(at)) == sorted(i for i, d in model.items() if d < at)
            for i in range(_N):  # peeking changes no deadline
                assert heap.get(i) == model.get(i)
        else:
            now += arg / 10
            due = sorted((d, i) for i, d in model.items() if d < now)
            assert heap.pop_due(now) == [(i, d) for d, i in due]
            for _, i in due:
                del model[i]
    at = now + 100.0
    assert sorted(heap.peek_due(at)) == sorted(model)
    assert sorted(heap.pop_due(at)) == sorted(model.items())


def test_peek_drops_emptied_buckets_and_a_later_set_still_fires() -> None:
    heap = DeadlineHeap(3, resolution=1.0)
    for item in range(3):
        heap.set(item, 10.0 + item)  # three buckets
    for item in range(3):
        heap.set(item, 100.0)  # every reading moves its point: the three buckets run empty
    assert len(heap) == 4
    assert heap.peek_due(50.0) == []
    assert len(heap) == 1  # only the bucket of 100 s is left
    heap.set(0, 11.5)  # into a bucket that was dropped: pushed again
    assert heap.peek_due(12.0) == [0]
    assert heap.pop_due(12.0) == [(0, 11.5)]
    assert sorted(heap.peek_due(101.0)) == [1, 2]
