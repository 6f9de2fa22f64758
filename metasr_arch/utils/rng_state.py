"""The process's random states (Python, numpy, torch CPU and CUDA) as weights-only-loadable data.

Saved in training states and restored on resume, so that the data pipeline of a resumed run draws the
same random crops and flips as the uninterrupted run would have (with ``num_worker_per_gpu: 0`` the
dataset draws from these global generators in the main process).
"""
import random
from typing import Dict

import numpy as np
import torch


def capture() -> Dict:
    """{'python': [version, [625 ints], gauss], 'numpy': {...}, 'torch': ByteTensor, 'cuda': [ByteTensor, ...]}.

    Only tensors, ints, floats, None, lists and dicts: ``torch.load(weights_only=True)`` reads them.
    """
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {'python': [version, list(internal), gauss],
             'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                       'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)},
             'torch': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore(state: Dict) -> None:
    """Set the generators to a ``capture()``; parts missing from ``state`` are left as they are."""
    if 'python' in state:
        version, internal, gauss = state['python']
        random.setstate((version, tuple(internal), gauss))
    if 'numpy' in state:
        n = state['numpy']
        np.random.set_state((n['kind'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'],
                             n['cached_gaussian']))
    if 'torch' in state:
        torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])
