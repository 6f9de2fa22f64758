"""Issue 19, training side: the whole-file options check, the number grammar in options files, write
faults, --auto_resume over incomplete states, exact resume, and where a hooked BasicSR writes."""
import errno
import os
import subprocess
import sys
import sysconfig
from copy import deepcopy
from pathlib import Path

import pytest
import torch
import yaml

import metasr_arch  # noqa: F401  (registrations)
from metasr_arch.utils.atomic import WriteError
from metasr_arch.utils.options import OptionError
from metasr_arch.utils.options_check import check_options
from metasr_arch.utils.options_yaml import adopt_numbers, load_options
from metasr_arch.utils.scale_sampler import build_scale_sampler

from test_training import NET, make_opt, tiny_demo_opt

REPO = Path(__file__).resolve().parents[1]


def base_opt() -> dict:
    """A complete training options dict, as a user's file would hold it."""
    return {'name': 'h2', 'model_type': 'MetaSRModel', 'num_gpu': 0, 'manual_seed': 1, 'bicubic_skip': True,
            'network_g': dict(NET), 'path': {'pretrain_network_g': None, 'resume_state': None},
            'datasets': {'train': {'name': 't', 'type': 'MetaSRGTDataset', 'dataroot_gt': 'x', 'gt_size': 24,
                                   'use_hflip': True, 'use_rot': True, 'batch_size_per_gpu': 2,
                                   'num_worker_per_gpu': 0},
                         'val': {'name': 'v', 'type': 'MetaSRGTDataset', 'dataroot_gt': 'y'}},
            'train': {'scale_sampler': {'type': 'uniform', 'v': [1.5, 3.0], 'step': 0.5}, 'lr_patch_size': 8,
                      'total_iter': 4, 'ema_decay': 0, 'optim_g': {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 0.99]},
                      'scheduler': {'type': 'MultiStepLR', 'milestones': [10], 'gamma': 0.5},
                      'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
            'val': {'val_freq': 2, 'save_img': False, 'scales': [2]},
            'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False},
            'dist_params': {'backend': 'nccl', 'port': 29500}}


def _set(place):
    *parents, last = place.split('.')

    def change(opt, value):
        node = opt
        for p in parents:
            node = node[p]
        node[last] = value
    return change


# --------------------------------------------------------------------------- item 4: unknown keys
@pytest.mark.parametrize('place, value, suggestion', [
    ('bicubic_skp', True, 'bicubic_skip'),
    ('train.ema_decy', 0.9, 'ema_decay'),
    ('val.scale', [2, 3], 'scales'),
    ('datasets.train.use_hflipp', True, 'use_hflip'),
    ('val.val_freqq', 2, 'val_freq'),
    ('logger.print_freqq', 1, 'print_freq'),
    ('path.pretrain_network', 'x.pth', 'pretrain_network_g'),
    ('dist_params.prot', 1, 'port'),
    ('datasets.train.batch_size_per_gpus', 2, 'batch_size_per_gpu'),
    ('train.optim_g.weight_decy', 0, 'weight_decay'),
    ('train.scheduler.milestone', [2], 'milestones'),
    ('train.pixel_opt.loss_weigth', 1.0, 'loss_weight'),
    ('network_g.num_feats', 8, 'num_feat'),
    ('train.scale_sampler.stepp', 0.5, 'step'),
])
def test_unknown_keys_are_named_with_the_closest_valid_key(place, value, suggestion):
    opt = base_opt()
    check_options(opt, is_train=True)  # the base is valid
    _set(place)(opt, value)
    with pytest.raises(OptionError, match=rf"{place.split('.')[-1]}.*did you mean '{suggestion}'"):
        check_options(opt, is_train=True)


def test_extra_keys_allow_what_a_fork_reads():
    opt = base_opt()
    opt['train']['my_weight'] = 0.5
    opt['datasets']['train']['my_flag'] = True
    opt['my_top'] = 1
    with pytest.raises(OptionError, match="^my_top: unknown option"):
        check_options(opt)
    opt['extra_keys'] = ['train.my_weight', 'datasets.*.my_flag', 'my_top']
    check_options(opt)
    opt['datasets']['val']['my_other'] = 1  # a pattern allows its own place only
    with pytest.raises(OptionError, match='datasets.val.my_other'):
        check_options(opt)
    with pytest.raises(OptionError, match='extra_keys must be a list'):
        check_options(dict(base_opt(), extra_keys='train.x'))


