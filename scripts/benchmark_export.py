"""Eager PyTorch, ``torch.compile`` and ONNX Runtime (CPU) side by side on a Meta-SR network at one request.

    python scripts/benchmark_export.py                      # demo and full-size MetaRDN, x2.5, 256x256, all three
    python scripts/benchmark_export.py --cases demo --repeats 5 --markdown out.md
    python scripts/benchmark_export.py --backends eager onnxruntime   # without torch.compile (saves its compile time)

The backends are the inference CLI's (``infer --compile [torch|onnxruntime]``), built as it builds them:

* ``eager``: ``run_network`` (weights predicted at run time, bicubic skip added), what ``infer`` runs by default;
* ``torch``: ``compiled.compile_frozen``, the network frozen at the request and input size, channels-last,
  ``torch.compile`` with freezing (``infer --compile``);
* ``onnxruntime``: ``onnx_backend.onnx_frozen``, the frozen network exported by the export package's
  writer and run by one ONNX Runtime session with ``--threads`` threads (``infer --compile onnxruntime``).

For each case the network (random weights: time does not depend on their values) is built, each fast
backend is built and run once (its build time, export or compilation and first call, is reported apart,
with its largest difference from eager relative to the eager output's range), then all backends alternate
in one process (eager, torch, onnxruntime, eager, ...), each with ``--threads`` threads, so that load from
other processes on a shared machine hits all alike; the table gives medians and their ratios to ONNX Runtime
(issue 22's target: torch within 1.1x of ONNX Runtime for the demo network and full MetaRDN at 256 x 256).
"""
import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import metasr_arch  # noqa: F401  (before basicsr)

import numpy as np
import torch
import yaml

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


BACKENDS = ('eager', 'torch', 'onnxruntime')


def build_backend(backend: str, net, request, size: int, batch: int, threads: int, check: bool = True):
    """``x (batch, 3, size, size) -> output`` of ``backend`` (one of ``BACKENDS``), as the inference CLI builds it."""
    if backend == 'eager':
        _, value = request
        return lambda x: run_network(net, x, scale=value)
    if backend == 'torch':
        from metasr_arch.inference.compiled import compile_frozen
        return compile_frozen(net, request, (size, size))
    from metasr_arch.inference.onnx_backend import onnx_frozen
    return onnx_frozen(net, request, (size, size), batch, 'cpu', threads, verify=check)


def time_case(name: str, scale: float, size: int, repeats: int, threads: int, backends=BACKENDS,
              batch: int = 1, check: bool = True) -> dict:
    """Build and time ``backends`` on case ``name``: {'case', 'params', 'mode', '<b>' (median s),
    '<b>_build' (s), '<b>_err' (max |b - eager| / range of eager)} for every backend but eager's own extras."""
    opt_fn, skip = CASES[name]
    net = build(opt_fn(), skip)
    request = ('scale', (scale, scale))
    x = torch.from_numpy(np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32))
    ref = run_network(net, x, scale=(scale, scale))
    out = {'case': name, 'params': sum(p.numel() for p in net.parameters()),
           'mode': freeze(net, request, (size, size)).net.upsample.mode}
    runs = {}
    for backend in backends:
        t0 = time.perf_counter()
        fn = build_backend(backend, net, request, size, batch, threads, check)
        y = fn(x)  # the first call: compilation, session warm-up
        if backend != 'eager':
            out[f'{backend}_build'] = time.perf_counter() - t0
            out[f'{backend}_err'] = float((y - ref).abs().max() / (ref.max() - ref.min()))
        runs[backend] = fn
    times = {k: [] for k in runs}
    for _ in range(repeats):
        for key, fn in runs.items():
            t0 = time.perf_counter()
            fn(x)
            times[key].append(time.perf_counter() - t0)
    out.update({k: statistics.median(v) for k, v in times.items()})
    return out


NAMES = {'eager': 'eager PyTorch', 'torch': 'torch.compile', 'onnxruntime': 'ONNX Runtime'}


def table(results, backends) -> list:
    """Markdown rows: per case the medians, each fast backend's build time and error, and the ratios to
    ONNX Runtime (to eager when ONNX Runtime is not timed)."""
    base = 'onnxruntime' if 'onnxruntime' in backends else backends[0]
    cols = ['network', 'params', 'head form']
    for b in backends:
        cols += [f'{NAMES[b]} (s)'] if b == 'eager' else [f'{NAMES[b]} build (s)', f'{NAMES[b]} error (of range)',
                                                          f'{NAMES[b]} (s)']
    cols += [f'{NAMES[b]} / {NAMES[base]}' for b in backends if b != base]
    rows = ['| ' + ' | '.join(cols) + ' |', '|---|---:|---|' + '---:|' * (len(cols) - 3)]
    for r in results:
        cells = [r['case'], f"{r['params'] / 1e6:.2f} M", r['mode']]
        for b in backends:
            cells += [f'{r[b]:.3f}'] if b == 'eager' else [f"{r[b + '_build']:.1f}", f"{r[b + '_err']:.1e}",
                                                           f'{r[b]:.3f}']
        cells += [f'{r[b] / r[base]:.2f}x' for b in backends if b != base]
        rows.append('| ' + ' | '.join(cells) + ' |')
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--cases', nargs='+', default=list(CASES), choices=list(CASES))
    p.add_argument('--backends', nargs='+', default=list(BACKENDS), choices=BACKENDS,
                   help='what to time side by side (default: all three)')
    p.add_argument('--scale', type=float, default=2.5)
    p.add_argument('--size', type=int, default=256, help='square input size (default 256)')
    p.add_argument('--batch', type=int, default=1, help='images per forward (default 1)')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--no-check', dest='check', action='store_false',
                   help="skip ONNX Runtime's check against eager on its first call (one eager forward less)")
    p.add_argument('--markdown', default=None, help='also write the table to this file')
    p.add_argument('--compiled', action='store_true', help=argparse.SUPPRESS)  # earlier spelling: torch is timed
    args = p.parse_args(argv)
    backends = [b for b in BACKENDS if b in args.backends or b == 'torch' and args.compiled]
    torch.set_num_threads(args.threads)
    results = []
    for name in args.cases:
        results.append(time_case(name, args.scale, args.size, args.repeats, args.threads, backends, args.batch,
                                 args.check))
        print(table(results, backends)[-1], file=sys.stderr, flush=True)
    versions = f'torch {torch.__version__}'
    if 'onnxruntime' in backends:
        import onnxruntime as ort
        versions += f', onnxruntime {ort.__version__}'
    head = (f'x{args.scale:g} on a {args.size}x{args.size} RGB input, batch {args.batch}, float32, {args.threads} '
            f'threads each, median of {args.repeats} interleaved runs; {versions}, '
            f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs')
    report(head + '\n\n' + '\n'.join(table(results, backends)), args.markdown)
    return 0


if __name__ == '__main__':
    sys.exit(main())
