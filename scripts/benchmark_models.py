"""Meta head overhead: one training iteration of MetaRDN / SwinIRMeta vs the same trunk with a fixed x4 upsampler.

For each trunk (RDN of the Meta-SR paper, classical SwinIR) this builds, in one run:
  * the Meta-SR network (``MetaRDN`` / ``SwinIRMeta``, head ``impl`` of choice, x4 requested as a scale),
  * the fixed-scale baseline: the *same trunk object's* ``forward_trunk`` followed by BasicSR's
    ``arch_util.Upsample(4, num_feat)`` (two conv + pixel-shuffle x2 stages) and a 3x3 conv to RGB,
    i.e. RDN/EDSR-style and SwinIR's 'pixelshuffle' reconstruction,
and times forward + L1 loss + backward (after a warm-up, ``--repeats`` times, Meta and fixed
interleaved so both see the same machine load; medians, and the median of the paired ratios). It reports parameters,
median time, the Meta/fixed time ratio, bytes saved for backward (every tensor autograd keeps, counted
once per storage, parameters excluded, via ``torch.autograd.graph.saved_tensors_hooks``) and on CUDA
the peak allocated memory.

Configurations:
  full (default): the paper's MetaRDN (G0 64, D 16, C 8, G 64) and classical SwinIR (embed 180,
      depths 6x6, heads 6x6, window 8, mlp 2), batch 16, 48x48 LR patches, x4.
  --reduced (for a 2-core CPU): the *same full-size networks*, batch 2 and 24x24 LR patches (x4 ->
      96x96; SwinIR img_size 24). Trunk and head costs both scale with the number of pixels, so the
      ratio stays representative while one iteration takes seconds instead of minutes.
  --patch P: another LR patch size (a multiple of 8 for SwinIR; scripts/gpu_check.py --dry-run uses a
      tiny one only to exercise the script).
  --batch N: another batch size at the full patch size (SwinIR's batch 16 at 48x48 needs more than
      24 GB of host memory on a CPU; batch 8 fits).

Usage:
    python scripts/benchmark_models.py --reduced --repeats 3          # CPU
    python scripts/benchmark_models.py --device cuda --repeats 10       # the issue's configuration
    python scripts/benchmark_models.py --trunks SwinIR --batch 8 --repeats 3   # full patch, CPU memory
"""
import argparse
import statistics
import time
from typing import Callable, Dict, List

import metasr_arch  # noqa: F401  (before basicsr)

import torch
import torch.nn.functional as F
from basicsr.archs.arch_util import Upsample
from torch import nn

from metasr_arch.archs.metardn_arch import MetaRDN
from metasr_arch.archs.metasr_base import MetaSRNet
from metasr_arch.archs.swinir_meta_arch import SwinIRMeta

SCALE = 4


class FixedScaleBaseline(nn.Module):
    """Same trunk as ``net`` (shared modules), BasicSR's pixel-shuffle x4 upsampler and a conv to RGB."""

    def __init__(self, net: MetaSRNet, num_feat: int, num_out_ch: int):
        super().__init__()
        self.net = net
        self.up = Upsample(SCALE, num_feat)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def trunk_parameters(self):
        return [p for n, p in self.net.named_parameters() if not n.startswith('upsample.')]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_last(self.up(self.net.forward_trunk(x)))
        return out / self.net.img_range + self.net.mean_out.to(out.dtype)


def build(patch: int, impl: str) -> Dict[str, nn.Module]:
    rdn = MetaRDN(impl=impl)
    swin = SwinIRMeta(img_size=patch, window_size=8, embed_dim=180, depths=(6, ) * 6, num_heads=(6, ) * 6,
                      mlp_ratio=2, img_range=1., impl=impl)
    return {'RDN': rdn, 'SwinIR': swin}


