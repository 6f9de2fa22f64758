"""One Meta-SR network against per-scale networks: the models, their option files, and the driver.

The comparison (``scripts/experiments/meta_vs_fixed.py``) trains, with the same trunk, data,
iterations, seed, optimiser, learning-rate schedule and ``bicubic_skip``:

* ``meta``: MetaRDN on random symmetric scales (a uniform grid over the preset's range);
* ``meta_asym``: MetaRDN on (r_v, r_h) drawn per axis over the same range, half of the batches symmetric;
* ``meta_x2``: MetaRDN trained only at x2 (separates the Meta head from the training distribution);
* ``fixed_x2``, ``fixed_x3``, ``fixed_x4``: ``FixedScaleRDN`` (same trunk, BasicSR's pixel-shuffle
  upsampler), each trained only at its scale.

All are trained by ``MetaSRModel`` (a fixed model with a one-entry ``choice`` sampler) through
``python -m metasr_arch.train`` and evaluated by ``python -m metasr_arch.test`` on held-out images at
every scale each can serve (Meta: all evaluation scales; fixed: its own), so the LR synthesis (MATLAB
bicubic of the GT crop of exactly the output size, 8-bit quantised) and the metrics (BasicSR PSNR/SSIM
on Y, ``ceil(r)`` border per axis) are the project's validation code. Every path lives under the
output folder; a model whose final checkpoint exists is not trained again, an interrupted one resumes
(``--auto_resume``), so rerunning the same command continues a run.
"""
import json
import math
import os
import shutil
import subprocess
import sys
import time
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import yaml

from metasr_arch.utils.atomic import atomic_write_bytes
from metasr_arch.utils.scale_sampler import parse_scale_list

Scale = Tuple[float, float]
MODEL_NAMES = ('meta', 'meta_asym', 'meta_x2', 'fixed_x2', 'fixed_x3', 'fixed_x4')
EVAL_SUFFIX = '_eval'
MANIFEST = 'run.json'


@dataclass(frozen=True)
class Preset:
    """Everything that differs between the CPU-sized run and the paper's configuration.

    ``trunk``: MetaRDN trunk options shared by every model; ``head``: the Meta head's options;
    ``meta_range`` (lo, hi, step): the random-scale grid of ``meta`` and ``meta_asym``;
    ``milestones``: learning-rate milestones as fractions of the iterations.
    """
    name: str
    default_iters: int
    trunk: Dict
    head: Dict
    train_dir: str
    val_dir: str
    val_name: str
    materialize: Tuple[Optional[str], Optional[str]]  # (train, val) demo sources, or None
    gt_size: int
    lr_patch_size: int
    batch_size: int
    num_workers: int
    enlarge_ratio: int
    lr: float
    betas: Tuple[float, float]
    milestones: Tuple[float, ...]
    meta_range: Tuple[float, float, float]
    eval_symmetric: Tuple[float, ...]
    eval_asymmetric: Tuple[Scale, ...]
    bicubic_skip: bool
    seed: int
    print_freq: int
    checkpoint_freq: int


def _grid(lo: float, hi: float, step: float) -> Tuple[float, ...]:
    n = int(math.floor((hi - lo) / step + 1e-9))
    return tuple(round(lo + i * step, 10) for i in range(n + 1))


