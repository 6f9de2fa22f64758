"""Scale samplers: determinism in (seed, iteration), resume, grids, symmetry, bad options."""
import numpy as np
import pytest

from metasr_arch.utils.scale_sampler import build_scale_sampler

UNIFORM = {'type': 'uniform', 'v': [1.5, 4.0], 'h': [1.5, 4.0], 'step': 0.5, 'p_symmetric': 0.5}


def test_sequence_depends_only_on_seed_and_iteration():
    a, b = build_scale_sampler(UNIFORM, seed=7), build_scale_sampler(UNIFORM, seed=7)
    seq_a = [a(t) for t in range(1, 201)]
    # a second sampler (another rank, or a resumed run starting at iteration 101) draws the same values,
    # whatever it drew before
    assert [b(t) for t in range(101, 201)] == seq_a[100:]
    assert [b(t) for t in range(1, 101)] == seq_a[:100]
    assert len(set(seq_a)) > 10  # not constant
    other = [build_scale_sampler(UNIFORM, seed=8)(t) for t in range(1, 201)]
    assert other != seq_a


def test_uniform_grid_and_symmetry_rate():
    s = build_scale_sampler(UNIFORM, seed=0)
    draws = np.array([s(t) for t in range(4000)])
    grid = {1.5, 2.0, 2.5, 3.0, 3.5, 4.0}
    assert set(draws[:, 0]) == grid and set(draws[:, 1]) == grid
    sym = np.mean(draws[:, 0] == draws[:, 1])
    # symmetric draws: p + (1 - p) / 6 (an independent pair is equal with probability 1/6)
    assert abs(sym - (0.5 + 0.5 / 6)) < 0.03
    assert s.max_scale == (4.0, 4.0)


def test_uniform_paper_grid_and_continuous():
    s = build_scale_sampler({'type': 'uniform', 'v': [1.1, 4.0], 'step': 0.1, 'p_symmetric': 1.0}, seed=1)
    draws = [s(t) for t in range(3000)]
    assert all(v == h for v, h in draws)
    assert sorted({v for v, _ in draws}) == [round(1.1 + 0.1 * k, 10) for k in range(30)]
    c = build_scale_sampler({'type': 'uniform', 'v': [1.0, 2.0], 'h': [3.0, 3.5], 'step': 0}, seed=1)
    d = np.array([c(t) for t in range(500)])
    assert d[:, 0].min() >= 1.0 and d[:, 0].max() <= 2.0 and d[:, 1].min() >= 3.0 and d[:, 1].max() <= 3.5
    assert len(set(d[:, 0])) == 500


def test_choice():
    s = build_scale_sampler({'type': 'choice', 'scales': [2, [1.5, 4], [4, 2]]}, seed=3)
    draws = [s(t) for t in range(600)]
    assert set(draws) == {(2.0, 2.0), (1.5, 4.0), (4.0, 2.0)}
    assert s.max_scale == (4.0, 4.0)
    w = build_scale_sampler({'type': 'choice', 'scales': [2, 3], 'weights': [1, 0]}, seed=3)
    assert {w(t) for t in range(50)} == {(2.0, 2.0)}


@pytest.mark.parametrize('opt, match', [
    ({'type': 'gaussian', 'v': [1, 2]}, 'type must be one of'),
    ({'v': [1, 2]}, 'type must be one of'),
    ({'type': 'uniform', 'v': [0.5, 2]}, 'below 1'),
    ({'type': 'uniform', 'v': [3, 2]}, 'hi < lo'),
    ({'type': 'uniform', 'v': [1, 2, 3]}, r'range \[lo, hi\]'),
    ({'type': 'uniform', 'v': [1, 2], 'p_symmetric': 2}, 'p_symmetric'),
    ({'type': 'uniform', 'v': [1, 2], 'h': [3, 4], 'p_symmetric': 0.5}, 'overlapping'),
    ({'type': 'uniform', 'v': [1, 2], 'stepp': 0.1}, "unknown option 'stepp'.*did you mean 'step'"),
    ({'type': 'choice', 'scales': [2, 0.5]}, r'scales\[1\]'),
    ({'type': 'choice', 'scales': [[2, 3, 4]]}, r'scales\[0\]'),
    ({'type': 'choice', 'scales': []}, 'non-empty'),
])
def test_bad_options(opt, match):
    with pytest.raises(ValueError, match=match):
        build_scale_sampler(opt, seed=0)
