"""Benchmark the native meta-upscale kernels against the seed-style loop kernel and the PyTorch paths.

Operator level (weights are given, no weight-prediction MLP), at the shapes of the operator issue.
Implementations:
  seed_loop     seed-style CUDA kernel (one thread per output pixel, global read-modify-write,
                atomics in backward, float32 only), per-pixel weights. CUDA only.
  im2col        PyTorch, per-pixel weights (meta_upscale_im2col, autograd).
  phase         PyTorch, phase table (phase_table_conv, its automatic mode).
  native        the new kernels on the phase table (torch.ops.metasr.table_conv).
  native_px     the new kernels on per-pixel weights (the seed's interface: x, weight, r_v, r_h).
For each: forward and forward+backward time (median of --repeats after a warm-up), the operator's
FLOPs, on CUDA the peak extra memory and the percentage of the roofline bound
max(FLOPs / peak FLOP/s, minimal bytes / peak bandwidth) (minimal bytes: x, table or weights, output,
and their gradients). Ratios are against im2col and seed_loop.

Usage:
    python scripts/benchmark_native.py --device cuda --markdown native_gpu.md
    python scripts/benchmark_native.py --device cpu --cases train_x4 train_x2.5x3.7 --repeats 3
"""
import argparse
from typing import Dict, List, Optional

import torch

import metasr_arch  # noqa: F401
from metasr_arch.ops import axis_projection, native, phase_table_conv, resolve_scale
from metasr_arch.ops.meta_upscale import flops, meta_upscale_im2col, per_pixel_projection
from metasr_arch.utils.bench import OPERATOR_CASES, Case, report, sync, time_it

K = 3


CASES: Dict[str, Case] = {**OPERATOR_CASES, **{c.name: c for c in [
    Case('grid_96x144_to_721x1440_b8', 8, 156, 1, 96, 144, out_size=(721, 1440), gpu_only=True),
]}}
# Tiny shapes only to exercise the script (scripts/gpu_check.py --dry-run); never in the default list.
SMOKE_CASES: Dict[str, Case] = {c.name: c for c in [Case('smoke_x2.5x3.7', 2, 8, 3, 12, 12, scale=(2.5, 3.7))]}
IMPLS = ['seed_loop', 'im2col', 'phase', 'native', 'native_px']
PER_PIXEL = {'seed_loop', 'im2col', 'native_px'}
# H100 SXM dense peaks (float32 without tensor cores, HBM3): the roofline for --device cuda.
DEFAULT_PEAK_TFLOPS = 67.0
DEFAULT_PEAK_GBPS = 3350.0


def estimate_bytes(case: Case, impl: str, elem: int = 4) -> int:
    """Rough working set of one forward+backward (to skip what does not fit)."""
    spec = resolve_scale(case.h, case.w, case.scale, case.out_size)
    pixels = spec.out_h * spec.out_w
    kk = case.c_in * K * K
    weights = pixels * kk * case.c_out * elem * 2 if impl in PER_PIXEL else 0
    unfold = pixels * case.n * kk * elem * 3 if impl == 'im2col' else 0
    return weights + unfold + case.n * (case.c_in * case.h * case.w + case.c_out * pixels) * elem * 2


def build_inputs(case: Case, device: torch.device, dtype: torch.dtype, per_pixel: bool):
    spec = resolve_scale(case.h, case.w, case.scale, case.out_size)
    rows = axis_projection(case.h, spec.out_h, spec.r_v, device)
    cols = axis_projection(case.w, spec.out_w, spec.r_h, device)
    gen = torch.Generator(device='cpu').manual_seed(0)
    x = torch.randn(case.n, case.c_in, case.h, case.w, generator=gen).to(device, dtype)
    table = (torch.randn(rows.phases.numel(), cols.phases.numel(), K, K, case.c_in, case.c_out, generator=gen)
             / (3 * case.c_in ** 0.5)).to(device, dtype)
    if per_pixel:
        table = table[rows.phase_index][:, cols.phase_index].contiguous()
        rows, cols = per_pixel_projection(rows), per_pixel_projection(cols)
    return x.requires_grad_(True), table.requires_grad_(True), rows, cols, spec


def make_fns(impl: str, x, table, rows, cols):
    """(forward, forward+backward) closures of one implementation."""
    if impl == 'seed_loop':
        seed_fwd, seed_bwd = native.seed_loop()

        def fwd():
            return seed_fwd(x.detach(), table.detach(), rows.lr_index, cols.lr_index)

        def fwd_bwd():
            out = fwd()
            return seed_bwd(torch.ones_like(out), x.detach(), table.detach(), rows.lr_index, cols.lr_index)
        return fwd, fwd_bwd
    run = {
        'im2col': lambda: meta_upscale_im2col(x, table, rows, cols, K),
        'phase': lambda: phase_table_conv(x, table, rows, cols),
        'native': lambda: native.table_conv(x, table, rows, cols),
        'native_px': lambda: native.table_conv(x, table, rows, cols),
    }[impl]

    def fwd():
        with torch.no_grad():
            return run()

    def fwd_bwd():
        x.grad = table.grad = None
        out = run()
        out.backward(torch.ones_like(out))
        return out
    return fwd, fwd_bwd