PRESETS: Dict[str, Preset] = {
    # The demo's trunk, data and optimiser (options/train/demo_MetaRDN.yml); the scale range goes to 4 so
    # that every fixed scale lies inside the Meta models' training range.
    'demo': Preset(
        name='demo', default_iters=3000,
        trunk={'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 32, 'num_block': 3, 'num_layer': 4, 'num_grow_ch': 16,
               'img_range': 255., 'rgb_mean': [0., 0., 0.]},
        head={'kernel_size': 3, 'hidden_channels': 64, 'impl': 'auto'},
        train_dir='datasets/demo/train', val_dir='datasets/demo/val', val_name='demo_val',
        materialize=('skimage_demo_train', 'skimage_demo_val'),
        gt_size=96, lr_patch_size=24, batch_size=8, num_workers=1, enlarge_ratio=100,
        lr=5e-4, betas=(0.9, 0.99), milestones=(2 / 3, 11 / 12),
        meta_range=(1.5, 4.0, 0.5),
        eval_symmetric=_grid(1.5, 4.0, 0.25),
        eval_asymmetric=((1.5, 4.0), (4.0, 1.5), (2.0, 3.0), (3.0, 2.0), (2.0, 4.0), (4.0, 2.0), (2.5, 3.5),
                         (3.5, 2.5)),
        bicubic_skip=True, seed=0, print_freq=100, checkpoint_freq=500),
    # The Meta-SR paper (options/train/train_MetaRDN_x1-4.yml): full Meta-RDN on DIV2K, LR patch 50,
    # batch 16, scales 1.1..4.0 step 0.1, Adam 1e-4 halved every 200 epochs (10k iterations of 50k).
    'div2k': Preset(
        name='div2k', default_iters=50000,
        trunk={'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 64, 'num_block': 16, 'num_layer': 8, 'num_grow_ch': 64,
               'img_range': 255.},
        head={'kernel_size': 3, 'hidden_channels': 256, 'impl': 'auto'},
        train_dir='datasets/DIV2K/DIV2K_train_HR', val_dir='datasets/B100/HR', val_name='B100',
        materialize=(None, None),
        gt_size=200, lr_patch_size=50, batch_size=16, num_workers=6, enlarge_ratio=1,
        lr=1e-4, betas=(0.9, 0.999), milestones=(0.2, 0.4, 0.6, 0.8),
        meta_range=(1.1, 4.0, 0.1),
        eval_symmetric=_grid(1.1, 4.0, 0.1),
        eval_asymmetric=((1.5, 4.0), (4.0, 1.5), (2.0, 3.0), (3.0, 2.0), (2.0, 4.0), (4.0, 2.0), (2.5, 3.5),
                         (3.5, 2.5)),
        bicubic_skip=False, seed=10, print_freq=100, checkpoint_freq=5000),
}


@dataclass(frozen=True)
class ModelSpec:
    """One model of the comparison.

    ``kind``: 'meta' (MetaRDN) or 'fixed' (FixedScaleRDN at ``fixed_scale``); ``sampler``: the
    ``train.scale_sampler`` options; ``eval_scales``: the (r_v, r_h) it is evaluated at.
    """
    name: str
    kind: str
    description: str
    sampler: Dict
    eval_scales: Tuple[Scale, ...]
    fixed_scale: Optional[int] = None


def eval_scales_of(preset: Preset, scales: Optional[Sequence] = None) -> Tuple[Scale, ...]:
    """The Meta models' evaluation scales: ``scales`` (numbers or [r_v, r_h]) or the preset's."""
    if scales is not None:
        return tuple(parse_scale_list(list(scales), 'eval scales'))
    return tuple((r, r) for r in preset.eval_symmetric) + tuple(preset.eval_asymmetric)


def model_specs(preset: Preset, names: Optional[Sequence[str]] = None,
                scales: Optional[Sequence] = None) -> List[ModelSpec]:
    """The models ``names`` (default: all of ``MODEL_NAMES``, in that order) for ``preset``.

    Args:
        scales: evaluation scales of the Meta models (default: the preset's); fixed models are always
            evaluated at their own scale only.

    Raises:
        ValueError naming an unknown model.
    """
    names = list(MODEL_NAMES if not names else names)
    unknown = [n for n in names if n not in MODEL_NAMES]
    if unknown:
        raise ValueError(f'--models: unknown model(s) {unknown}; choose from {list(MODEL_NAMES)}')
    lo, hi, step = preset.meta_range
    meta_scales = eval_scales_of(preset, scales)
    all_specs = {
        'meta': ModelSpec('meta', 'meta', f'MetaRDN, random symmetric scales {lo:g}..{hi:g} (step {step:g})',
                          {'type': 'uniform', 'v': [lo, hi], 'h': [lo, hi], 'step': step, 'p_symmetric': 1.0},
                          meta_scales),
        'meta_asym': ModelSpec('meta_asym', 'meta',
                               f'MetaRDN, random (r_v, r_h), both axes {lo:g}..{hi:g} (step {step:g}), '
                               'half of the batches symmetric',
                               {'type': 'uniform', 'v': [lo, hi], 'h': [lo, hi], 'step': step, 'p_symmetric': 0.5},
                               meta_scales),
        'meta_x2': ModelSpec('meta_x2', 'meta', 'MetaRDN trained only at x2', {'type': 'choice', 'scales': [2]},
                             meta_scales),
    }
    for r in (2, 3, 4):
        all_specs[f'fixed_x{r}'] = ModelSpec(f'fixed_x{r}', 'fixed', f'FixedScaleRDN (pixel shuffle) trained at x{r}',
                                             {'type': 'choice', 'scales': [r]}, ((float(r), float(r)), ), r)
    return [all_specs[n] for n in dict.fromkeys(names)]