def test_issue_20_train_keys_are_known():
    opt = base_opt()
    opt['train'].update(trunk_lr_scale=0.1, freeze_trunk_iters=100)
    check_options(opt)
    opt['train']['freeze_trunk_iter'] = 100
    with pytest.raises(OptionError, match="did you mean 'freeze_trunk_iters'"):
        check_options(opt)


@pytest.mark.parametrize('change, match', [
    (lambda o: o['train'].pop('total_iter'), r'missing option\(s\) train.total_iter'),
    (lambda o: o['train'].pop('scheduler'), r'missing option\(s\) train.scheduler'),
    (lambda o: o['train'].pop('pixel_opt'), 'train.pixel_opt or train.perceptual_opt is required'),
    (lambda o: o['train']['optim_g'].update(lr='2_5'), r"train.optim_g.lr '2_5' is not a number"),
    (lambda o: o['logger'].pop('save_checkpoint_freq'), 'logger.save_checkpoint_freq'),
    (lambda o: o.pop('num_gpu'), 'missing option.*num_gpu'),
    (lambda o: o['train']['optim_g'].update(type='Adamm'), "did you mean 'Adam'"),
    (lambda o: o['train'].update(optim_g={'type': 'SGD', 'lr': 0.1}), 'not supported by MetaSRModel.get_optimizer'),
    (lambda o: o['train']['optim_g'].update(lr=-1.0), 'train.optim_g.lr -1.0 must be >= 0'),
    (lambda o: o['train']['optim_g'].update(betas=[2.0, 0.9]), 'train.optim_g: Invalid beta parameter'),
    (lambda o: o['train']['scheduler'].update(type='CosineAnnealingLR'), "BasicSR's schedulers"),
    (lambda o: o['datasets']['train'].update(type='MetaSRGtDataset'), "did you mean 'MetaSRGTDataset'"),
    (lambda o: o['val'].update(metrics={'psnr': {'type': 'calculate_psnrr'}}), "did you mean 'calculate_psnr'"),
    (lambda o: o['val'].update(val_freq='2_5'), r"val.val_freq '2_5' is not a number"),
    (lambda o: o['datasets']['train'].update(batch_size_per_gpu=0), 'must be >= 1'),
    (lambda o: o.update(model_type='MetaSRModl'), "did you mean 'MetaSRModel'"),
    # scale samplers whose grid cannot produce the range, or would not fit in memory
    (lambda o: o['train'].update(scale_sampler={'type': 'uniform', 'v': [1.5, 3], 'step': 5}),
     r'step = 5 cannot produce the range v = \[1.5, 3\]'),
    (lambda o: o['train'].update(scale_sampler={'type': 'uniform', 'v': [1.5, 3], 'step': 1e-12}),
     'grid points'),
    (lambda o: o['train'].update(scale_sampler={'type': 'uniform', 'v': [1.1, 4.0], 'step': 0.3}), 'ends at 3.8'),
])
def test_bad_values_and_missing_keys(change, match):
    opt = base_opt()
    change(opt)
    with pytest.raises(OptionError, match=match):
        check_options(opt)


def test_sampler_grid_is_never_allocated_for_absurd_steps():
    with pytest.raises(ValueError, match='grid points'):
        build_scale_sampler({'type': 'uniform', 'v': [1.0, 4.0], 'step': 1e-12})
    assert build_scale_sampler({'type': 'uniform', 'v': [1.1, 4.0], 'step': 0.1}).max_scale == (4.0, 4.0)


def test_repository_option_files_pass_the_check():
    files = sorted((REPO / 'options').glob('*/*.yml'))
    assert len(files) >= 8
    for f in files:
        check_options(load_options(str(f)), is_train=f.parent.name == 'train')


# --------------------------------------------------------------------------- item 2: numbers in files
@pytest.mark.parametrize('text, place', [('lr: 2_5', 'lr'), ('lr: 1,5', 'lr'), ('n: 010', 'n'), ('n: 0x1f', 'n'),
                                         ('n: 1:30', 'n'), ('n: .inf', 'n'), ('a: {b: [1, 2_000]}', r'a.b\[1\]'),
                                         ('lr: !!float 2_5e-4', 'lr')])
def test_option_numbers_use_the_one_grammar(tmp_path, text, place):
    f = tmp_path / 'o.yml'
    f.write_text(text + '\n')
    with pytest.raises(OptionError, match=rf"^{place}: .* write a decimal number such as 2, 2.5"):
        load_options(str(f))


