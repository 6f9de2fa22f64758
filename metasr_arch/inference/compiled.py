"""The ``--compile`` fast path for many same-size inputs: the network frozen at one request and input size
(``deploy.frozen.freeze``: the Meta head's per-position weights computed once, the bicubic skip as two
matrices), in channels-last memory format, compiled by ``torch.compile`` (inductor) with weight freezing
(constant folding of the inference graph). One compiled function per (network, request, input size);
the batch size is fixed by the caller (``archive.Forward`` pads a short last batch), so it compiles once.
"""
from typing import Callable, Dict, Tuple

import torch

from metasr_arch.utils.naming import Request

_CACHE: Dict = {}


def compile_frozen(net, request: Request, in_hw: Tuple[int, int], job=None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x (N, C, h, w) float32 -> (N, C_out, H, W) float32`` for ``net`` at ``request`` on (h, w) inputs.

    Raises:
        ValueError naming ``--compile`` when ``net`` is not a Meta-SR network ``freeze`` can take.
    """
    key = (id(net), request, tuple(in_hw))
    if key in _CACHE and _CACHE[key][0] is net:
        return _CACHE[key][1]
    from metasr_arch.deploy.frozen import freeze
    try:
        frozen = freeze(net, request, tuple(in_hw))
    except ValueError as err:
        raise ValueError(f'--compile: {err}') from err
    device = next(net.parameters()).device
    frozen = frozen.to(device).to(memory_format=torch.channels_last).eval()
    import torch._inductor.config as inductor_config
    # freezing inlines the weights as constants folded into the graph (valid without autograd), set for
    # this compilation only, not for the process. The oneDNN weight-prepack pass is off: on torch 2.14 it
    # fails under freezing for these graphs (InductorError: FakeTensorUpdater on mkldnn_fusion nodes), and
    # a failed compilation cannot be retried in the same process.
    config = {'freezing': True, 'cpp.weight_prepack': False}
    compiled = torch.compile(frozen, dynamic=False)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), inductor_config.patch(**config):
            y = compiled(x.contiguous(memory_format=torch.channels_last))
        return y.float().contiguous()

    _CACHE[key] = (net, run)
    return run