def network_options(preset: Preset, spec: ModelSpec) -> Dict:
    """``network_g`` of ``spec``: MetaRDN (trunk + head) or FixedScaleRDN (trunk + its scale)."""
    net = deepcopy(preset.trunk)
    if spec.kind == 'fixed':
        return {'type': 'FixedScaleRDN', 'scale': spec.fixed_scale, **net}
    return {'type': 'MetaRDN', **net, **deepcopy(preset.head)}


def _milestones(preset: Preset, iters: int) -> List[int]:
    return sorted({max(1, int(round(f * iters))) for f in preset.milestones})


def _dataset(preset: Preset, split: str, root: Optional[str]) -> Dict:
    """A MetaSRGTDataset on ``root`` (default: the preset's folder, absolute from the working directory).

    The demo photos are written on first use (``materialize``) only into the preset's own folder, never
    into a folder the user named.
    """
    default = preset.train_dir if split == 'train' else preset.val_dir
    source = preset.materialize[0 if split == 'train' else 1] if root is None else None
    return {'type': 'MetaSRGTDataset', 'dataroot_gt': os.path.abspath(root or default), 'io_backend': {'type': 'disk'},
            'materialize': source}


def train_options(preset: Preset, spec: ModelSpec, iters: int, train_dir: Optional[str] = None) -> Dict:
    """The BasicSR training options of ``spec`` (no validation: evaluation is a separate test run).

    Args:
        train_dir: folder of GT training images (default: the preset's); written absolute, so the
            file works from any directory.
    """
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f'--iters must be a positive integer, got {iters!r}')
    ds = _dataset(preset, 'train', train_dir)
    ds.update(name=f'{preset.name}_train', gt_size=preset.gt_size, use_hflip=True, use_rot=True,
              num_worker_per_gpu=preset.num_workers, batch_size_per_gpu=preset.batch_size,
              dataset_enlarge_ratio=preset.enlarge_ratio, prefetch_mode=None)
    return {
        'name': spec.name,
        'model_type': 'MetaSRModel',
        'bicubic_skip': preset.bicubic_skip,
        'num_gpu': 'auto',
        'manual_seed': preset.seed,
        'datasets': {'train': ds},
        'network_g': network_options(preset, spec),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'scale_sampler': deepcopy(spec.sampler),
            'lr_patch_size': preset.lr_patch_size,
            'lq_quantize': 255,
            'ema_decay': 0,
            'optim_g': {'type': 'Adam', 'lr': preset.lr, 'betas': list(preset.betas)},
            'scheduler': {'type': 'MultiStepLR', 'milestones': _milestones(preset, iters), 'gamma': 0.5},
            'total_iter': iters,
            'warmup_iter': -1,
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
        },
        'logger': {'print_freq': min(preset.print_freq, iters),
                   'save_checkpoint_freq': min(preset.checkpoint_freq, iters),
                   'use_tb_logger': False, 'wandb': {'project': None, 'resume_id': None}},
        'dist_params': {'backend': 'nccl', 'port': 29500},
    }


def checkpoint_path(out_dir: str, spec: ModelSpec) -> str:
    """The final checkpoint BasicSR writes at the end of training: its presence means 'trained'."""
    return os.path.join(out_dir, 'experiments', spec.name, 'models', 'net_g_latest.pth')


def metrics_path(out_dir: str, spec: ModelSpec) -> str:
    """``metrics.jsonl`` of the evaluation (test) run of ``spec``."""
    return os.path.join(out_dir, 'results', spec.name + EVAL_SUFFIX, 'metrics.jsonl')


def test_options(preset: Preset, spec: ModelSpec, out_dir: str, val_dir: Optional[str] = None) -> Dict:
    """The BasicSR test options evaluating ``spec``'s final checkpoint on ``val_dir`` at its scales."""
    ds = _dataset(preset, 'val', val_dir)
    ds['name'] = preset.val_name
    return {
        'name': spec.name + EVAL_SUFFIX,
        'model_type': 'MetaSRModel',
        'bicubic_skip': preset.bicubic_skip,
        'num_gpu': 'auto',
        'manual_seed': preset.seed,
        'datasets': {'test_1': ds},
        'network_g': network_options(preset, spec),
        'path': {'pretrain_network_g': checkpoint_path(out_dir, spec), 'strict_load_g': True},
        'val': {
            'save_img': False,
            'lq_quantize': 255,
            'scales': [list(s) if s[0] != s[1] else s[0] for s in spec.eval_scales],
            'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 'auto', 'test_y_channel': True},
                        'ssim': {'type': 'calculate_ssim', 'crop_border': 'auto', 'test_y_channel': True}},
        },
    }


