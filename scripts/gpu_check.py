"""Everything that needs a GPU, in one call, with one markdown report (issue 11).

Steps, each timed, each in its own subprocess with its own log, each with a timeout; a failing step
does not stop the others, and the whole run stays inside ``--budget`` seconds (default 450, for the
8 minutes one H100/H200 is lent):

  wheels       install --wheels DIR into <repo>/.site (a GPU machine with torch but no basicsr)
  build        nvcc build of the native op for the visible GPU (python -m metasr_arch.ops.build)
  self_check   the native op's run-time self-check on CUDA, every dtype, with its cost
  cuda_tests   the cuda-marked tests (pytest -m cuda), opcheck/gradcheck excluded (next step)
  opcheck      torch.library.opcheck and gradcheck of the op on CUDA
  native_bench scripts/benchmark_native.py: native vs the seed-style loop kernel, im2col and the
               PyTorch phase path, time and peak extra memory
  model_bench  scripts/benchmark_models.py: Meta head vs fixed x4 head, RDN and SwinIR, batch 16 of
               48x48, time and peak CUDA memory, float32 and bf16 autocast interleaved (issue 13)
  trunk_bench  the same on MetaSR's BasicSR trunks (EDSR-baseline, RCAN, RRDBNet) against the plain x4
               networks, batch 16 of 48x48, float32 (issue 20)
  demo         a 300-iteration demo training (options/train/demo_MetaRDN.yml) on CUDA, PSNR table
  grid_b8      the 96x144 -> 721x1440 grid case at batch 8 (operator level: time, peak memory)
  archive_bench scripts/benchmark_archive.py: the SwinIRMeta grid network on 64 steps from NetCDF to
               Zarr, eager batch 1, batched and compiled, fields/s and peak memory (issue 22)
  demo_bf16    the same demo with ``train: amp: bf16``: its PSNR table against ``demo``'s (issue 13's
               target: within 0.05 dB); last, so that the budget never starves the steps above

``--dry-run`` (any machine, no GPU needed; CI runs it) runs the steps that need no CUDA in a small CPU
form (the build of the variant the tests use, the CPU self-check, the collection of the cuda tests,
the CPU opcheck/gradcheck, a one-case operator benchmark, the reduced RDN model benchmark, a
4-iteration demo) and lists the others as skipped.

Written into --out DIR: ``report.md`` (every step's status, time and key figures, the device, torch
version and date) and ``logs.txt`` (every step's full log), both rewritten after each step so that
an interrupted run still leaves them. Everything else (per-step logs, the generated options file,
the demo's experiment folder, benchmark tables) goes to --work (default: a new temporary folder),
because the machine that lends the GPU returns only a few files.

Usage:
    python scripts/gpu_check.py --out gpu_report                         # on a GPU machine
    python scripts/gpu_check.py --out gpu_report --wheels .whl            # ... without basicsr
    python scripts/gpu_check.py --out /tmp/gpu_dry --dry-run              # anywhere (CI)
    make gpu-check OUT=gpu_report [WHEELS=.whl] [GPU_CHECK_ARGS=--dry-run]

Exit status: 0 when every step that ran passed, 1 otherwise, 2 for bad arguments.
"""
import argparse
import datetime
import glob
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BUDGET_S = 450
DEMO_OPTIONS = REPO / 'options' / 'train' / 'demo_MetaRDN.yml'
DEMO_ITERS = 300
DRY_DEMO_ITERS = 4
# (TFLOP/s float32 without tensor cores, GB/s HBM) for benchmark_native's roofline, by device name
PEAKS = {'H200': (67.0, 4800.0), 'H100': (67.0, 3350.0)}


@dataclass
class Step:
    """One subprocess of the check. ``command`` runs on a GPU; ``dry_command`` (None: skipped) in
    --dry-run. ``summary(log_text)`` returns the markdown key figures for the report."""
    name: str
    title: str
    command: List[str]
    timeout_s: int
    dry_command: Optional[List[str]] = None
    summary: Callable[[str], str] = lambda log: ''
    needs: str = 'a CUDA device'


@dataclass
class Outcome:
    """What happened to one step: status is 'ok', 'failed', 'timeout', 'skipped' or 'not run'."""
    step: Step
    status: str
    seconds: float = 0.0
    detail: str = ''
    command: List[str] = field(default_factory=list)
    log: str = ''


# ----------------------------------------------------------------------------------------------
# summaries of the steps' output (markdown pasted into the report)


