"""Per-iteration scale samplers for Meta-SR training, built from the YAML ``train: scale_sampler`` dict.

Every batch is trained at one scale ``(r_v, r_h)``. The scale of iteration ``t`` is a pure function of
``(manual_seed, t)``: each draw builds a fresh numpy generator from ``SeedSequence([seed, t, salt])``
(a stable hash, unlike Python's salted ``hash``). So every rank of a distributed run draws the same
scale without communicating, and a resumed run continues the very sequence it was interrupted in.

Options::

    scale_sampler:
      type: uniform          # r_v from v, r_h from h, on a grid lo, lo + step, ... <= hi
      v: [1.1, 4.0]
      h: [1.1, 4.0]          # default: the same range as v
      step: 0.1              # 0 or null: continuous uniform
      p_symmetric: 1.0       # probability that r_h = r_v (drawn from the common range)

    scale_sampler:
      type: choice           # one entry uniformly (or with ``weights``)
      scales: [2, 3.5, [1.5, 4], [4, 2]]   # a number is symmetric, a pair is [r_v, r_h]
"""
import inspect
import math
from numbers import Real
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np

from metasr_arch.ops.geometry import parse_scale
from metasr_arch.utils.options import _closest

Scale = Tuple[float, float]
MAX_GRID = 100_000  # grid points per axis: finer steps are continuous in practice
_SALT = 0x4D455441  # 'META': keeps this stream apart from other users of (seed, iteration)


def _generator(seed: int, iteration: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(iteration), _SALT]))


def _check_range(value, name: str) -> Tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(
            isinstance(v, Real) and not isinstance(v, bool) for v in value):
        raise ValueError(f'scale_sampler.{name} must be a range [lo, hi] of two numbers, got {value!r}')
    lo, hi = float(value[0]), float(value[1])
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f'scale_sampler.{name} must be finite, got {value!r}')
    if lo < 1:
        raise ValueError(f'scale_sampler.{name} starts below 1 ({lo}): Meta-SR scales must be >= 1')
    if hi < lo:
        raise ValueError(f'scale_sampler.{name} = {value!r} is malformed: hi < lo')
    return lo, hi


class ScaleSampler:
    """Base class: ``sampler(iteration) -> (r_v, r_h)``, deterministic in (seed, iteration)."""

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def __call__(self, iteration: int) -> Scale:
        return self.draw(_generator(self.seed, iteration))

    def draw(self, rng: np.random.Generator) -> Scale:
        raise NotImplementedError

    @property
    def max_scale(self) -> Scale:
        """Largest (r_v, r_h) the sampler can return, per axis (to size GT patches)."""
        raise NotImplementedError


class UniformScaleSampler(ScaleSampler):
    """r_v and r_h uniform over [lo, hi] per axis, on a grid of ``step`` (or continuous when step is 0).

    With probability ``p_symmetric`` one value is drawn from the range common to both axes and used
    for both (error if the ranges do not overlap and p_symmetric > 0).
    """

    def __init__(self, v: Sequence[float], h: Optional[Sequence[float]] = None, step: Optional[float] = 0.1,
                 p_symmetric: float = 0.0, seed: int = 0):
        super().__init__(seed)
        self.v = _check_range(v, 'v')
        self.h = _check_range(v if h is None else h, 'h')
        if step is not None and (isinstance(step, bool) or not isinstance(step, Real) or step < 0
                                 or not math.isfinite(step)):
            raise ValueError(f'scale_sampler.step must be a non-negative number (0 or null: continuous), got {step!r}')
        self.step = float(step or 0.0)
        for name, (lo, hi) in (('v', self.v), ('h', self.h)):
            self._check_step(name, lo, hi)
        if isinstance(p_symmetric, bool) or not isinstance(p_symmetric, Real) or not 0 <= p_symmetric <= 1:
            raise ValueError(f'scale_sampler.p_symmetric must be a probability in [0, 1], got {p_symmetric!r}')
        self.p_symmetric = float(p_symmetric)
        self.common = (max(self.v[0], self.h[0]), min(self.v[1], self.h[1]))
        if self.p_symmetric > 0 and self.common[0] > self.common[1]:
            raise ValueError(f'scale_sampler: p_symmetric = {p_symmetric} needs overlapping ranges, got '
                             f'v = {list(self.v)} and h = {list(self.h)}')
        self.grid_v, self.grid_h = self._grid(self.v), self._grid(self.h)
        if self.step and self.p_symmetric > 0:
            self.grid_common = np.intersect1d(self.grid_v, self.grid_h)
            if self.grid_common.size == 0:
                raise ValueError('scale_sampler: the v and h grids share no value for symmetric draws')

    def _check_step(self, name: str, lo: float, hi: float) -> None:
        """A grid ``lo, lo + step, ...`` must reach ``hi`` (within 1e-6) and stay small enough to hold."""
        if not self.step or hi == lo:
            return
        points = (hi - lo) / self.step
        if points > MAX_GRID:
            raise ValueError(f'scale_sampler.step = {self.step!r} makes {points:.3g} grid points over {name} = '
                             f'[{lo:g}, {hi:g}] (at most {MAX_GRID}): use a coarser step, or step: 0 for continuous')
        if abs(points - round(points)) * self.step > 1e-6 or round(points) < 1:
            end = lo + self.step * math.floor(points + 1e-9)
            raise ValueError(f'scale_sampler.step = {self.step:g} cannot produce the range {name} = [{lo:g}, {hi:g}]: '
                             f'its grid lo, lo + step, ... ends at {end:g}; choose a step that divides '
                             f'hi - lo = {hi - lo:g}, or step: 0 for continuous')

    def _grid(self, rng: Tuple[float, float]) -> Optional[np.ndarray]:
        if not self.step:
            return None
        n = int(math.floor((rng[1] - rng[0]) / self.step + 1e-9))
        # rounding removes float drift (1.1 + 3 * 0.1 = 1.4000000000000001) so grids intersect exactly
        return np.round(rng[0] + self.step * np.arange(n + 1), 10)

    def _one(self, rng: np.random.Generator, lohi: Tuple[float, float], grid: Optional[np.ndarray]) -> float:
        if grid is not None:
            return float(grid[rng.integers(grid.size)])
        return float(rng.uniform(lohi[0], lohi[1]))

    def draw(self, rng: np.random.Generator) -> Scale:
        # always consume the same number of variates so the two branches cannot shift each other
        symmetric = rng.random() < self.p_symmetric
        if symmetric:
            grid = self.grid_common if self.step else None
            r = self._one(rng, self.common, grid)
            return r, r
        return self._one(rng, self.v, self.grid_v), self._one(rng, self.h, self.grid_h)

    @property
    def max_scale(self) -> Scale:
        top = (lambda g, r: float(g[-1]) if g is not None else r[1])
        return top(self.grid_v, self.v), top(self.grid_h, self.h)


