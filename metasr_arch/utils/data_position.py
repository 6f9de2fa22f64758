"""Where the training data loader stands in its epoch, saved in training states and restored on resume.

BasicSR's training loop restarts an interrupted epoch from its first batch on resume (and, when the
state was saved at an epoch's end, repeats that epoch). ``patch_enlarged_sampler`` makes BasicSR's
``EnlargedSampler`` count the sample indices it has handed out in the current epoch and skip, once,
those a resumed run has already trained on. With ``num_worker_per_gpu: 0`` the count is exact (the
loader takes indices batch by batch); with worker processes it includes the batches they had fetched
ahead, which the resumed run then skips too.
"""
import weakref
from typing import Dict, Optional

_LIVE: 'weakref.WeakSet' = weakref.WeakSet()  # the EnlargedSamplers of this process (one: the train loader's)


def patch_enlarged_sampler() -> None:
    """Wrap ``basicsr.data.data_sampler.EnlargedSampler.__iter__`` (idempotent)."""
    from basicsr.data.data_sampler import EnlargedSampler
    original, original_init = EnlargedSampler.__iter__, EnlargedSampler.__init__
    if getattr(original, '_metasr_patched', False):
        return

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        _LIVE.add(self)

    def __iter__(self):
        indices = list(original(self))
        skip = getattr(self, '_metasr_skip', None)
        self._metasr_skip = None
        start = skip[1] if skip is not None and skip[0] == self.epoch else 0
        self._metasr_taken = start
        return _counting(self, indices[start:])

    __iter__._metasr_patched = True
    EnlargedSampler.__init__, EnlargedSampler.__iter__ = __init__, __iter__


def _counting(sampler, indices):
    for index in indices:
        sampler._metasr_taken += 1
        yield index


def position() -> Optional[Dict[str, int]]:
    """{'epoch', 'samples'} of the one live train sampler (samples handed out in that epoch), or None."""
    live = [s for s in _LIVE if hasattr(s, '_metasr_taken')]
    if len(live) != 1:
        return None
    return {'epoch': int(live[0].epoch), 'samples': int(live[0]._metasr_taken)}


def resume_at(pos: Optional[Dict[str, int]]) -> bool:
    """Make the live train sampler skip ``pos['samples']`` indices when it next starts epoch ``pos['epoch']``."""
    if not pos:
        return False
    live = list(_LIVE)
    for sampler in live:
        sampler._metasr_skip = (int(pos['epoch']), int(pos['samples']))
    return bool(live)
