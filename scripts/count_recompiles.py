"""How many graphs ``train.compile`` compiles over a run of random per-batch scales.

Trains the demo MetaRDN (``options/train/demo_MetaRDN.yml``'s network, or the tiny test network with
``--tiny``) for ``--iters`` iterations (forward, L1 loss, backward, Adam) with one scale per batch
from a ``scale_sampler`` (default: the paper's 1.1..4.0 step 0.1, symmetric), compiled as
``train.compile`` would (``--scope trunk`` or ``net``), and reports the graphs dynamo compiled
(``torch._dynamo.utils.counters``): after the first iteration, and in total.

Usage:
    python scripts/count_recompiles.py --scope trunk --iters 100
    python scripts/count_recompiles.py --scope net --backend aot_eager --iters 100 --p-symmetric 0.5
"""
import argparse
import os
import time

import metasr_arch  # noqa: F401  (before basicsr)

import torch
import torch.nn.functional as F
import yaml
from basicsr.archs import build_network

from metasr_arch.utils.amp import compile_for_training
from metasr_arch.utils.scale_sampler import build_scale_sampler

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {'type': 'MetaRDN', 'num_feat': 8, 'num_block': 1, 'num_layer': 2, 'num_grow_ch': 8, 'hidden_channels': 16}


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process (``counters['stats']['unique_graphs']``)."""
    from torch._dynamo.utils import counters
    return int(counters['stats']['unique_graphs'])


def count(scope: str, backend: str, iters: int, sampler_opt: dict, net_opt: dict, batch: int, patch: int,
          dynamic=None, log_every: int = 10) -> dict:
    """Train ``iters`` iterations; returns {'first': graphs after iteration 1, 'total': graphs, 'seconds',
    'distinct_scales'}."""
    import torch._dynamo
    torch._dynamo.reset()
    from torch._dynamo.utils import counters
    counters.clear()
    torch.manual_seed(0)
    net = build_network(dict(net_opt)).train()
    run = compile_for_training(net, {'scope': scope, 'backend': backend, 'dynamic': dynamic})
    optim = torch.optim.Adam(net.parameters(), 1e-4)
    sampler = build_scale_sampler(sampler_opt, 0)
    x = torch.rand(batch, 3, patch, patch)
    seen, first, t0 = set(), None, time.time()
    for it in range(1, iters + 1):
        scale = sampler(it)
        seen.add(scale)
        optim.zero_grad()
        out = run(x, scale=scale)
        F.l1_loss(out, torch.zeros_like(out)).backward()
        optim.step()
        if first is None:
            first = graphs_compiled()
        if it % log_every == 0 or it == iters:
            print(f'iter {it}: {len(seen)} distinct scales, {graphs_compiled()} graphs, '
                  f'{time.time() - t0:.1f} s', flush=True)
    return {'first': first, 'total': graphs_compiled(), 'seconds': time.time() - t0, 'distinct_scales': len(seen)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--scope', choices=['trunk', 'net'], default='trunk')
    p.add_argument('--backend', default='inductor', help="torch.compile backend ('inductor', 'aot_eager', 'eager')")
    p.add_argument('--dynamic', choices=['none', 'true', 'false'], default='none')
    p.add_argument('--iters', type=int, default=100)
    p.add_argument('--range', nargs=2, type=float, default=[1.1, 4.0], metavar=('LO', 'HI'))
    p.add_argument('--step', type=float, default=0.1)
    p.add_argument('--p-symmetric', type=float, default=1.0)
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--patch', type=int, default=24, help='LR patch size (the demo uses 24)')
    p.add_argument('--tiny', action='store_true', help='the tiny test network instead of the demo one')
    args = p.parse_args(argv)
    if args.tiny:
        net_opt = TINY
    else:
        with open(os.path.join(REPO, 'options', 'train', 'demo_MetaRDN.yml')) as f:
            net_opt = yaml.safe_load(f)['network_g']
    sampler_opt = {'type': 'uniform', 'v': list(args.range), 'step': args.step, 'p_symmetric': args.p_symmetric}
    print(f'scope={args.scope} backend={args.backend} dynamic={args.dynamic} sampler={sampler_opt} '
          f'batch={args.batch} patch={args.patch} torch={torch.__version__} '
          f'recompile_limit={torch._dynamo.config.recompile_limit}')
    res = count(args.scope, args.backend, args.iters, sampler_opt, net_opt, args.batch, args.patch,
                {'none': None, 'true': True, 'false': False}[args.dynamic])
    print(f"graphs compiled: {res['first']} in the first iteration, {res['total']} after {args.iters} iterations "
          f"({res['total'] - res['first']} recompiles for {res['distinct_scales']} distinct scales), "
          f"{res['seconds']:.1f} s")


if __name__ == '__main__':
    main()
