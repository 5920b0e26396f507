"""nnkcli.evaluation.search.rerank: exact order and the neighbors' vectors, against a plain loop."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from nnkcli.evaluation.search import rerank


@settings(max_examples=60, deadline=None)
@given(b=st.integers(1, 6), c=st.integers(1, 30), d=st.integers(1, 12), n=st.integers(1, 40),
       missing_rate=st.sampled_from([0.0, 0.2]), seed=st.integers(0, 2**31 - 1))
def test_rerank_orders_candidates_exactly_and_carries_their_vectors(b, c, d, n, missing_rate, seed):
    rng = np.random.default_rng(seed)
    # coarse values: many exact ties, broken by row id
    vectors = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    q = rng.integers(-2, 3, size=(b, d)).astype(np.float32)
    ids = rng.integers(0, n, size=(b, c))
    ids[rng.random((b, c)) < missing_rate] = -1
    got_ids, got_sims, got_X, got_missing = rerank(q, ids.copy(), lambda safe: vectors[safe])
    for i in range(b):  # the oracle: a float64 loop and a sort on (similarity descending, id ascending)
        entries = []
        for j in ids[i]:
            if j < 0:
                entries.append((np.inf, np.iinfo(np.int64).max, -1))
            else:
                s = sum(float(vectors[j, t]) * float(q[i, t]) for t in range(d))
                entries.append((-s, int(j), int(j)))
        entries.sort()
        want_ids = [e[2] for e in entries]
        assert got_ids[i].tolist() == want_ids
        for slot, (neg, _, j) in enumerate(entries):
            if j < 0:
                assert got_missing[i, slot] and got_sims[i, slot] == -np.inf
            else:
                assert not got_missing[i, slot]
                assert got_sims[i, slot] == -neg
                np.testing.assert_array_equal(got_X[i, slot], vectors[j])
