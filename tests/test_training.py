"""MetaSRModel: LR synthesis, validation metrics, checkpoints, bad options, end-to-end train + test."""
import json
import math
import os
import subprocess
import sys
from copy import deepcopy

import cv2
import numpy as np
import pytest
import torch
import yaml

from metasr_arch.models.metasr_model import MetaSRModel
from metasr_arch.ops.geometry import resolve_scale
from metasr_arch.utils.resize import imresize_to

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NET = {'type': 'MetaRDN', 'num_feat': 8, 'num_block': 1, 'num_layer': 2, 'num_grow_ch': 8, 'hidden_channels': 16}


def make_opt(tmp_path, **train_overrides):
    exp = tmp_path / 'exp'
    opt = {
        'name': 'unit', 'model_type': 'MetaSRModel', 'num_gpu': 0, 'manual_seed': 5, 'is_train': True, 'dist': False,
        'rank': 0, 'world_size': 1, 'network_g': dict(NET),
        'path': {'pretrain_network_g': None, 'experiments_root': str(exp), 'models': str(exp / 'models'),
                 'training_states': str(exp / 'training_states'), 'visualization': str(exp / 'vis')},
        'datasets': {'train': {'name': 'tr', 'gt_size': 60}},
        'train': {'scale_sampler': {'type': 'uniform', 'v': [1.5, 3.0], 'h': [1.5, 3.0], 'step': 0.5,
                                    'p_symmetric': 0.5},
                  'lr_patch_size': [20, 16], 'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'scheduler': {
                      'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
                  'total_iter': 10, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
        'val': {'scales': [2, [1.5, 3]], 'save_img': True},
    }
    opt['train'].update(train_overrides)
    for key in ('models', 'training_states'):
        os.makedirs(opt['path'][key], exist_ok=True)
    return opt


def test_lr_synthesis_is_imresize_of_the_exact_crop(tmp_path):
    model = MetaSRModel(make_opt(tmp_path))
    gt = torch.rand(2, 3, 60, 60)
    for it in (1, 2, 3):
        model.update_learning_rate(it)
        model.feed_data({'gt': gt})
        r_v, r_h = model.current_scale()
        assert (r_v, r_h) == model.scale_sampler(it)
        H, W = math.floor(20 * r_v + 1e-9), math.floor(16 * r_h + 1e-9)
        assert model.gt.shape == (2, 3, H, W) and model.lq.shape == (2, 3, 20, 16)
        assert torch.equal(model.gt, gt[..., :H, :W])
        assert torch.allclose(model.lq, imresize_to(gt[..., :H, :W], (20, 16)), atol=1e-6)
        model.optimize_parameters(it)
        assert model.output.shape == model.gt.shape
    # pre-generated pairs are used as they are
    model.feed_data({'lq': torch.rand(1, 3, 10, 8), 'gt': torch.rand(1, 3, 25, 16),
                     'scale': torch.tensor([[2.5, 2.0]], dtype=torch.float64)})
    assert model.current_scale() == (2.5, 2.0) and model.lq.shape == (1, 3, 10, 8)


def test_lq_quantize(tmp_path):
    model = MetaSRModel(make_opt(tmp_path, lq_quantize=255))
    model.feed_data({'gt': torch.rand(1, 3, 60, 60)})
    assert torch.equal(model.lq, torch.round(model.lq * 255) / 255) and model.lq.min() >= 0


def y_channel(bgr_uint8):
    img = bgr_uint8.astype(np.float64) / 255.
    return 16. + 65.481 * img[..., 2] + 128.553 * img[..., 1] + 24.966 * img[..., 0]


def psnr_ref(a, b):
    return 10 * np.log10(255. ** 2 / np.mean((a - b) ** 2))


class _Loader(list):
    def __init__(self, items, dataset):
        super().__init__(items)
        self.dataset = dataset


def test_validation_metrics_jsonl_and_table(tmp_path):
    from basicsr.utils import tensor2img
    opt = make_opt(tmp_path)
    model = MetaSRModel(opt)
    torch.manual_seed(1)
    gt = torch.rand(1, 3, 31, 27) * 0.8 + 0.1
    ds = type('D', (), {'opt': {'name': 'tiny'}})()
    model.validation(_Loader([{'gt': gt, 'gt_path': ['/x/pic.png']}], ds), 7, None, True)
    lines = [json.loads(s) for s in (tmp_path / 'exp' / 'metrics.jsonl').read_text().splitlines()]
    assert [rec['scale'] for rec in lines] == [[2.0, 2.0], [1.5, 3.0]]
    net = model.net_g.eval()
    for rec in lines:
        assert set(rec) == {'iter', 'dataset', 'scale', 'psnr', 'ssim', 'psnr_bicubic', 'ssim_bicubic'}
        assert rec['iter'] == 7 and rec['dataset'] == 'tiny'
        r_v, r_h = rec['scale']
        h, w = math.floor(31 / r_v), math.floor(27 / r_h)
        spec = resolve_scale(h, w, (r_v, r_h))
        crop = gt[..., :spec.out_h, :spec.out_w]
        lq = imresize_to(crop, (h, w))
        with torch.no_grad():
            sr = net(lq, scale=(r_v, r_h))
        bic = imresize_to(lq, (spec.out_h, spec.out_w))
        bv, bh = math.ceil(r_v), math.ceil(r_h)
        ref = y_channel(tensor2img([crop]))[bv:-bv, bh:-bh]
        assert rec['psnr'] == pytest.approx(psnr_ref(y_channel(tensor2img([sr]))[bv:-bv, bh:-bh], ref), abs=1e-3)
        assert rec['psnr_bicubic'] == pytest.approx(
            psnr_ref(y_channel(tensor2img([bic]))[bv:-bv, bh:-bh], ref), abs=1e-3)
    assert (tmp_path / 'exp' / 'vis' / 'tiny' / 'pic_X1.50_X3.00_7.png').is_file()
    table = (tmp_path / 'exp' / 'psnr_table.md').read_text()
    assert '| tiny | 1.5 x 3 | 7 |' in table
    assert model.best_metric_results['tiny@X2.00']['psnr']['iter'] == 7


def test_checkpoint_is_atomic_and_records_network_opt(tmp_path, monkeypatch):
    model = MetaSRModel(make_opt(tmp_path))
    model.save(0, 1)
    path = tmp_path / 'exp' / 'models' / 'net_g_1.pth'
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    assert ckpt['network_opt'] == NET
    before = {k: v.clone() for k, v in ckpt['params'].items()}
    with torch.no_grad():
        for p in model.net_g.parameters():
            p.add_(1)

    def crash(obj, f, *args, **kwargs):  # a kill in the middle of the write
        f.write(b'partial')
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, 'save', crash)
    with pytest.raises(KeyboardInterrupt):
        model.save_network(model.net_g, 'net_g', 1)
    with pytest.raises(KeyboardInterrupt):
        model.save_training_state(0, 1)
    monkeypatch.undo()
    again = torch.load(path, map_location='cpu', weights_only=True)['params']
    assert all(torch.equal(again[k], before[k]) for k in before)
    assert torch.load(tmp_path / 'exp' / 'training_states' / '1.state', weights_only=True)['iter'] == 1
    assert not [f for f in os.listdir(path.parent) if f.endswith('.tmp')]
    model.load_network(model.net_g, str(path))
    assert all(torch.equal(model.net_g.state_dict()[k], before[k]) for k in before)


