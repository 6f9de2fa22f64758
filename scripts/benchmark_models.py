"""Meta head overhead: one training iteration of a Meta-SR network vs the same trunk with a fixed x4 upsampler.

For each trunk this builds, in one run:
  * the Meta-SR network (head ``impl`` of choice, x4 requested as a scale): ``MetaRDN`` (RDN of the Meta-SR
    paper), ``SwinIRMeta`` (classical SwinIR), or ``MetaSR`` on BasicSR's EDSR (EDSR-baseline: 64 features,
    16 blocks), RCAN (10 groups of 20 blocks, 64 features) and RRDBNet (ESRGAN: 23 blocks, 64 features,
    growth 32),
  * the fixed-scale baseline. RDN and SwinIR: the *same trunk object's* ``forward_trunk`` followed by
    BasicSR's ``arch_util.Upsample(4, num_feat)`` (two conv + pixel-shuffle x2 stages) and a 3x3 conv to
    RGB, i.e. RDN/EDSR-style and SwinIR's 'pixelshuffle' reconstruction. EDSR, RCAN, RRDBNet: the plain
    BasicSR network at x4 with its own upsampler and last conv (RRDBNet's nearest + conv stages),
and times forward + L1 loss + backward (after a warm-up, ``--repeats`` times, Meta and fixed
interleaved so both see the same machine load; medians, and the median of the paired ratios). It reports parameters,
median time, the Meta/fixed time ratio, bytes saved for backward (every tensor autograd keeps, counted
once per storage, parameters excluded, via ``torch.autograd.graph.saved_tensors_hooks``) and on CUDA
the peak allocated memory.

Mixed precision and compilation: ``--amp off bf16`` (or fp16) measures each autocast mode interleaved
with the others (forward and loss under ``torch.autocast``, the loss on the float32 output, as
``train.amp`` does; no GradScaler, whose cost is negligible) and adds a table of step time, saved
bytes and peak CUDA memory relative to the first mode. ``--compile`` compiles the shared trunk as
``train.compile: true`` does (the warm-up iteration absorbs the compilation).

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
    python scripts/benchmark_models.py --reduced --amp off bf16 --repeats 5   # bf16 vs float32, CPU
    python scripts/benchmark_models.py --device cuda --amp off bf16 --repeats 10   # the GPU target (issue 13)
    python scripts/benchmark_models.py --reduced --trunks EDSR RCAN RRDBNet --repeats 5   # MetaSR trunks, CPU
    python scripts/benchmark_models.py --device cuda --trunks EDSR RCAN RRDBNet --repeats 10   # the same on a GPU
"""
import argparse
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

import metasr_arch  # noqa: F401  (before basicsr)

import torch
import torch.nn.functional as F
from basicsr.archs.arch_util import Upsample
from torch import nn

from metasr_arch.archs.metardn_arch import MetaRDN
from metasr_arch.archs.metasr_base import MetaSRNet
from metasr_arch.archs.metasr_trunk_arch import MetaSR
from metasr_arch.archs.swinir_meta_arch import SwinIRMeta
from metasr_arch.utils.amp import AMP_DTYPES, autocast, autocast_supported, compile_for_training

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


# the fixed x4 networks whose trunks MetaSR takes (standard configurations)
PLAIN_TRUNKS = {
    'EDSR': dict(type='EDSR', num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16, upscale=SCALE, res_scale=1,
                 img_range=255.),
    'RCAN': dict(type='RCAN', num_in_ch=3, num_out_ch=3, num_feat=64, num_group=10, num_block=20, squeeze_factor=16,
                 upscale=SCALE, res_scale=1, img_range=255.),
    'RRDBNet': dict(type='RRDBNet', num_in_ch=3, num_out_ch=3, num_feat=64, num_block=23, num_grow_ch=32, scale=SCALE),
}
TRUNKS = ('RDN', 'SwinIR') + tuple(PLAIN_TRUNKS)


def build(name: str, patch: int, impl: str) -> Tuple[MetaSRNet, nn.Module, List[nn.Parameter]]:
    """(Meta network, fixed x4 baseline, the baseline's upsampler parameters) of trunk ``name``."""
    if name in PLAIN_TRUNKS:
        from basicsr.archs import build_network
        meta = MetaSR(trunk=dict(PLAIN_TRUNKS[name]), head={'impl': impl})
        fixed = build_network(dict(PLAIN_TRUNKS[name]))
        tail = [p for n, p in fixed.named_parameters() if n.split('.')[0] in meta.dropped_modules]
        return meta, fixed, tail
    if name == 'RDN':
        meta = MetaRDN(impl=impl)
    else:
        meta = SwinIRMeta(img_size=patch, window_size=8, embed_dim=180, depths=(6, ) * 6, num_heads=(6, ) * 6,
                          mlp_ratio=2, img_range=1., impl=impl)
    fixed = FixedScaleBaseline(meta, meta.upsample.in_channels, meta.num_out_ch)
    return meta, fixed, list(fixed.up.parameters()) + list(fixed.conv_last.parameters())


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
                   target: torch.Tensor, amp: Optional[torch.dtype] = None) -> Callable[[], None]:
    """One training iteration without the optimizer step: zero grads, forward and L1 loss (under
    autocast to ``amp`` when given, loss on the float32 output as MetaSRModel computes it), backward."""

    def iteration():
        model.zero_grad(set_to_none=True)
        with autocast(x, amp):
            loss = F.l1_loss(forward(x).float(), target)
        loss.backward()

    return iteration


