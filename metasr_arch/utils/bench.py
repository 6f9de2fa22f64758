"""Shapes and timing helpers shared by the benchmark scripts (scripts/benchmark_*.py)."""
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from metasr_arch.ops.geometry import ScaleSpec, resolve_scale


@dataclass(frozen=True)
class Case:
    """One benchmark shape: x (n, c_in, h, w) upscaled to C_out channels by ``scale`` or ``out_size``."""
    name: str
    n: int
    c_in: int
    c_out: int
    h: int
    w: int
    scale: Optional[Tuple[float, float]] = None
    out_size: Optional[Tuple[int, int]] = None
    gpu_only: bool = False

    def spec(self) -> ScaleSpec:
        return resolve_scale(self.h, self.w, self.scale, self.out_size)

    def call_kwargs(self) -> dict:
        return {'scale': self.scale} if self.scale is not None else {'out_size': self.out_size}


# The shapes issue 2 names: training, inference, and gridded data (a real 96x144 -> 721x1440 case).
OPERATOR_CASES: Dict[str, Case] = {c.name: c for c in [
    Case('train_x4', 16, 64, 3, 48, 48, scale=(4.0, 4.0)),
    Case('train_x2.5x3.7', 16, 64, 3, 48, 48, scale=(2.5, 3.7)),
    Case('train_x1.3x1.7', 16, 64, 3, 48, 48, scale=(1.3, 1.7)),
    Case('infer_256_x4', 1, 64, 3, 256, 256, scale=(4.0, 4.0)),
    Case('grid_96x144_to_721x1440', 1, 156, 1, 96, 144, out_size=(721, 1440)),
]}


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock times are real."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_it(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn`` after one warm-up run."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def report(text: str, markdown_path: Optional[str] = None) -> None:
    """Print a benchmark's table and, with ``--markdown PATH``, also write it there."""
    print(text)
    if markdown_path:
        with open(markdown_path, 'w', encoding='utf-8') as f:
            f.write(text + '\n')