class ChoiceScaleSampler(ScaleSampler):
    """One of a fixed list of scales per iteration (a number is symmetric, a pair is [r_v, r_h])."""

    def __init__(self, scales: Sequence, weights: Optional[Sequence[float]] = None, seed: int = 0):
        super().__init__(seed)
        self.scales: List[Scale] = parse_scale_list(scales, 'scale_sampler.scales')
        self.weights = None
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (len(self.scales), ) or (w < 0).any() or w.sum() <= 0:
                raise ValueError(f'scale_sampler.weights must be {len(self.scales)} non-negative numbers with a '
                                 f'positive sum, got {weights!r}')
            self.weights = w / w.sum()

    def draw(self, rng: np.random.Generator) -> Scale:
        return self.scales[int(rng.choice(len(self.scales), p=self.weights))]

    @property
    def max_scale(self) -> Scale:
        return max(s[0] for s in self.scales), max(s[1] for s in self.scales)


def parse_scale_list(scales, name: str) -> List[Scale]:
    """``[2, 2.5, [1.5, 4]]`` -> ``[(2, 2), (2.5, 2.5), (1.5, 4)]``; ValueError naming ``name`` otherwise."""
    if not isinstance(scales, (list, tuple)) or len(scales) == 0:
        raise ValueError(f'{name} must be a non-empty list of scales (numbers or [r_v, r_h] pairs), got {scales!r}')
    out = []
    for i, s in enumerate(scales):
        try:
            out.append(parse_scale(list(s) if isinstance(s, (list, tuple)) else s))
        except (TypeError, ValueError) as err:
            raise ValueError(f'{name}[{i}] = {s!r} is not a valid scale: {err}') from None
    return out


SAMPLERS = {'uniform': UniformScaleSampler, 'choice': ChoiceScaleSampler}


def build_scale_sampler(opt: Mapping, seed: int = 0) -> ScaleSampler:
    """Build a sampler from the ``scale_sampler`` options dict (see the module docstring).

    Args:
        opt: dict with ``type`` ('uniform' | 'choice') and that type's options.
        seed: the run's ``manual_seed``.
    """
    if not isinstance(opt, Mapping):
        raise ValueError(f'train.scale_sampler must be a dict with a type, got {opt!r}')
    opt = dict(opt)
    kind = opt.pop('type', None)
    if kind not in SAMPLERS:
        raise ValueError(f'train.scale_sampler.type must be one of {sorted(SAMPLERS)}, got {kind!r}'
                         f'{_closest(str(kind), sorted(SAMPLERS))}')
    valid = [p for p in inspect.signature(SAMPLERS[kind]).parameters if p != 'seed']
    for key in opt:
        if key not in valid:
            raise ValueError(f'train.scale_sampler: unknown option {key!r} for type {kind}{_closest(str(key), valid)} '
                             f'(valid: type, {", ".join(valid)})')
    try:
        return SAMPLERS[kind](seed=seed, **opt)
    except TypeError as err:  # unknown / missing keyword
        raise ValueError(f'train.scale_sampler ({kind}): {err}') from None