def saved_bytes(step: Callable[[], torch.Tensor], params: List[torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves during ``step()`` (parameters excluded)."""
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def make_iteration(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                   target: torch.Tensor) -> Callable[[], None]:
    """One training iteration without the optimizer step: zero grads, forward, L1 loss, backward."""

    def iteration():
        model.zero_grad(set_to_none=True)
        F.l1_loss(forward(x), target).backward()

    return iteration


def timed(iteration: Callable[[], None], device: torch.device) -> float:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    iteration()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def compare(meta_model: nn.Module, meta_fwd, base_model: nn.Module, base_fwd, x, target, repeats: int,
            device: torch.device) -> dict:
    """Median times of both models, measured interleaved (A, B, A, B, ...) so that both see the same load."""
    its = {'meta': make_iteration(meta_model, meta_fwd, x, target),
           'fixed': make_iteration(base_model, base_fwd, x, target)}
    for it in its.values():
        it()  # warm-up: caches, allocator, lazy init
    times = {k: [] for k in its}
    for _ in range(repeats):
        for k, it in its.items():
            times[k].append(timed(it, device))
    result = {'ratio': statistics.median(a / b for a, b in zip(times['meta'], times['fixed']))}
    for k, model, fwd in (('meta', meta_model, meta_fwd), ('fixed', base_model, base_fwd)):
        peak = None
        if device.type == 'cuda':
            model.zero_grad(set_to_none=True)
            torch.cuda.reset_peak_memory_stats(device)
            its[k]()
            peak = torch.cuda.max_memory_allocated(device)
        model.zero_grad(set_to_none=True)
        saved = saved_bytes(lambda: F.l1_loss(fwd(x), target), list(model.parameters()))
        result[k] = dict(time=statistics.median(times[k]), saved=saved, peak=peak)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--reduced', action='store_true', help='batch 2, 24x24 LR patches (2-core CPU)')
    parser.add_argument('--batch', type=int, default=None,
                        help='override the batch size (the full configuration of SwinIR needs > 24 GB on a CPU)')
    parser.add_argument('--patch', type=int, default=None, help='override the LR patch size')
    parser.add_argument('--impl', default='auto', help="MetaUpsample implementation ('auto')")
    parser.add_argument('--trunks', nargs='+', default=['RDN', 'SwinIR'], choices=['RDN', 'SwinIR'])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batch, patch = (2, 24) if args.reduced else (16, 48)
    if args.batch is not None:
        if args.batch < 1:
            parser.error(f'--batch must be >= 1, got {args.batch}')
        batch = args.batch
    if args.patch is not None:
        if args.patch < 1 or ('SwinIR' in args.trunks and args.patch % 8):
            parser.error(f'--patch must be >= 1 (a multiple of 8 with SwinIR), got {args.patch}')
        patch = args.patch
    torch.manual_seed(0)
    x = torch.rand(batch, 3, patch, patch, device=device)
    target = torch.rand(batch, 3, patch * SCALE, patch * SCALE, device=device)
    nets = build(patch, args.impl)
    print(f'device={device} batch={batch} patch={patch}x{patch} x{SCALE} repeats={args.repeats} impl={args.impl} '
          f'torch={torch.__version__} threads={torch.get_num_threads()}')
    rows = []
    for name in args.trunks:
        net = nets[name].to(device).train()
        base = FixedScaleBaseline(net, net.upsample.in_channels, net.num_out_ch).to(device).train()
        res = compare(net, lambda t: net(t, scale=SCALE), base, base, x, target, args.repeats, device)
        trunk = sum(p.numel() for p in base.trunk_parameters())
        rows.append((name, trunk, sum(p.numel() for p in net.upsample.parameters()),
                     sum(p.numel() for p in base.up.parameters()) + sum(p.numel() for p in base.conv_last.parameters()),
                     res['meta'], res['fixed'], res['ratio']))
        net.cpu()
    print('\n| trunk | trunk params | Meta head params | fixed x4 head params | Meta time (s) | fixed time (s) '
          '| time ratio (median of paired) | saved for backward Meta / fixed | peak CUDA Meta / fixed |')
    print('|---|---|---|---|---|---|---|---|---|')
    for name, trunk, meta_p, fixed_p, meta, fixed, ratio in rows:
        peak = (f"{meta['peak'] / 2**20:.0f} / {fixed['peak'] / 2**20:.0f} MiB = {meta['peak'] / fixed['peak']:.3f}"
                if meta['peak'] else 'n/a (CPU)')
        print(f"| {name} | {trunk / 1e6:.2f}M | {meta_p / 1e6:.3f}M | {fixed_p / 1e6:.3f}M | {meta['time']:.3f} | "
              f"{fixed['time']:.3f} | {ratio:.3f} | "
              f"{meta['saved'] / 2**20:.0f} / {fixed['saved'] / 2**20:.0f} MiB = {meta['saved'] / fixed['saved']:.3f} "
              f'| {peak} |')


if __name__ == '__main__':
    main()