@pytest.mark.parametrize('change, match', [
    (lambda o: o['train'].update(scale_sampler={'type': 'beta'}), 'scale_sampler.type'),
    (lambda o: o['train'].update(scale_sampler={'type': 'uniform', 'v': [0.5, 2]}), 'below 1'),
    (lambda o: o['train'].pop('scale_sampler'), 'scale_sampler is required'),
    (lambda o: o['train'].update(lr_patch_size=2), 'smaller than the Meta kernel'),
    (lambda o: o['datasets']['train'].update(gt_size=40), 'gt_size .* too small'),
    (lambda o: o['val'].update(scales=[2, [1, 2, 3]]), r'val.scales\[1\]'),
    (lambda o: o['val'].update(scales=2), 'val.scales must be a non-empty list'),
    (lambda o: o['val'].update(scales=[0.5]), r'val.scales\[0\]'),
])
def test_bad_options_fail_before_training(tmp_path, change, match):
    opt = make_opt(tmp_path)
    change(opt)
    with pytest.raises(ValueError, match=match):
        MetaSRModel(opt)


def write_images(folder, n, h, w):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        base = cv2.resize(rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8), (w, h))
        cv2.imwrite(os.path.join(folder, f'im{i}.png'), base)


def run_train_cli(tmp_path, opt: dict, *extra: str, timeout: int = 300, env: dict = None):
    """Write ``opt`` to ``tmp_path/train.yml`` and run ``python -m metasr_arch.train`` on it there
    (``METASR_ROOT`` = ``tmp_path``); asserts exit 0 and returns the finished process."""
    (tmp_path / 'train.yml').write_text(yaml.safe_dump(opt))
    env = dict(env if env is not None else os.environ, METASR_ROOT=str(tmp_path))
    run = subprocess.run([sys.executable, '-m', 'metasr_arch.train', '-opt', str(tmp_path / 'train.yml'), *extra],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def tiny_demo_opt(tmp_path, name: str, n_train: int = 3) -> dict:
    """The demo options shrunk to a tiny network on tiny images written under ``tmp_path``."""
    write_images(tmp_path / 'train', n_train, 48, 48)
    write_images(tmp_path / 'val', 1, 30, 26)
    with open(os.path.join(REPO, 'options', 'train', 'demo_MetaRDN.yml')) as f:
        opt = yaml.safe_load(f)
    opt['name'] = name
    opt['network_g'].update(NET)
    opt['datasets']['train'].update(dataroot_gt=str(tmp_path / 'train'), materialize=None, gt_size=24,
                                    num_worker_per_gpu=0, batch_size_per_gpu=2, dataset_enlarge_ratio=1)
    opt['datasets']['val'].update(dataroot_gt=str(tmp_path / 'val'), materialize=None)
    return opt


@pytest.mark.slow
def test_end_to_end_train_then_test(tmp_path):
    """``python -m metasr_arch.train`` for 3 iterations on tiny data, then ``python -m metasr_arch.test``."""
    opt = tiny_demo_opt(tmp_path, 'e2e')
    opt['train'].update(lr_patch_size=8, total_iter=3)
    opt['val'].update(val_freq=3, tile={'size': 8, 'overlap': 5})
    opt['logger'].update(print_freq=1, save_checkpoint_freq=3)
    run_train_cli(tmp_path, opt)
    exp = tmp_path / 'experiments' / 'e2e'
    recs = [json.loads(s) for s in (exp / 'metrics.jsonl').read_text().splitlines()]
    expected = {(float(s[0]), float(s[1])) if isinstance(s, list) else (float(s), float(s))
                for s in opt['val']['scales']}
    assert len(recs) == len(expected) and {tuple(r['scale']) for r in recs} == expected  # one record per scale
    assert {r['iter'] for r in recs} == {3}
    assert 'psnr bicubic' in (exp / 'psnr_table.md').read_text()
    test_opt = {'name': 'e2e_test', 'model_type': 'MetaSRModel', 'num_gpu': 0, 'manual_seed': 0,
                'bicubic_skip': True, 'network_g': opt['network_g'],
                'datasets': {'test_1': {'name': 'tiny', 'type': 'MetaSRGTDataset', 'dataroot_gt': str(tmp_path / 'val')}},
                'path': {'pretrain_network_g': str(exp / 'models' / 'net_g_latest.pth'), 'strict_load_g': True},
                'val': {'save_img': True, 'suffix': None, 'scales': [2.5, [1.5, 3]], 'lq_quantize': 255}}
    (tmp_path / 'test.yml').write_text(yaml.safe_dump(test_opt))
    run = subprocess.run([sys.executable, '-m', 'metasr_arch.test', '-opt', str(tmp_path / 'test.yml')],
                         env=dict(os.environ, METASR_ROOT=str(tmp_path)), cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    recs_test = [json.loads(s) for s in (tmp_path / 'results' / 'e2e_test' / 'metrics.jsonl').read_text().splitlines()]
    by_scale = {tuple(r['scale']): r for r in recs_test}
    # the test run reloads the trained weights: same numbers as the training run's final validation
    final = {tuple(r['scale']): r for r in recs}
    assert by_scale[(2.5, 2.5)]['psnr'] == pytest.approx(final[(2.5, 2.5)]['psnr'], abs=1e-6)
    assert (tmp_path / 'results' / 'e2e_test' / 'visualization' / 'tiny' / 'im0_X1.50_X3.00_e2e_test.png').is_file()


def test_demo_options_parse():
    with open(os.path.join(REPO, 'options', 'train', 'demo_MetaRDN.yml')) as f:
        opt = yaml.safe_load(f)
    opt.update(is_train=True, dist=False, rank=0, world_size=1)
    from metasr_arch.models.metasr_model import check_metasr_options
    check_metasr_options(opt)  # sampler, patch sizes and val scales are valid
    scales = [tuple(s) if isinstance(s, list) else (s, s) for s in opt['val']['scales']]
    assert any(a != b for a, b in scales) and any(a % 1 for a, _ in scales)


def test_demo_test_options_match_the_demo_network():
    """options/test/test_demo_MetaRDN.yml loads the demo's checkpoint strictly: same network options."""
    def load(name):
        with open(os.path.join(REPO, 'options', name)) as f:
            return yaml.safe_load(f)
    train, test = load('train/demo_MetaRDN.yml'), load('test/test_demo_MetaRDN.yml')
    assert test['network_g'] == train['network_g']
    assert test['bicubic_skip'] == train['bicubic_skip']
    assert test['path']['pretrain_network_g'] == f"experiments/{train['name']}/models/net_g_latest.pth"


@pytest.mark.parametrize('name', ['train/demo_MetaRDN.yml', 'train/train_MetaRDN_x1-4.yml', 'train/train_MetaRDN_asym.yml',
                                  'train/train_SwinIRMeta_x1-4.yml', 'train/train_SwinIRMeta_grid_721x1440.yml',
                                  'test/test_demo_MetaRDN.yml', 'test/test_MetaRDN_benchmarks.yml'])
def test_option_files_are_valid(name):
    from basicsr.archs import build_network
    from metasr_arch.models.metasr_model import check_metasr_options
    with open(os.path.join(REPO, 'options', name)) as f:
        opt = yaml.safe_load(f)
    opt['is_train'] = name.startswith('train/')
    check_metasr_options(opt)
    build_network(deepcopy(opt['network_g']))
    if 'grid' in name:  # 96 x 144 -> exactly 721 x 1440
        assert resolve_scale(96, 144, out_size=opt['train']['out_size'])[2:] == (721, 1440)


@pytest.mark.slow
def test_auto_resume_on_cpu(tmp_path):
    """``--auto_resume`` continues from the last training state on a machine without CUDA."""
    opt = tiny_demo_opt(tmp_path, 'resume', n_train=2)
    opt['train'].update(lr_patch_size=8, total_iter=2)
    opt['val'].update(val_freq=2, scales=[2])
    opt['logger'].update(print_freq=1, save_checkpoint_freq=2)
    env = dict(os.environ, METASR_ROOT=str(tmp_path))
    for total in (2, 4):
        opt['train']['total_iter'] = total
        (tmp_path / 'train.yml').write_text(yaml.safe_dump(opt))
        run = subprocess.run([sys.executable, '-m', 'metasr_arch.train', '-opt', str(tmp_path / 'train.yml'),
                              '--auto_resume'], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
    logs = sorted((tmp_path / 'experiments' / 'resume').glob('train_resume_*.log'))
    assert any('Resuming training from epoch' in p.read_text() for p in logs)
    recs = [json.loads(s) for s in (tmp_path / 'experiments' / 'resume' / 'metrics.jsonl').read_text().splitlines()]
    # BasicSR validates at val_freq and once more after the last iteration; the second would see the
    # same weights, so MetaSRModel skips it: one record per run
    assert [r['iter'] for r in recs] == [2, 4]