def run_case(case: Case, impl: str, device: torch.device, repeats: int, args) -> dict:
    result = {'case': case.name, 'impl': impl}
    torch.manual_seed(0)
    x, table, rows, cols, spec = build_inputs(case, device, torch.float32, impl in PER_PIXEL)
    fwd, fwd_bwd = make_fns(impl, x, table, rows, cols)
    base = 0
    if device.type == 'cuda':
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    result['fwd_s'] = time_it(fwd, device, repeats)
    result['fwd_bwd_s'] = time_it(fwd_bwd, device, repeats)
    if device.type == 'cuda':
        result['peak_extra_bytes'] = torch.cuda.max_memory_allocated(device) - base
    f = flops(case.n, case.c_in, case.c_out, spec.out_h, spec.out_w, K)
    result['gflop_fwd'], result['gflop_fwd_bwd'] = f / 1e9, 3 * f / 1e9
    if device.type == 'cuda':
        io = (x.numel() + table.numel() + case.n * case.c_out * spec.out_h * spec.out_w) * 4
        bound_fwd = max(f / (args.peak_tflops * 1e12), io / (args.peak_gbps * 1e9))
        bound_all = max(3 * f / (args.peak_tflops * 1e12), 2 * io / (args.peak_gbps * 1e9))
        result['roofline_fwd_pct'] = 100 * bound_fwd / result['fwd_s']
        result['roofline_fwd_bwd_pct'] = 100 * bound_all / result['fwd_bwd_s']
    return result


def to_markdown(results: List[dict], device: torch.device) -> str:
    gpu = device.type == 'cuda'
    head = '| case | impl | GFLOP fwd | fwd (ms) | fwd+bwd (ms) | fwd+bwd vs im2col | fwd+bwd vs seed_loop |'
    sep = '|---|---|---|---|---|---|---|'
    if gpu:
        head += ' peak extra mem | mem vs im2col | % roofline fwd / fwd+bwd |'
        sep += '---|---|---|'
    lines = [head, sep]
    by_case: Dict[str, Dict[str, dict]] = {}
    for r in results:
        by_case.setdefault(r['case'], {})[r['impl']] = r
    for r in results:
        if 'skipped' in r:
            lines.append(f"| {r['case']} | {r['impl']} | skipped: {r['skipped']} |" + ' |' * (sep.count('|') - 4))
            continue
        ref = by_case[r['case']]

        def ratio(name: str) -> str:
            other = ref.get(name, {}).get('fwd_bwd_s')
            return f"{other / r['fwd_bwd_s']:.1f}x" if other else '-'
        line = (f"| {r['case']} | {r['impl']} | {r['gflop_fwd']:.2f} | {1e3 * r['fwd_s']:.2f} | "
                f"{1e3 * r['fwd_bwd_s']:.2f} | {ratio('im2col')} | {ratio('seed_loop')} |")
        if gpu:
            im2col_mem = ref.get('im2col', {}).get('peak_extra_bytes')
            mem_ratio = f"1/{im2col_mem / max(1, r['peak_extra_bytes']):.0f}" if im2col_mem else '-'
            line += (f" {r['peak_extra_bytes'] / 2**20:.1f} MiB | {mem_ratio} | "
                     f"{r['roofline_fwd_pct']:.1f} / {r['roofline_fwd_bwd_pct']:.1f} |")
        lines.append(line)
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--cases', nargs='+', default=None, choices=list(CASES) + list(SMOKE_CASES))
    parser.add_argument('--impls', nargs='+', default=None, choices=IMPLS)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--mem-limit-gb', type=float, default=None,
                        help='skip an implementation whose estimated working set is larger (default: 60 on CUDA, '
                             '6 on the CPU)')
    parser.add_argument('--peak-tflops', type=float, default=DEFAULT_PEAK_TFLOPS)
    parser.add_argument('--peak-gbps', type=float, default=DEFAULT_PEAK_GBPS)
    parser.add_argument('--markdown', default=None, help='also write the table to this file')
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == 'cuda'
    limit = (args.mem_limit_gb or (60.0 if gpu else 6.0)) * 2**30
    cases = [{**CASES, **SMOKE_CASES}[n] for n in args.cases] if args.cases else [c for c in CASES.values() if gpu or not c.gpu_only]
    impls = args.impls or [i for i in IMPLS if gpu or i != 'seed_loop']
    results = []
    for case in cases:
        for impl in impls:
            need = estimate_bytes(case, impl)
            if impl == 'seed_loop' and not gpu:
                results.append({'case': case.name, 'impl': impl, 'skipped': 'CUDA only'})
            elif need > limit:
                results.append({'case': case.name, 'impl': impl,
                                'skipped': f'needs ~{need / 2**30:.1f} GiB > limit {limit / 2**30:.0f} GiB'})
            else:
                results.append(run_case(case, impl, device, args.repeats, args))
            print(results[-1], flush=True)
            if gpu:
                torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(device) if gpu else f'CPU ({torch.get_num_threads()} threads)'
    table = f'Device: {name}; torch {torch.__version__}; float32; median of {args.repeats}\n\n' + \
        to_markdown(results, device)
    report(table, args.markdown)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