def test_grammar_numbers_yaml_leaves_as_text_become_floats(tmp_path):
    f = tmp_path / 'o.yml'
    f.write_text("train: {lr: 1e-4, w: [1E2, -.5], label: '2_5', tag: 'a,b', iters: 5, neg: -1}\n")
    strict = load_options(str(f))
    assert strict['train'] == {'lr': 1e-4, 'w': [100.0, -0.5], 'label': '2_5', 'tag': 'a,b', 'iters': 5, 'neg': -1}
    basicsr_view = yaml.safe_load(f.read_text())  # YAML 1.1 as BasicSR reads it
    assert basicsr_view['train']['lr'] == '1e-4'
    assert sorted(adopt_numbers(basicsr_view, strict)) == ['train.lr', 'train.w[0]', 'train.w[1]']
    assert basicsr_view['train']['lr'] == 1e-4 and basicsr_view['train']['label'] == '2_5'


def _train_main(tmp_path, monkeypatch, opt: dict, raw_yaml: str = None):
    from metasr_arch.train import main
    monkeypatch.setenv('METASR_ROOT', str(tmp_path))
    f = tmp_path / 'o.yml'
    f.write_text(raw_yaml if raw_yaml is not None else yaml.safe_dump(opt))
    with pytest.raises(SystemExit) as info:
        main(['-opt', str(f)])
    return info.value.code


@pytest.mark.parametrize('edit', ['bicubic_skp', 'val_freqq', 'total_iter: 2_5', 'lr: 1,5'])
def test_train_command_exit_2_one_line_no_folder(tmp_path, monkeypatch, capsys, edit):
    text = yaml.safe_dump(base_opt())
    if edit == 'bicubic_skp':
        text = text.replace('bicubic_skip:', 'bicubic_skp:')
    elif edit == 'val_freqq':
        text = text.replace('val_freq:', 'val_freqq:')
    elif edit == 'total_iter: 2_5':
        text = text.replace('total_iter: 4', 'total_iter: 2_5')
    else:
        text = text.replace('lr: 0.001', 'lr: 1,5')
    assert text != yaml.safe_dump(base_opt())
    assert _train_main(tmp_path, monkeypatch, None, text) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1 and 'Traceback' not in err
    assert not (tmp_path / 'experiments').exists()


def test_checked_parse_options_in_a_fork_names_network_g_typos(tmp_path, monkeypatch, capsys):
    """The fork line / startup hook call patch_init_dist: BasicSR's own parse_options then checks the file."""
    import basicsr.utils.options as options
    from metasr_arch.utils.launch import patch_init_dist
    monkeypatch.setattr(options, 'parse_options', options.parse_options)  # undone after the test
    patch_init_dist()
    opt = base_opt()
    opt['network_g']['num_feats'] = 8
    (tmp_path / 'o.yml').write_text(yaml.safe_dump(opt))
    monkeypatch.setattr(sys, 'argv', ['train.py', '-opt', str(tmp_path / 'o.yml')])
    with pytest.raises(SystemExit) as info:
        options.parse_options(str(tmp_path), is_train=True)
    assert info.value.code == 2
    assert "network_g: unknown option 'num_feats' for MetaRDN; did you mean 'num_feat'?" in capsys.readouterr().err


# --------------------------------------------------------------------------- item 5: write faults
def test_unwritable_checkpoint_stops_with_the_path(tmp_path, monkeypatch):
    import metasr_arch.models.metasr_model as mm
    model = mm.MetaSRModel(make_opt(tmp_path))
    calls = []

    def refuse(obj, path):
        calls.append(path)
        raise PermissionError(errno.EACCES, 'Permission denied', path + '.tmp')

    monkeypatch.setattr(mm, 'atomic_torch_save', refuse)
    with pytest.raises(WriteError) as info:
        model._atomic_save({'x': 1}, str(tmp_path / 'models' / 'net_g_2.pth'), mm.atomic_torch_save)
    assert info.value.filename == str(tmp_path / 'models' / 'net_g_2.pth') and len(calls) == 1  # no retry
    monkeypatch.setattr(mm.time, 'sleep', lambda s: None)

    def full(obj, path):
        calls.append(path)
        raise OSError(errno.ENOSPC, 'No space left on device')

    with pytest.raises(WriteError, match='No space left'):
        model._atomic_save({'x': 1}, str(tmp_path / 'exp' / 'training_states' / '2.state'), full)
    assert len(calls) == 4  # a full disk may clear: retried


