"""ONNX Runtime (CPU) against PyTorch (CPU) on a Meta-SR network frozen at one request.

    python scripts/benchmark_export.py                      # demo network and full-size MetaRDN, x2.5, 256x256
    python scripts/benchmark_export.py --cases demo --repeats 5 --markdown out.md
    python scripts/benchmark_export.py --compiled           # also the CLI's --compile path (issue 22's 1.1x target)

For each case the network (random weights: time does not depend on their values) is frozen and
exported to ONNX in a temporary folder, checked like ``python -m metasr_arch.export --check``, then timed:
PyTorch runs the network as the inference CLI does (``run_network``: weights predicted at run time,
bicubic skip added), ONNX Runtime runs the exported file. The two alternate in one process (one
warm-up each, then PyTorch, ONNX Runtime, PyTorch, ...), both with ``--threads`` threads, so that load
from other processes on a shared machine hits both alike; the table gives medians and their ratio.
With ``--compiled`` a third runner joins the rotation: ``metasr_arch.inference.compiled.compile_frozen``
(the frozen network, channels-last, torch.compile with freezing; what ``infer --compile`` runs), compiled
in the warm-up (its time is reported apart), with its largest difference from PyTorch relative to the
output's range.
"""
import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import metasr_arch  # noqa: F401  (before basicsr)

import numpy as np
import torch
import yaml

from metasr_arch.deploy.export import export_checked
from metasr_arch.deploy.frozen import freeze
from metasr_arch.utils.bench import report
from metasr_arch.inference.checkpoint import build_and_load
from metasr_arch.inference.runner import run_network

REPO = Path(__file__).resolve().parent.parent


def demo_network_opt() -> dict:
    with open(REPO / 'options' / 'train' / 'demo_MetaRDN.yml', encoding='utf-8') as f:
        return dict(yaml.safe_load(f)['network_g'])


CASES = {
    'demo': (demo_network_opt, True),  # the demo trains with bicubic_skip
    'metardn_full': (lambda: {'type': 'MetaRDN'}, False),
}


def build(network_opt: dict, bicubic_skip: bool) -> torch.nn.Module:
    from basicsr.archs import build_network
    torch.manual_seed(0)
    net = build_network(dict(network_opt))
    net = build_and_load(network_opt, net.state_dict(), source='random weights')
    net.metasr_bicubic_skip = bicubic_skip
    return net


def time_case(name: str, scale: float, size: int, repeats: int, threads: int, check: bool = True,
              compiled: bool = False) -> dict:
    import onnxruntime as ort
    opt_fn, skip = CASES[name]
    net = build(opt_fn(), skip)
    request = ('scale', (scale, scale))
    model = freeze(net, request, (size, size))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / 'm.onnx'
        t0 = time.perf_counter()
        results = export_checked(net, model, path, 'onnx', request, batch=1, check=check) or []
        export_s = time.perf_counter() - t0
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), so, providers=['CPUExecutionProvider'])
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    xt = torch.from_numpy(x)
    runs = {'pytorch': lambda: run_network(net, xt, scale=(scale, scale)),
            'onnxruntime': lambda: session.run(None, {'lr': x})}
    extra = {}
    if compiled:
        from metasr_arch.inference.compiled import compile_frozen
        fast = compile_frozen(net, request, (size, size))
        runs['compiled'] = lambda: fast(xt)
        t0 = time.perf_counter()
        y_fast = fast(xt)
        extra['compile_s'] = time.perf_counter() - t0
        y_ref = run_network(net, xt, scale=(scale, scale))
        extra['compiled_err'] = float((y_fast - y_ref).abs().max() / (y_ref.max() - y_ref.min()))
    times = {k: [] for k in runs}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(repeats):
        for key, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    params = sum(p.numel() for p in net.parameters())
    return {'case': name, 'params': params, 'mode': model.net.upsample.mode, 'export_s': export_s,
            'max_err': max((r.max_error for r in results), default=float('nan')), **med, **extra}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--cases', nargs='+', default=list(CASES), choices=list(CASES))
    p.add_argument('--scale', type=float, default=2.5)
    p.add_argument('--size', type=int, default=256, help='square input size (default 256)')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--no-check', dest='check', action='store_false',
                   help='skip the export check (saves four forward passes on large networks)')
    p.add_argument('--markdown', default=None, help='also write the table to this file')
    p.add_argument('--compiled', action='store_true', help='also time the --compile path (torch.compile, frozen)')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime as ort
    rows = ['| network | params | head form | export + check (s) | max error | PyTorch (s) | ONNX Runtime (s) | '
            'PyTorch / ONNX Runtime |', '|---|---:|---|---:|---:|---:|---:|---:|']
    if args.compiled:
        rows = [rows[0] + ' compile (s) | compiled error (of range) | compiled (s) | compiled / ONNX Runtime |',
                rows[1] + '---:|---:|---:|---:|']
    for name in args.cases:
        r = time_case(name, args.scale, args.size, args.repeats, args.threads, args.check, args.compiled)
        rows.append(f"| {name} | {r['params'] / 1e6:.2f} M | {r['mode']} | {r['export_s']:.1f} | {r['max_err']:.1e} | "
                    f"{r['pytorch']:.3f} | {r['onnxruntime']:.3f} | {r['pytorch'] / r['onnxruntime']:.2f}x |")
        if args.compiled:
            rows[-1] += (f" {r['compile_s']:.1f} | {r['compiled_err']:.1e} | {r['compiled']:.3f} | "
                         f"{r['compiled'] / r['onnxruntime']:.2f}x |")
        print(rows[-1], file=sys.stderr, flush=True)
    head = (f'x{args.scale:g} on a {args.size}x{args.size} RGB input, batch 1, float32, {args.threads} threads each, '
            f'median of {args.repeats} interleaved runs; torch {torch.__version__}, onnxruntime {ort.__version__}, '
            f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs')
    report(head + '\n\n' + '\n'.join(rows), args.markdown)
    return 0


if __name__ == '__main__':
    sys.exit(main())