def table_lines(log: str) -> str:
    """The markdown table rows a script printed (lines starting with '|'), with a preceding header line."""
    lines = log.splitlines()
    keep = [line for line in lines if line.startswith('|')]
    head = [line for line in lines if line.startswith(('Device:', 'device='))]
    return '\n'.join(head[-1:] + ([''] if head else []) + keep)


def pytest_summary(log: str) -> str:
    """The pytest result line and any failing test ids."""
    lines = [line for line in log.splitlines() if line.strip()]
    result = [line for line in lines if re.search(r'\b(passed|failed|error|skipped|deselected|no tests ran|'
                                                  r'collected|tests? collected)\b', line)]
    failures = [line for line in lines if line.startswith(('FAILED', 'ERROR'))]
    skips = [line for line in lines if line.startswith('SKIPPED')]
    return '\n'.join(['```'] + failures + skips[:10] + result[-1:] + ['```'])


def grep_lines(pattern: str) -> Callable[[str], str]:
    def summary(log: str) -> str:
        found = [line for line in log.splitlines() if re.search(pattern, line)]
        return '\n'.join(['```'] + found + ['```']) if found else ''
    return summary


def file_summary(path: Path, fallback: Callable[[str], str]) -> Callable[[str], str]:
    """The markdown file a step wrote (its table), else ``fallback(log)``."""
    def summary(log: str) -> str:
        if path.is_file():
            return path.read_text(encoding='utf-8').strip()
        return fallback(log)
    return summary


def demo_summary(experiment: Path) -> Callable[[str], str]:
    def summary(log: str) -> str:
        speed = [line for line in log.splitlines() if re.search(r'\[iter:\s*[\d,]+', line)]
        parts = []
        if speed:
            parts += ['Last training log line:', '', '```', speed[-1].strip(), '```', '']
        table = experiment / 'psnr_table.md'
        parts.append(table.read_text(encoding='utf-8').strip() if table.is_file() else 'no psnr_table.md written')
        return '\n'.join(parts)
    return summary


# ----------------------------------------------------------------------------------------------
# the steps