def test_unwritable_metrics_jsonl_names_the_file(tmp_path):
    import metasr_arch.models.metasr_model as mm
    opt = make_opt(tmp_path)
    model = mm.MetaSRModel(opt)
    blocker = tmp_path / 'blocker'
    blocker.write_text('a file where the experiment folder should be')
    opt['path']['experiments_root'] = str(blocker / 'exp')
    with pytest.raises(WriteError) as info:
        model._write_reports('v', {(2.0, 2.0): {'psnr': 30.0, 'psnr_bicubic': 29.0}}, 2)
    assert info.value.filename == str(blocker / 'exp' / 'metrics.jsonl')


def test_run_pipeline_reports_a_write_fault_in_one_line(capsys):
    from metasr_arch.utils.launch import run_pipeline

    def pipeline(root):
        raise WriteError(errno.EROFS, 'Read-only file system', '/data/exp/models/net_g_4.pth')

    with pytest.raises(SystemExit) as info:
        run_pipeline(pipeline, [])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1
    assert err.startswith('error: could not write /data/exp/models/net_g_4.pth: Read-only file system')


def _state(path: Path, iteration: int) -> None:
    torch.save({'epoch': 0, 'iter': iteration, 'optimizers': [], 'schedulers': []}, path)


def test_auto_resume_takes_the_newest_complete_pair(tmp_path, capsys):
    from metasr_arch.utils.launch import newest_complete_state
    states, models = tmp_path / 'training_states', tmp_path / 'models'
    states.mkdir()
    models.mkdir()
    for it in (2, 4, 6, 8):
        _state(states / f'{it}.state', it)
        torch.save({'params': {}}, models / f'net_g_{it}.pth')
    (states / '8.state').write_bytes((states / '8.state').read_bytes()[:100])  # killed mid-write (no atomic)
    (models / 'net_g_6.pth').unlink()
    (models / 'net_g_4.pth').write_bytes((models / 'net_g_4.pth').read_bytes()[:50])
    (states / 'latest.state').write_bytes(b'stray')
    opt = {'network_g': dict(NET), 'path': {'training_states': str(states), 'models': str(models)}}
    assert newest_complete_state(opt) == str(states / '2.state')
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('warning: --auto_resume skipped')
    for what in ('latest.state', '8.state (unreadable', '6.state (net_g_6.pth is missing)',
                 '4.state (net_g_4.pth is incomplete)', 'resuming from'):
        assert what in err
    for it in (2, 4, 6):
        (states / f'{it}.state').unlink()
    assert newest_complete_state(opt) is None and 'starting from iteration 0' in capsys.readouterr().err


def test_resumed_bicubic_skip_network_adopts_its_flag_without_a_key_warning(tmp_path):
    """Resuming a ``bicubic_skip`` run: the checkpoint's ``bicubic_residual`` flag is adopted before BasicSR's key
    comparison (no ``Loaded net - current net`` warning), and the loaded networks still skip the mean."""
    import logging
    from basicsr.utils import get_root_logger
    import metasr_arch.models.metasr_model as mm
    opt = make_opt(tmp_path / 'a', ema_decay=0.9)
    opt['bicubic_skip'] = True
    trained = mm.MetaSRModel(opt)
    with torch.no_grad():  # a trained residual branch: not zero, so the comparison below is not 0 == 0
        for net in (trained.net_g, trained.net_g_ema):
            net.residual_last_layer().weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    trained.save(0, 3)
    resumed_opt = make_opt(tmp_path / 'b', ema_decay=0.9)
    resumed_opt['bicubic_skip'] = True
    resumed_opt['path']['pretrain_network_g'] = str(tmp_path / 'a' / 'exp' / 'models' / 'net_g_3.pth')
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = get_root_logger()
    logger.addHandler(handler)
    try:
        resumed = mm.MetaSRModel(resumed_opt)
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == []
    from basicsr.archs import build_network
    assert build_network(dict(NET)).mean_out.any()  # a network without the flag would add the mean back
    x = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(2))
    for before, after in ((trained.net_g, resumed.net_g), (trained.net_g_ema, resumed.net_g_ema)):
        assert after.predicts_residual and not after.mean_out.any()
        with torch.no_grad():
            torch.testing.assert_close(after(x, scale=2.5), before(x, scale=2.5), rtol=0, atol=0)