def _atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(Path(path), text.encode('utf-8'))


def write_options(out_dir: str, preset: Preset, specs: Sequence[ModelSpec], iters: int,
                  train_dir: Optional[str] = None, val_dir: Optional[str] = None) -> Dict[str, Tuple[str, str]]:
    """Write ``options/train_<model>.yml`` and ``options/test_<model>.yml`` under ``out_dir``.

    Data folders default to the preset's, relative to the working directory; all are written absolute.

    Returns:
        {model: (train options path, test options path)}.
    """
    out_dir = os.path.abspath(out_dir)
    folder = os.path.join(out_dir, 'options')
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for spec in specs:
        pair = (os.path.join(folder, f'train_{spec.name}.yml'), os.path.join(folder, f'test_{spec.name}.yml'))
        header = f'# generated by scripts/experiments/meta_vs_fixed.py (preset {preset.name}): {spec.description}\n'
        for path, opt in zip(pair, (train_options(preset, spec, iters, train_dir),
                                    test_options(preset, spec, out_dir, val_dir))):
            _atomic_write_text(path, header + yaml.safe_dump(opt, sort_keys=False))
        paths[spec.name] = pair
    return paths


def check_manifest(out_dir: str, settings: Dict) -> None:
    """Record the run's settings in ``out_dir/run.json``, or refuse to continue a run made with others.

    Raises:
        ValueError naming the setting that differs (a finished checkpoint of another budget would be reused).
    """
    path = os.path.join(out_dir, MANIFEST)
    if os.path.exists(path):
        with open(path, encoding='utf-8') as f:
            old = json.load(f)
        for key, value in settings.items():
            if key in old and old[key] != value:
                raise ValueError(f'--out {out_dir} holds a run with {key} = {old[key]!r}, not {value!r}; '
                                 'use another --out folder (or delete that one)')
    os.makedirs(out_dir, exist_ok=True)
    _atomic_write_text(path, json.dumps(settings, indent=1) + '\n')


def run_module(args: Sequence[str], out_dir: str, log_path: str) -> float:
    """Run ``python -m <args...>`` in ``out_dir`` with experiments/results under it (``METASR_ROOT``),
    appending its output to ``log_path``; seconds taken.

    Raises:
        RuntimeError with the log's last lines when the command fails.
    """
    env = dict(os.environ, METASR_ROOT=out_dir)
    start = time.time()
    with open(log_path, 'a', encoding='utf-8') as log:
        run = subprocess.run([sys.executable, '-m', *args], cwd=out_dir, env=env, stdout=log,
                             stderr=subprocess.STDOUT)
    if run.returncode != 0:
        with open(log_path, encoding='utf-8', errors='replace') as f:
            tail = ''.join(f.readlines()[-20:])
        raise RuntimeError(f'python -m {" ".join(args)} failed (exit {run.returncode}); log {log_path}:\n{tail}')
    return time.time() - start


def _pipeline(module: str, options: str, out_dir: str, log_path: str, extra: Sequence[str] = ()) -> float:
    """``run_module`` of ``python -m <module> -opt <options> [extra]``."""
    return run_module([module, '-opt', options, *extra], out_dir, log_path)


def _evaluated(out_dir: str, spec: ModelSpec) -> bool:
    path = metrics_path(out_dir, spec)
    if not os.path.exists(path):
        return False
    with open(path, encoding='utf-8') as f:
        seen = {tuple(json.loads(line)['scale']) for line in f if line.strip()}
    return all(tuple(s) in seen for s in spec.eval_scales)


def read_status(out_dir: str) -> Dict:
    """``out_dir/status.json``: {model: {'train_seconds': s, 'eval_seconds': s}} (seconds summed over sessions)."""
    path = os.path.join(out_dir, 'status.json')
    if not os.path.exists(path):
        return {}
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def _update_status(out_dir: str, name: str, **values) -> None:
    status = read_status(out_dir)
    entry = status.setdefault(name, {})
    for key, value in values.items():
        entry[key] = entry.get(key, 0) + value if key.endswith('_seconds') else value
    _atomic_write_text(os.path.join(out_dir, 'status.json'), json.dumps(status, indent=1) + '\n')