def timed(iteration: Callable[[], None], device: torch.device) -> float:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    iteration()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def measure(cases: Dict[Tuple, tuple], x: torch.Tensor, target: torch.Tensor, repeats: int,
            device: torch.device) -> Dict[Tuple, dict]:
    """Times of every case, measured interleaved (A, B, C, A, B, C, ...) so that all see the same load.

    Args:
        cases: key -> (model, forward, amp dtype or None).
    Returns:
        key -> {'times': [s] per repeat, 'time': median, 'saved': bytes saved for backward,
        'peak': peak CUDA bytes of one iteration (None on the CPU)}.
    """
    its = {k: make_iteration(model, fwd, x, target, amp) for k, (model, fwd, amp) in cases.items()}
    for it in its.values():
        it()  # warm-up: caches, allocator, lazy init, compilation
    times = {k: [] for k in its}
    for _ in range(repeats):
        for k, it in its.items():
            times[k].append(timed(it, device))
    result = {}
    for k, (model, fwd, amp) in cases.items():
        peak = None
        if device.type == 'cuda':
            model.zero_grad(set_to_none=True)
            torch.cuda.reset_peak_memory_stats(device)
            its[k]()
            peak = torch.cuda.max_memory_allocated(device)
        model.zero_grad(set_to_none=True)

        def step(fwd=fwd, amp=amp):
            with autocast(x, amp):
                return F.l1_loss(fwd(x).float(), target)

        saved = saved_bytes(step, list(model.parameters()))
        result[k] = dict(times=times[k], time=statistics.median(times[k]), saved=saved, peak=peak)
    return result


def paired_ratio(a: dict, b: dict) -> float:
    """Median over repeats of a's time / b's time (both measured in the same round)."""
    return statistics.median(x / y for x, y in zip(a['times'], b['times']))


def mib(n: Optional[int]) -> str:
    return 'n/a (CPU)' if n is None else f'{n / 2**20:.0f} MiB'


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--reduced', action='store_true', help='batch 2, 24x24 LR patches (2-core CPU)')
    parser.add_argument('--batch', type=int, default=None,
                        help='override the batch size (the full configuration of SwinIR needs > 24 GB on a CPU)')
    parser.add_argument('--patch', type=int, default=None, help='override the LR patch size')
    parser.add_argument('--impl', default='auto', help="MetaUpsample implementation ('auto')")
    parser.add_argument('--trunks', nargs='+', default=['RDN', 'SwinIR'], choices=list(TRUNKS),
                        help='RDN and SwinIR (default), EDSR, RCAN, RRDBNet (MetaSR on BasicSR\'s plain archs)')
    parser.add_argument('--amp', nargs='+', default=['off'], choices=list(AMP_DTYPES),
                        help="autocast modes to measure, interleaved (e.g. 'off bf16'; default off); with "
                             'more than one, a second table compares each to the first')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the trunk (as train.compile: true), shared by the Meta and fixed nets')
    parser.add_argument('--compile-backend', default='inductor', help='torch.compile backend with --compile')
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
    for mode in args.amp:
        if AMP_DTYPES[mode] is not None and not autocast_supported(device, AMP_DTYPES[mode]):
            parser.error(f'--amp {mode}: torch {torch.__version__} has no {mode} autocast on {device.type}')
    torch.manual_seed(0)
    x = torch.rand(batch, 3, patch, patch, device=device)
    target = torch.rand(batch, 3, patch * SCALE, patch * SCALE, device=device)
    print(f'device={device} batch={batch} patch={patch}x{patch} x{SCALE} repeats={args.repeats} impl={args.impl} '
          f'amp={",".join(args.amp)} compile={args.compile_backend if args.compile else "off"} '
          f'torch={torch.__version__} threads={torch.get_num_threads()}'
          + (f' gpu={torch.cuda.get_device_name(device)}' if device.type == 'cuda' else ''))
    rows, amp_rows = [], []
    for name in args.trunks:
        torch.manual_seed(0)
        net, base, fixed_head = build(name, patch, args.impl)
        net, base = net.to(device).train(), base.to(device).train()
        if args.compile:
            compile_for_training(net, {'scope': 'trunk', 'backend': args.compile_backend})
        cases = {}
        for mode in args.amp:
            cases[mode, 'meta'] = (net, lambda t: net(t, scale=SCALE), AMP_DTYPES[mode])
            cases[mode, 'fixed'] = (base, base, AMP_DTYPES[mode])
        res = measure(cases, x, target, args.repeats, device)
        trunk = sum(p.numel() for n, p in net.named_parameters() if not n.startswith('upsample.'))
        for mode in args.amp:
            label = name if mode == 'off' else f'{name} {mode}'
            rows.append((label, trunk, sum(p.numel() for p in net.upsample.parameters()),
                         sum(p.numel() for p in fixed_head),
                         res[mode, 'meta'], res[mode, 'fixed'], paired_ratio(res[mode, 'meta'], res[mode, 'fixed'])))
            ref = res[args.amp[0], 'meta']
            amp_rows.append((name, mode, res[mode, 'meta'], ref, paired_ratio(res[mode, 'meta'], ref)))
        net.cpu()
        base.cpu()
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
    if len(args.amp) > 1:
        first = args.amp[0]
        print(f'\n| network (Meta head) | amp | step time (s) | time vs {first} (median of paired) '
              f'| saved for backward | vs {first} | peak CUDA | vs {first} |')
        print('|---|---|---|---|---|---|---|---|')
        for name, mode, meta, ref, ratio in amp_rows:
            peak_ratio = f"{meta['peak'] / ref['peak']:.3f}" if meta['peak'] else 'n/a'
            print(f"| {name}Meta | {mode} | {meta['time']:.3f} | {ratio:.3f} | {mib(meta['saved'])} | "
                  f"{meta['saved'] / ref['saved']:.3f} | {mib(meta['peak'])} | {peak_ratio} |")


if __name__ == '__main__':
    main()