# --------------------------------------------------------------------------- pickled network weights in options
def _evil_pickle(tmp_path: Path) -> Path:
    """A checkpoint that creates ``tmp_path/marker`` when fully unpickled."""
    from test_hardening import Payload
    path = tmp_path / 'evil.pth'
    torch.save({'params': Payload(tmp_path / 'marker')}, path)
    return path


def _one_error_line(err: str, option: str, path: Path) -> None:
    assert err.count('\n') == 1 and 'Traceback' not in err, err
    assert err.startswith(f'error: {option}: {path}: not a weights-only checkpoint: it holds objects other than '
                          'tensors'), err
    assert 'nothing in it ran' in err and 'posix.system' in err


def test_test_command_refuses_a_pickled_pretrained_network_in_one_line(tmp_path, monkeypatch, capsys):
    """``python -m metasr_arch.test`` under TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1: exit 2 before results/ exists."""
    from metasr_arch.test import main
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    monkeypatch.setenv('METASR_ROOT', str(tmp_path))
    evil = _evil_pickle(tmp_path)
    opt = {'name': 'evil_test', 'model_type': 'MetaSRModel', 'num_gpu': 0, 'network_g': dict(NET),
           'datasets': {'test_1': {'name': 'v', 'type': 'MetaSRGTDataset', 'dataroot_gt': str(tmp_path)}},
           'path': {'pretrain_network_g': str(evil)}, 'val': {'save_img': False, 'scales': [2]}}
    (tmp_path / 't.yml').write_text(yaml.safe_dump(opt))
    with pytest.raises(SystemExit) as info:
        main(['-opt', str(tmp_path / 't.yml')])
    assert info.value.code == 2
    _one_error_line(capsys.readouterr().err, 'path.pretrain_network_g', evil)
    assert not (tmp_path / 'marker').exists() and not (tmp_path / 'results').exists()


@pytest.mark.parametrize('place', ['path.pretrain_network_g', 'network_flow.load_path'])
def test_train_command_refuses_pickled_network_weights_in_one_line(tmp_path, monkeypatch, capsys, place):
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    evil = _evil_pickle(tmp_path)
    opt = base_opt()
    if place == 'network_flow.load_path':  # BasicSR's SpyNet loads its load_path when built
        opt['network_flow'] = {'type': 'SpyNet', 'load_path': str(evil)}
    else:
        opt['path']['pretrain_network_g'] = str(evil)
    assert _train_main(tmp_path, monkeypatch, opt) == 2
    _one_error_line(capsys.readouterr().err, place, evil)
    assert not (tmp_path / 'marker').exists() and not (tmp_path / 'experiments').exists()


def test_a_fork_checks_named_network_weights_before_basicsr_loads_them(tmp_path, monkeypatch, capsys):
    """Through a fork's train.py (BasicSR's loader, which the environment makes unpickle everything), the file is
    refused when the options are parsed, before BasicSR could load it."""
    import basicsr.utils.options as options
    from metasr_arch.utils.launch import patch_init_dist
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    monkeypatch.setattr(options, 'parse_options', options.parse_options)  # undone after the test
    patch_init_dist()
    evil = _evil_pickle(tmp_path)
    opt = base_opt()
    opt['path']['pretrain_network_g'] = str(evil)
    (tmp_path / 'o.yml').write_text(yaml.safe_dump(opt))
    monkeypatch.setattr(sys, 'argv', ['train.py', '-opt', str(tmp_path / 'o.yml')])
    with pytest.raises(SystemExit) as info:
        options.parse_options(str(tmp_path), is_train=True)
    assert info.value.code == 2
    _one_error_line(capsys.readouterr().err, 'path.pretrain_network_g', evil)
    assert not (tmp_path / 'marker').exists()


def test_a_pickle_refused_mid_run_is_one_line_exit_1(tmp_path, monkeypatch, capsys):
    """A file the options do not name (a resumed run's checkpoint): refused by every load in the pipeline."""
    from metasr_arch.utils.launch import run_pipeline
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    evil = _evil_pickle(tmp_path)

    def pipeline(root):
        torch.load(str(evil), map_location='cpu')  # BasicSR's own call: no weights_only argument

    with pytest.raises(SystemExit) as info:
        run_pipeline(pipeline, [])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith(f'error: {evil}: not a weights-only checkpoint'), err
    assert not (tmp_path / 'marker').exists()


# --------------------------------------------------------------------------- item 5: exact resume
def _train(tmp_path, opt, *extra):
    (tmp_path / 'o.yml').write_text(yaml.safe_dump(opt))
    env = dict(os.environ, METASR_ROOT=str(tmp_path), PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, '-m', 'metasr_arch.train', '-opt', str(tmp_path / 'o.yml'), *extra],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.mark.slow