def train_and_evaluate(out_dir: str, preset: Preset, specs: Sequence[ModelSpec], options: Dict[str, Tuple[str, str]],
                       log: Callable[[str], None] = print) -> Dict:
    """Train every model not finished yet (resuming interrupted ones), then evaluate those not evaluated.

    Returns:
        the status dict ({model: {'train_seconds', 'eval_seconds', ...}}, also in ``out_dir/status.json``).
    """
    logs = os.path.join(out_dir, 'logs')
    os.makedirs(logs, exist_ok=True)
    for i, spec in enumerate(specs, 1):
        if os.path.exists(checkpoint_path(out_dir, spec)):
            log(f'[{i}/{len(specs)}] {spec.name}: trained already ({checkpoint_path(out_dir, spec)})')
            continue
        log(f'[{i}/{len(specs)}] training {spec.name}: {spec.description} (log: logs/train_{spec.name}.log)')
        seconds = _pipeline('metasr_arch.train', options[spec.name][0], out_dir,
                            os.path.join(logs, f'train_{spec.name}.log'), ['--auto_resume'])
        _update_status(out_dir, spec.name, train_seconds=seconds)
        log(f'[{i}/{len(specs)}] {spec.name} trained in {seconds:.0f} s')
    for i, spec in enumerate(specs, 1):
        if _evaluated(out_dir, spec):
            log(f'[{i}/{len(specs)}] {spec.name}: evaluated already')
            continue
        shutil.rmtree(os.path.dirname(metrics_path(out_dir, spec)), ignore_errors=True)  # a partial evaluation
        log(f'[{i}/{len(specs)}] evaluating {spec.name} at {len(spec.eval_scales)} scale(s)')
        seconds = _pipeline('metasr_arch.test', options[spec.name][1], out_dir,
                            os.path.join(logs, f'test_{spec.name}.log'))
        _update_status(out_dir, spec.name, eval_seconds=seconds)
    return read_status(out_dir)


def run(out_dir: str, preset_name: str = 'demo', iters: Optional[int] = None, models: Optional[Sequence[str]] = None,
        scales: Optional[Sequence] = None, train_dir: Optional[str] = None, val_dir: Optional[str] = None,
        dry_run: bool = False, command: str = '', log: Callable[[str], None] = print) -> Dict[str, str]:
    """The whole comparison: option files, training, evaluation, report (see the module docstring).

    Args:
        out_dir: folder for everything (created); rerunning with the same settings continues the run.
        preset_name: 'demo' (CPU, minutes) or 'div2k' (the paper's configuration).
        iters: iterations per model (default: the preset's).
        models: a subset of ``MODEL_NAMES``.
        scales: evaluation scales of the Meta models (default: the preset's grid).
        dry_run: only write the option files and print the commands.
        command: the command line, recorded in the report.

    Returns:
        {'options': folder} on a dry run, else the report's paths {'json', 'markdown', 'figure'}.
    """
    from metasr_arch.experiments.report import write_report
    if preset_name not in PRESETS:
        raise ValueError(f'--preset must be one of {sorted(PRESETS)}, got {preset_name!r}')
    preset = PRESETS[preset_name]
    iters = preset.default_iters if iters is None else iters
    specs = model_specs(preset, models, scales)
    out_dir = os.path.abspath(out_dir)
    options = write_options(out_dir, preset, specs, iters, train_dir, val_dir)
    if dry_run:
        for name, (train_opt, test_opt) in options.items():
            log(f'{name}:\n  METASR_ROOT={out_dir} python -m metasr_arch.train -opt {train_opt} --auto_resume\n'
                f'  METASR_ROOT={out_dir} python -m metasr_arch.test -opt {test_opt}')
        return {'options': os.path.join(out_dir, 'options')}
    check_manifest(out_dir, {'preset': preset.name, 'iters': iters, 'seed': preset.seed})
    status = train_and_evaluate(out_dir, preset, specs, options, log)
    settings = {'preset': preset.name, 'iterations per model': iters, 'seed': preset.seed,
                'evaluated on': os.path.abspath(val_dir or preset.val_dir), 'command': command,
                'title': f'{preset.name} preset, {iters} iterations per model'}
    paths = write_report(out_dir, specs, {s.name: metrics_path(out_dir, s) for s in specs}, settings, status)
    log(f'wrote {paths["markdown"]}, {paths["json"]} and {paths["figure"]}')
    return paths
