"""Benchmark the Meta-SR head's implementations side by side (time and memory).

For each case and implementation this measures, in one run:
  * forward time and forward+backward time (median of ``--repeats`` runs after a warm-up),
  * bytes saved for backward (every tensor autograd keeps, counted once per storage, through
    ``torch.autograd.graph.saved_tensors_hooks``),
  * peak device memory on CUDA, or (with ``--isolate``) the peak resident memory of a fresh process
    running that case alone on the CPU.
Ratios are printed against ``im2col``. Where an implementation would need more memory than
``--mem-limit-gb`` (estimated from the sizes before running), the estimate is reported instead.

Usage:
    python scripts/benchmark_meta_upscale.py                     # all cases, CPU
    python scripts/benchmark_meta_upscale.py --cases train_x4 --impls im2col phase --repeats 5
    python scripts/benchmark_meta_upscale.py --device cuda --markdown bench.md
"""
import argparse
import json
import os
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

import torch

import metasr_arch  # noqa: F401
from metasr_arch.archs import MetaUpsample
from metasr_arch.ops.meta_upscale import flops
from metasr_arch.utils.bench import OPERATOR_CASES, Case, report, time_it


CASES: Dict[str, Case] = {**OPERATOR_CASES, **{c.name: c for c in [
    # phases that never repeat on either axis: the phase table would be as large as per-pixel weights
    Case('grid_96x144_to_721x1439', 1, 156, 1, 96, 144, out_size=(721, 1439)),
]}}
IMPLS = ['im2col', 'gather', 'phase']


def estimate_im2col_bytes(case: Case, hidden: int = 256, k: int = 3, elem: int = 4) -> int:
    """Memory im2col needs: HR unfold, per-pixel weights, the MLP's per-pixel hidden layer, output."""
    s = case.spec()
    pixels = s.out_h * s.out_w
    kk = case.c_in * k * k
    return elem * pixels * (case.n * kk * 2 + kk * case.c_out + hidden * 2 + case.n * case.c_out)


def estimate_gather_bytes(case: Case, hidden: int = 256, k: int = 3, elem: int = 4) -> int:
    """Per-pixel weights (and their gradient) plus the per-pixel hidden layer."""
    s = case.spec()
    pixels = s.out_h * s.out_w
    return elem * pixels * (case.c_in * k * k * case.c_out * 2 + hidden * 2)


ESTIMATES = {'im2col': estimate_im2col_bytes, 'gather': estimate_gather_bytes}


def saved_bytes_for_backward(fn) -> Tuple[torch.Tensor, int]:
    """Run ``fn()`` and count the bytes autograd saves, each storage once."""
    seen: Dict[Tuple[int, str], int] = {}

    def pack(t: torch.Tensor):
        try:
            storage = t.untyped_storage()
            seen[(storage.data_ptr(), str(t.device))] = storage.nbytes()
        except (RuntimeError, NotImplementedError):
            seen[(id(t), 'x')] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def run_case(case: Case, impl: str, device: torch.device, repeats: int, dtype=torch.float32) -> dict:
    torch.manual_seed(0)
    head = MetaUpsample(case.c_in, case.c_out, impl=impl).to(device, dtype)
    x = torch.randn(case.n, case.c_in, case.h, case.w, device=device, dtype=dtype, requires_grad=True)
    kw = case.call_kwargs()

    def forward():
        with torch.no_grad():
            return head(x, **kw)

    def forward_backward():
        out = head(x, **kw)
        out.backward(torch.ones_like(out))
        return out

    result = {'case': case.name, 'impl': impl}
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    _, result['saved_bytes'] = saved_bytes_for_backward(lambda: head(x, **kw))
    result['fwd_s'] = time_it(forward, device, repeats)
    result['fwd_bwd_s'] = time_it(forward_backward, device, repeats)
    if device.type == 'cuda':
        result['peak_bytes'] = torch.cuda.max_memory_allocated(device) - base
    s = case.spec()
    result['gflop'] = flops(case.n, case.c_in, case.c_out, s.out_h, s.out_w, 3) / 1e9
    return result