def test_killed_and_resumed_run_gives_the_same_weights(tmp_path):
    """4 iterations in one go vs 2 (state saved mid-epoch) + --auto_resume to 4 after a truncated state and a stray
    latest.state appeared: same weights. 3 images, batch 2 (enlarge 2): epochs of 3 iterations, random crops and
    flips (Python's random) in the loader's main process."""
    opt = tiny_demo_opt(tmp_path, 'full', n_train=3)
    opt['datasets']['train'].update(dataset_enlarge_ratio=2)
    opt['train'].update(lr_patch_size=8, total_iter=4)
    opt.pop('val')
    opt['datasets'].pop('val')
    opt['logger'].update(print_freq=1, save_checkpoint_freq=1)
    _train(tmp_path, opt)
    opt['name'] = 'split'
    opt['train']['total_iter'] = 2
    _train(tmp_path, opt)
    states = tmp_path / 'experiments' / 'split' / 'training_states'
    (states / '5.state').write_bytes(b'PK\x03\x04 cut')
    (states / 'latest.state').write_bytes(b'')
    opt['train']['total_iter'] = 4
    run = _train(tmp_path, opt, '--auto_resume')
    assert 'warning: --auto_resume skipped' in run.stderr and '5.state (unreadable' in run.stderr
    assert f'resuming from {states / "2.state"}' in run.stderr
    full = torch.load(tmp_path / 'experiments' / 'full' / 'models' / 'net_g_4.pth', weights_only=True)['params']
    split = torch.load(states.parent / 'models' / 'net_g_4.pth', weights_only=True)['params']
    assert full.keys() == split.keys()
    for k in full:
        torch.testing.assert_close(split[k], full[k], rtol=0, atol=0, msg=k)
    # the weights moved after the resume (the comparison is not between two copies of iteration 2)
    two = torch.load(states.parent / 'models' / 'net_g_2.pth', weights_only=True)['params']
    assert any(not torch.equal(two[k], full[k]) for k in full)


# --------------------------------------------------------------------------- item 8: hooked BasicSR
@pytest.mark.slow
def test_hooked_basicsr_train_module_writes_under_the_working_directory(tmp_path):
    """``python -m basicsr.train`` (BasicSR's file, unedited) with the startup hook: experiments/ in the working
    directory, not in site-packages; and a typo there ends with the plugin's one-line error."""
    from metasr_arch import hook
    import basicsr
    (tmp_path / 'site').mkdir()
    hook.install(tmp_path / 'site')
    opt = tiny_demo_opt(tmp_path, 'hooked_h2', n_train=2)
    opt['train'].update(lr_patch_size=8, total_iter=1)
    opt.pop('val')
    opt['datasets'].pop('val')
    opt['logger'].update(print_freq=1, save_checkpoint_freq=1)
    stray = Path(basicsr.__file__).parent.parent / 'experiments' / 'hooked_h2'
    had_experiments = stray.parent.exists()
    work = tmp_path / 'work'
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop('METASR_ROOT', None)

    def run(o):
        (tmp_path / 'o.yml').write_text(yaml.safe_dump(o))
        code = (f'import runpy, site, sys; site.addsitedir({str(tmp_path / "site")!r}); '
                f'sys.argv = ["train.py", "-opt", {str(tmp_path / "o.yml")!r}]; '
                'runpy.run_module("basicsr.train", run_name="__main__", alter_sys=True)')
        return subprocess.run([sys.executable, '-c', code], env=env, cwd=work, capture_output=True, text=True,
                              timeout=300)

    try:
        bad = deepcopy(opt)
        bad['network_g']['num_feats'] = 8
        done = run(bad)
        assert done.returncode == 2 and "did you mean 'num_feat'" in done.stderr, done.stderr[-2000:]
        assert not (work / 'experiments').exists()
        done = run(opt)
        assert done.returncode == 0, done.stderr[-3000:]
        assert (work / 'experiments' / 'hooked_h2' / 'models' / 'net_g_1.pth').is_file()
        assert not stray.exists()
    finally:
        if stray.exists() and str(stray).startswith(sysconfig.get_paths()['purelib']):
            import shutil
            shutil.rmtree(stray)  # what today's main leaves in site-packages
        if not had_experiments and stray.parent.is_dir() and not any(stray.parent.iterdir()):
            stray.parent.rmdir()