def write_demo_options(work: Path, dry_run: bool, amp: Optional[str] = None) -> Path:
    """Options of the demo with ``total_iter`` DEMO_ITERS (4 in a dry run, on the CPU with two
    validation scales) and absolute dataset paths; validation runs once, at the end. ``amp``
    ('bf16', 'fp16') trains under autocast (``train.amp``), named ``gpu_check_demo_<amp>``."""
    opt = yaml.safe_load(DEMO_OPTIONS.read_text(encoding='utf-8'))
    iters = DRY_DEMO_ITERS if dry_run else DEMO_ITERS
    opt['name'] = 'gpu_check_demo' + (f'_{amp}' if amp else '')
    if amp:
        opt['train']['amp'] = amp
    opt['num_gpu'] = 0 if dry_run else 1
    for split in ('train', 'val'):
        opt['datasets'][split]['dataroot_gt'] = str(REPO / 'datasets' / 'demo' / split)
    opt['train']['total_iter'] = iters
    opt['train']['scheduler']['milestones'] = [iters * 2 // 3, iters * 11 // 12]
    opt['val']['val_freq'] = 10 * iters  # BasicSR validates once more after the last iteration
    if dry_run:
        opt['val']['scales'] = [2, [1.5, 3]]
    opt['logger']['print_freq'] = max(1, iters // 6)
    opt['logger']['save_checkpoint_freq'] = iters
    path = work / (f'demo_gpu_check_{amp}.yml' if amp else 'demo_gpu_check.yml')
    path.write_text(yaml.safe_dump(opt, sort_keys=False), encoding='utf-8')
    return path


def make_steps(py: str, work: Path, dry_run: bool, wheels: Optional[Path], peaks: Optional[tuple]) -> List[Step]:
    """The steps in order (see the module docstring)."""
    steps: List[Step] = []
    if wheels is not None:
        found = sorted(glob.glob(str(wheels / '*.whl')))
        steps.append(Step('wheels', 'Install the wheels (basicsr and its pure-Python dependencies)',
                          [py, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--no-compile', '--target',
                           str(REPO / '.site')] + found, 180, dry_command=None, needs='a GPU machine (not in a dry run)'))
    build = [py, '-m', 'metasr_arch.ops.build']
    steps.append(Step('build', 'nvcc build of the native op for the visible GPU', build, 300,
                      dry_command=build + ['--variant', 'auto'], summary=grep_lines(r'^(building|built|error|hint)')))
    steps.append(Step('self_check', 'Run-time self-check of the native op (every dtype; its cost)',
                      build + ['--self-check', 'cuda'], 90, dry_command=build + ['--variant', 'auto', '--self-check', 'cpu'],
                      summary=grep_lines(r'^self-check')))
    pytest = [py, '-m', 'pytest', '-q', '-rfEs', '-p', 'no:cacheprovider']
    not_checks = 'not (gradcheck or opcheck)'
    steps.append(Step('cuda_tests', 'cuda-marked tests (pytest -m cuda)', pytest + ['-m', 'cuda', '-k', not_checks, 'tests'],
                      180, dry_command=pytest + ['--collect-only', '-m', 'cuda', 'tests'], summary=pytest_summary))
    steps.append(Step('opcheck', 'torch.library.opcheck and gradcheck on CUDA',
                      pytest + ['-m', 'cuda', '-k', 'gradcheck or opcheck', 'tests/test_native_op.py'], 120,
                      dry_command=pytest + ['-k', 'cpu_gradcheck or cpu_opcheck', 'tests/test_native_op.py'],
                      summary=pytest_summary))
    native_md = work / 'native_bench.md'
    bench = [py, str(REPO / 'scripts' / 'benchmark_native.py')]
    roof = ['--peak-tflops', str(peaks[0]), '--peak-gbps', str(peaks[1])] if peaks else []
    steps.append(Step('native_bench', 'Native op vs seed-style loop kernel, im2col and phase (operator level)',
                      bench + ['--device', 'cuda', '--cases', 'train_x4', 'train_x2.5x3.7', 'train_x1.3x1.7',
                               'infer_256_x4', 'grid_96x144_to_721x1440', '--repeats', '10', '--markdown',
                               str(native_md)] + roof, 150,
                      dry_command=bench + ['--device', 'cpu', '--cases', 'smoke_x2.5x3.7', '--repeats', '1',
                                           '--markdown', str(native_md)],
                      summary=file_summary(native_md, table_lines)))
    models = [py, str(REPO / 'scripts' / 'benchmark_models.py')]
    steps.append(Step('model_bench', 'Meta head vs fixed x4 head (RDN, SwinIR; batch 16 of 48x48)',
                      models + ['--device', 'cuda', '--repeats', '10', '--amp', 'off', 'bf16'], 150,
                      dry_command=models + ['--device', 'cpu', '--reduced', '--batch', '1', '--patch', '8',
                                            '--repeats', '1'],
                      summary=table_lines))
    steps.append(Step('trunk_bench', 'Meta head vs fixed x4 head on BasicSR trunks (MetaSR: EDSR, RCAN, RRDBNet)',
                      models + ['--device', 'cuda', '--trunks', 'EDSR', 'RCAN', 'RRDBNet', '--repeats', '10'], 120,
                      dry_command=models + ['--device', 'cpu', '--trunks', 'EDSR', '--batch', '1', '--patch', '8',
                                            '--repeats', '1'],
                      summary=table_lines))
    options = write_demo_options(work, dry_run)
    train = [py, '-m', 'metasr_arch.train', '-opt', str(options)]
    steps.append(Step('demo', f'{DRY_DEMO_ITERS if dry_run else DEMO_ITERS}-iteration demo training and its PSNR table',
                      train, 180, dry_command=train,
                      summary=demo_summary(work / 'experiments' / 'gpu_check_demo')))
    grid_md = work / 'grid_b8.md'
    steps.append(Step('grid_b8', 'Grid case 96x144 -> 721x1440 at batch 8 (time, peak memory)',
                      bench + ['--device', 'cuda', '--cases', 'grid_96x144_to_721x1440_b8', '--impls', 'native', 'phase',
                               'native_px', 'seed_loop', 'im2col', '--repeats', '3', '--markdown', str(grid_md)] + roof,
                      150, summary=file_summary(grid_md, table_lines)))
    archive_md = work / 'archive_bench.md'
    archive = [py, str(REPO / 'scripts' / 'benchmark_archive.py'), '--work', str(work / 'archive'),
               '--markdown', str(archive_md)]
    steps.append(Step('archive_bench', 'SwinIRMeta 96x144 -> 721x1440 from NetCDF to Zarr, 64 steps: eager batch 1, '
                                       'batched, compiled (fields/s, peak memory; issue 22)',
                      archive + ['--device', 'cuda', '--steps', '64', '--variants', 'eager_b1', 'batched', 'compiled'],
                      240, dry_command=archive + ['--tiny', '--steps', '3', '--variants', 'eager_b1', 'batched'],
                      summary=file_summary(archive_md, table_lines)))
    train_bf16 = [py, '-m', 'metasr_arch.train', '-opt', str(write_demo_options(work, dry_run, 'bf16'))]
    steps.append(Step('demo_bf16', 'The same demo under train.amp bf16 (PSNR against the float32 demo above)',
                      train_bf16, 180, dry_command=train_bf16,
                      summary=demo_summary(work / 'experiments' / 'gpu_check_demo_bf16')))
    return steps


# ----------------------------------------------------------------------------------------------
# running


def run_step(step: Step, command: List[str], timeout_s: float, log_path: Path, env: Dict[str, str]) -> Outcome:
    """Run one step in its own process group; a timeout kills the whole group."""
    start = time.perf_counter()
    with open(log_path, 'w', encoding='utf-8', errors='replace') as log:
        log.write('$ ' + ' '.join(command) + '\n')
        log.flush()
        try:
            proc = subprocess.Popen(command, cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        except OSError as exc:
            return Outcome(step, 'failed', 0.0, f'could not start: {exc}', command)
        try:
            rc = proc.wait(timeout=timeout_s)
            status, detail = ('ok', '') if rc == 0 else ('failed', f'exit status {rc}')
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status, detail = 'timeout', f'killed after {timeout_s:.0f} s'
    outcome = Outcome(step, status, time.perf_counter() - start, detail, command)
    outcome.log = log_path.read_text(encoding='utf-8', errors='replace')
    return outcome


def run_steps(steps: List[Step], work: Path, dry_run: bool, budget_s: float, env: Dict[str, str],
              on_done: Callable[[List[Outcome]], None] = lambda outcomes: None) -> List[Outcome]:
    """Run ``steps`` in order within ``budget_s`` seconds; ``on_done`` sees the outcomes after each."""
    deadline = time.monotonic() + budget_s
    outcomes: List[Outcome] = []
    for step in steps:
        command = step.dry_command if dry_run else step.command
        left = deadline - time.monotonic()
        if command is None:
            outcome = Outcome(step, 'skipped', detail=f'dry run: needs {step.needs}')
        elif left < 5:
            outcome = Outcome(step, 'not run', detail=f'the overall budget of {budget_s:.0f} s was used up', command=command)
        else:
            outcome = run_step(step, command, min(step.timeout_s, left), work / f'{step.name}.log', env)
        outcomes.append(outcome)
        print(f'[gpu_check] {step.name}: {outcome.status} ({outcome.seconds:.1f} s) {outcome.detail}', flush=True)
        on_done(outcomes)
    return outcomes


# ----------------------------------------------------------------------------------------------
# report


def environment(py: str, env: Dict[str, str]) -> Dict[str, str]:
    """Device, torch and CUDA versions as the steps' interpreter sees them."""
    code = ('import torch, sys; c = torch.cuda.is_available(); '
            'print(torch.__version__); print(torch.version.cuda); '
            'print(torch.cuda.get_device_name(0) if c else "no CUDA device"); print(sys.version.split()[0])')
    try:
        out = subprocess.run([py, '-c', code], env=env, capture_output=True, text=True, timeout=120).stdout.split('\n')
    except (OSError, subprocess.TimeoutExpired) as exc:
        out = [f'unknown ({exc})'] * 4
    keys = ('torch', 'CUDA (torch build)', 'device', 'python')
    info = dict(zip(keys, (line.strip() for line in out + [''] * 4)))
    try:
        nvcc = subprocess.run(['nvcc', '--version'], capture_output=True, text=True, timeout=30).stdout
        info['nvcc'] = (re.findall(r'release [\d.]+', nvcc) or ['?'])[0]
    except (OSError, subprocess.TimeoutExpired):
        info['nvcc'] = 'not found'
    info['host'] = platform.node()
    info['cpus'] = str(os.cpu_count())
    return info


def render_report(outcomes: List[Outcome], info: Dict[str, str], args, started: datetime.datetime,
                  total_s: float, pending: List[Step]) -> str:
    mode = 'DRY RUN (no CUDA steps; CPU stand-ins where listed)' if args.dry_run else 'GPU run'
    lines = [f'# GPU check: {mode}', '',
             f'Date: {started:%Y-%m-%d %H:%M:%S %Z}'.strip() + f'; total {total_s:.0f} s of a {args.budget:.0f} s budget.',
             '', '| | |', '|---|---|']
    lines += [f'| {k} | {v} |' for k, v in info.items()]
    lines += [f'| work folder | `{args.work}` |', '',
              '| step | status | time (s) | what |', '|---|---|---|---|']
    for o in outcomes:
        status = o.status + (f' ({o.detail})' if o.detail else '')
        lines.append(f'| {o.step.name} | {status} | {o.seconds:.1f} | {o.step.title} |')
    for step in pending:
        lines.append(f'| {step.name} | pending | | {step.title} |')
    skipped = [o.step.name for o in outcomes if o.status in ('skipped', 'not run')]
    if skipped:
        lines += ['', 'Skipped or not run: ' + ', '.join(skipped) + '.']
    for o in outcomes:
        lines += ['', f'## {o.step.name}: {o.status}', '', o.step.title + '.', '']
        if o.command:
            lines += ['```', ' '.join(o.command), '```', '']
        if o.status in ('skipped', 'not run'):
            lines.append(o.detail)
            continue
        lines.append(f'Time: {o.seconds:.1f} s' + (f'; {o.detail}' if o.detail else '') + '.')
        try:
            summary = o.step.summary(o.log)
        except Exception as exc:  # a summary must never lose the report
            summary = f'(summary failed: {exc})'
        if summary:
            lines += ['', summary]
        if o.status != 'ok':
            tail = o.log.strip().splitlines()[-30:]
            lines += ['', 'Last lines of its log:', '', '```'] + tail + ['```']
    return '\n'.join(lines) + '\n'


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f'.{path.name}.tmp')
    tmp.write_text(text, encoding='utf-8')
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# command line


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', required=True, help='folder for report.md and logs.txt (created)')
    parser.add_argument('--dry-run', action='store_true', help='no CUDA: run the CPU stand-ins, skip the rest')
    parser.add_argument('--wheels', default=None, help='folder of wheels to install first into <repo>/.site')
    parser.add_argument('--work', default=None, help='folder for step logs, options, experiments (default: temporary)')
    parser.add_argument('--budget', type=float, default=DEFAULT_BUDGET_S, help='overall seconds for all steps')
    parser.add_argument('--only', nargs='+', default=None, metavar='STEP', help='run only these steps')
    parser.add_argument('--python', default=sys.executable, help='interpreter of the steps (default: this one)')
    args = parser.parse_args(argv)
    if args.budget <= 0:
        parser.error(f'--budget must be positive, got {args.budget}')
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f'--out {args.out} exists and is not a folder')
    wheels = Path(args.wheels) if args.wheels else None
    if wheels is not None and not glob.glob(str(wheels / '*.whl')):
        parser.error(f'--wheels {args.wheels}: no *.whl files there (collect them with bash ../shared/gpu/wheels.sh)')
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix='metasr_gpu_check_'))
    work.mkdir(parents=True, exist_ok=True)
    args.work = str(work)

    env = dict(os.environ)
    path = [str(REPO)] + ([str(REPO / '.site')] if wheels is not None else [])
    env['PYTHONPATH'] = os.pathsep.join(path[::-1] + [p for p in [env.get('PYTHONPATH')] if p])
    env['PYTHONUNBUFFERED'] = '1'
    env['METASR_ROOT'] = str(work)  # the demo's experiments/ and tb_logger/ go there

    peaks = None
    if not args.dry_run:
        import torch
        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            peaks = next((v for k, v in PEAKS.items() if k in name), None)
        else:
            print('[gpu_check] no CUDA device visible: the CUDA steps will fail (use --dry-run on a machine without '
                  'a GPU)', flush=True)
    steps = make_steps(args.python, work, args.dry_run, wheels, peaks)
    known = {s.name for s in steps}
    if args.only:
        unknown = sorted(set(args.only) - known)
        if unknown:
            parser.error(f'--only: unknown step(s) {unknown}; steps: {sorted(known)}')
        steps = [s for s in steps if s.name in args.only]

    started = datetime.datetime.now().astimezone()
    t0 = time.monotonic()
    info: Dict[str, str] = {}

    def write(outcomes: List[Outcome]) -> None:
        if not info:
            info.update(environment(args.python, env))
        pending = steps[len(outcomes):]
        write_atomic(out / 'report.md', render_report(outcomes, info, args, started, time.monotonic() - t0, pending))
        logs = [f'===== {o.step.name}: {o.status} {o.detail} ({o.seconds:.1f} s) =====\n{o.log}' for o in outcomes]
        write_atomic(out / 'logs.txt', '\n'.join(logs))

    outcomes = run_steps(steps, work, args.dry_run, args.budget, env, write)
    if not outcomes:
        write([])
    print(f'[gpu_check] report: {out / "report.md"}', flush=True)
    return 0 if all(o.status in ('ok', 'skipped') for o in outcomes) else 1


if __name__ == '__main__':
    sys.exit(main())