def run_isolated(case: Case, impl: str, device: str, repeats: int) -> dict:
    """Run one case in a fresh process and add its peak resident memory (ru_maxrss)."""
    code = ('import json, resource, sys; sys.argv=["b"]; '
            'import importlib.util as u; spec=u.spec_from_file_location("b", %r); m=u.module_from_spec(spec); '
            'spec.loader.exec_module(m); import torch; '
            'r=m.run_case(m.CASES[%r], %r, torch.device(%r), %d); '
            'r["peak_rss_bytes"]=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss*1024; print(json.dumps(r))'
            % (os.path.abspath(__file__), case.name, impl, device, repeats))
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {'case': case.name, 'impl': impl, 'error': proc.stderr.strip().splitlines()[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt_bytes(b: Optional[float]) -> str:
    if b is None:
        return '-'
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if b < 1024 or unit == 'GiB':
            return f'{b:.0f} {unit}' if unit == 'B' else f'{b:.1f} {unit}'
        b /= 1024
    return str(b)


def to_markdown(results: List[dict]) -> str:
    lines = ['| case | impl | fwd (s) | fwd+bwd (s) | saved for bwd | peak | fwd+bwd vs im2col | saved vs im2col |',
             '|---|---|---|---|---|---|---|---|']
    base = {r['case']: r for r in results if r['impl'] == 'im2col'}
    for r in results:
        if 'error' in r:
            lines.append(f"| {r['case']} | {r['impl']} | error: {r['error']} | | | | | |")
            continue
        if 'estimate_bytes' in r:
            lines.append(f"| {r['case']} | {r['impl']} | skipped | skipped | est. {_fmt_bytes(r['estimate_bytes'])} "
                         f"| | | |")
            continue
        ref = base.get(r['case'], {})
        speed = ref.get('fwd_bwd_s')
        saved = ref.get('saved_bytes') or ref.get('estimate_bytes')
        speed_txt = f"{speed / r['fwd_bwd_s']:.1f}x faster" if speed else '-'
        saved_txt = f"{saved / max(1, r['saved_bytes']):.0f}x fewer" if saved else '-'
        if 'estimate_bytes' in ref:
            saved_txt += ' (vs estimate)'
        peak = r.get('peak_bytes', r.get('peak_rss_bytes'))
        lines.append(f"| {r['case']} | {r['impl']} | {r['fwd_s']:.4f} | {r['fwd_bwd_s']:.4f} | "
                     f"{_fmt_bytes(r['saved_bytes'])} | {_fmt_bytes(peak)} | {speed_txt} | {saved_txt} |")
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--cases', nargs='+', default=list(CASES), choices=list(CASES))
    parser.add_argument('--impls', nargs='+', default=None, help='default: every usable implementation')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads on the CPU')
    parser.add_argument('--mem-limit-gb', type=float, default=6.0,
                        help='skip (and report the estimate for) runs whose estimated memory exceeds this')
    parser.add_argument('--isolate', action='store_true', help='one fresh process per run; reports peak RSS')
    parser.add_argument('--markdown', default=None, help='also write the table to this file')
    parser.add_argument('--json', default=None, help='also write raw results to this file')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    impls = args.impls or metasr_arch.available_impls(device, api='module')
    results = []
    for name in args.cases:
        case = CASES[name]
        for impl in impls:
            estimate = ESTIMATES.get(impl, lambda c: 0)(case)
            if estimate > args.mem_limit_gb * 2**30:
                results.append({'case': name, 'impl': impl, 'estimate_bytes': estimate})
            elif args.isolate and device.type == 'cpu':
                results.append(run_isolated(case, impl, args.device, args.repeats))
            else:
                results.append(run_case(case, impl, device, args.repeats))
            print(json.dumps(results[-1]), flush=True)
    table = to_markdown(results)
    report(table, args.markdown)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
