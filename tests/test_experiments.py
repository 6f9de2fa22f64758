"""The Meta-vs-fixed comparison: FixedScaleRDN, the generated option files (demo and div2k presets),
the report, and (slow) the driver end to end with an independent re-evaluation of its numbers."""
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
import torch.nn.functional as F
import yaml

from basicsr.archs import build_network
from basicsr.metrics import calculate_psnr

from metasr_arch.experiments import meta_vs_fixed as mvf
from metasr_arch.experiments import report
from metasr_arch.models.metasr_model import MetaSRModel, check_metasr_options
from metasr_arch.utils.resize import imresize_to
from metasr_arch.utils.scale_sampler import build_scale_sampler

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRUNK = {'num_feat': 8, 'num_block': 2, 'num_layer': 2, 'num_grow_ch': 4}


# --------------------------------------------------------------------------- FixedScaleRDN
@pytest.mark.parametrize('scale', [2, 3, 4])
def test_fixed_rdn_is_the_metardn_trunk_then_pixel_shuffle(scale):
    """Output = conv_last(pixel-shuffle convs(MetaRDN trunk)) / 255 + mean, computed here by hand."""
    torch.manual_seed(0)
    net = build_network({'type': 'FixedScaleRDN', 'scale': scale, **TRUNK}).double()
    meta = build_network({'type': 'MetaRDN', **TRUNK}).double()
    trunk_state = {k: v for k, v in net.state_dict().items() if not k.startswith('upsample.')}
    missing, unexpected = meta.load_state_dict(trunk_state, strict=False)
    assert not unexpected and all(k.startswith('upsample.') for k in missing)  # the trunk is MetaRDN's, key for key
    x = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    feat = meta.forward_trunk(x)
    convs = [m for m in net.upsample.upsample if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == (2 if scale == 4 else 1)
    for conv in convs:  # num_feat -> r^2 * num_feat channels, then pixel shuffle by r
        r = int(round(math.sqrt(conv.out_channels / TRUNK['num_feat'])))
        feat = F.pixel_shuffle(F.conv2d(feat, conv.weight, conv.bias, padding=1), r)
    ref = F.conv2d(feat, net.upsample.conv_last.weight, net.upsample.conv_last.bias, padding=1)
    mean = torch.tensor([0.4488, 0.4371, 0.4040], dtype=torch.float64).view(1, 3, 1, 1)
    ref = ref / 255. + mean
    for request in ({'scale': scale}, {'scale': (scale, scale)}, {'out_size': (5 * scale, 7 * scale)}):
        out = net(x, **request)
        assert out.shape == (2, 3, 5 * scale, 7 * scale)
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-9)


def test_fixed_rdn_refuses_other_requests():
    net = build_network({'type': 'FixedScaleRDN', 'scale': 3, **TRUNK})
    x = torch.rand(1, 3, 6, 6)
    for request in ({'scale': 2}, {'scale': 2.5}, {'scale': (3, 2)}, {'out_size': (18, 17)}):
        with pytest.raises(ValueError, match=r'FixedScaleRDN\(scale=3\) serves only x3'):
            net(x, **request)
    with pytest.raises(ValueError, match='give exactly one of'):
        net(x)
    for bad in (5, 2.5, True):
        with pytest.raises(ValueError, match='scale must be one of'):
            build_network({'type': 'FixedScaleRDN', 'scale': bad, **TRUNK})
    with pytest.raises(ValueError, match='impl'):
        net.impl = 'unfold'


def test_fixed_rdn_trains_with_metasr_model(tmp_path):
    """MetaSRModel with a one-scale choice sampler: LR 8x6 -> output exactly the 24x18 GT crop, loss decreases."""
    exp = tmp_path / 'exp'
    opt = {'name': 'fixed', 'model_type': 'MetaSRModel', 'num_gpu': 0, 'manual_seed': 1, 'is_train': True,
           'dist': False, 'rank': 0, 'world_size': 1, 'bicubic_skip': True,
           'network_g': {'type': 'FixedScaleRDN', 'scale': 3, **TRUNK},
           'path': {'pretrain_network_g': None, 'experiments_root': str(exp), 'models': str(exp / 'models'),
                    'training_states': str(exp / 'ts'), 'visualization': str(exp / 'vis')},
           'datasets': {'train': {'name': 'tr', 'gt_size': 24}},
           'train': {'scale_sampler': {'type': 'choice', 'scales': [3]}, 'lr_patch_size': [8, 6],
                     'optim_g': {'type': 'Adam', 'lr': 2e-3}, 'scheduler': {'type': 'MultiStepLR', 'milestones': [100],
                                                                            'gamma': 0.5},
                     'total_iter': 10, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}}}
    model = MetaSRModel(opt)
    torch.manual_seed(0)
    gt = torch.rand(1, 3, 24, 24)
    losses = []
    for it in range(1, 16):
        model.update_learning_rate(it)
        model.feed_data({'gt': gt})
        assert model.current_scale() == (3.0, 3.0)
        model.optimize_parameters(it)
        assert model.output.shape == model.gt.shape == (1, 3, 24, 18)
        losses.append(float(model.log_dict['l_pix']))
    assert losses[-1] < losses[0]


# --------------------------------------------------------------------------- option generation
def _load_script():
    import importlib.util
    spec = importlib.util.spec_from_file_location('meta_vs_fixed_script', os.path.join(REPO, 'scripts', 'experiments',
                                                                                       'meta_vs_fixed.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _all_options(preset_name, tmp_path, iters=None):
    preset = mvf.PRESETS[preset_name]
    specs = mvf.model_specs(preset)
    iters = iters or preset.default_iters
    return preset, specs, {s.name: (mvf.train_options(preset, s, iters), mvf.test_options(preset, s, str(tmp_path)))
                           for s in specs}


def test_demo_models_share_everything_but_head_and_scales(tmp_path):
    preset, specs, opts = _all_options('demo', tmp_path, iters=2000)
    assert [s.name for s in specs] == list(mvf.MODEL_NAMES)
    trunk_keys = ('num_in_ch', 'num_out_ch', 'num_feat', 'num_block', 'num_layer', 'num_grow_ch', 'img_range',
                  'rgb_mean')
    ref_train, _ = opts['meta']
    with open(os.path.join(REPO, 'options', 'train', 'demo_MetaRDN.yml')) as f:
        demo = yaml.safe_load(f)
    for name, (train, test) in opts.items():
        opt = dict(deepcopy(train), is_train=True)
        check_metasr_options(opt)  # gt_size holds the largest scale's output
        assert {k: train['network_g'][k] for k in trunk_keys} == {k: demo['network_g'][k] for k in trunk_keys}
        assert train['network_g'] == test['network_g']
        for key in ('bicubic_skip', 'manual_seed', 'datasets', 'logger'):
            assert train[key] == ref_train[key], key
        for key in ('optim_g', 'scheduler', 'total_iter', 'lr_patch_size', 'lq_quantize', 'pixel_opt'):
            assert train['train'][key] == ref_train['train'][key], key
        assert train['bicubic_skip'] is True and train['train']['total_iter'] == 2000
        assert train['train']['scheduler']['milestones'] == [1333, 1833]  # the demo's 2000/3000, 2750/3000
        assert test['path']['pretrain_network_g'] == os.path.join(str(tmp_path), 'experiments', name, 'models',
                                                                  'net_g_latest.pth')
        assert train['datasets']['train']['dataroot_gt'] == os.path.abspath('datasets/demo/train')
        assert test['datasets']['test_1']['dataroot_gt'] == os.path.abspath('datasets/demo/val')
    # what each model trains on: 200 draws of its sampler
    draws = {name: {build_scale_sampler(t['train']['scale_sampler'])(i) for i in range(2000)}
             for name, (t, _) in opts.items()}
    grid = [1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
    assert draws['meta'] == {(r, r) for r in grid}
    assert draws['meta_asym'] == {(a, b) for a in grid for b in grid}
    assert draws['meta_x2'] == {(2.0, 2.0)}
    for r in (2, 3, 4):
        assert draws[f'fixed_x{r}'] == {(float(r), float(r))}
        assert opts[f'fixed_x{r}'][1]['val']['scales'] == [float(r)]
        assert opts[f'fixed_x{r}'][0]['network_g'] == {'type': 'FixedScaleRDN', 'scale': r, **preset.trunk}
    meta_scales = opts['meta'][1]['val']['scales']
    assert meta_scales[:11] == [1.5 + 0.25 * i for i in range(11)] and [4.0, 1.5] in meta_scales


def test_div2k_preset_is_the_paper_configuration(tmp_path, capsys):
    """--preset div2k --dry-run: full MetaRDN on DIV2K, LR 50, batch 16, scales 1.1..4.0 step 0.1, Adam 1e-4
    halved every 10k of 50k iterations; every file passes the model's option checks and builds."""
    out = tmp_path / 'div2k'
    script = _load_script()
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the preset's data folders are relative to the working directory
    try:
        assert script.main(['--preset', 'div2k', '--out', str(out), '--dry-run']) == 0
    finally:
        os.chdir(cwd)
    assert 'metasr_arch.train -opt' in capsys.readouterr().out and not (out / 'experiments').exists()  # nothing ran
    files = sorted(p.name for p in (out / 'options').iterdir())
    assert files == sorted([f'{k}_{m}.yml' for k in ('train', 'test') for m in mvf.MODEL_NAMES])
    for name in mvf.MODEL_NAMES:
        with open(out / 'options' / f'train_{name}.yml') as f:
            train = yaml.safe_load(f)
        with open(out / 'options' / f'test_{name}.yml') as f:
            test = yaml.safe_load(f)
        check_metasr_options(dict(train, is_train=True))
        check_metasr_options(test)
        net = train['network_g']
        assert {k: net[k] for k in ('num_feat', 'num_block', 'num_layer', 'num_grow_ch')} == \
            {'num_feat': 64, 'num_block': 16, 'num_layer': 8, 'num_grow_ch': 64}
        assert net['type'] == ('FixedScaleRDN' if name.startswith('fixed') else 'MetaRDN')
        if net['type'] == 'MetaRDN':
            assert net['hidden_channels'] == 256 and net['kernel_size'] == 3
        ds = train['datasets']['train']
        assert ds['dataroot_gt'] == str(tmp_path / 'datasets' / 'DIV2K' / 'DIV2K_train_HR')
        assert ds['materialize'] is None
        assert (ds['gt_size'], ds['batch_size_per_gpu']) == (200, 16)
        t = train['train']
        assert (t['lr_patch_size'], t['optim_g']['lr'], t['total_iter']) == (50, 1e-4, 50000)
        assert t['scheduler'] == {'type': 'MultiStepLR', 'milestones': [10000, 20000, 30000, 40000], 'gamma': 0.5}
        assert train['bicubic_skip'] is False
        assert test['datasets']['test_1']['dataroot_gt'] == str(tmp_path / 'datasets' / 'B100' / 'HR')
    with open(out / 'options' / 'train_meta.yml') as f:
        sampler = build_scale_sampler(yaml.safe_load(f)['train']['scale_sampler'])
    paper_scales = [round(1.1 + 0.1 * i, 10) for i in range(30)]
    assert sorted({sampler(i)[0] for i in range(2000)}) == paper_scales
    assert all(a == b for a, b in (sampler(i) for i in range(200)))
    with open(out / 'options' / 'test_meta.yml') as f:
        assert yaml.safe_load(f)['val']['scales'][:30] == paper_scales
    for name in ('train_meta.yml', 'train_fixed_x4.yml'):  # the full networks build (22 M parameters)
        with open(out / 'options' / name) as f:
            build_network(yaml.safe_load(f)['network_g'])


def test_user_folders_are_never_materialized(tmp_path):
    preset = mvf.PRESETS['demo']
    spec = mvf.model_specs(preset, ['meta'])[0]
    assert mvf.train_options(preset, spec, 10)['datasets']['train']['materialize'] == 'skimage_demo_train'
    mine = mvf.train_options(preset, spec, 10, str(tmp_path / 'mine'))['datasets']['train']
    assert mine['materialize'] is None and mine['dataroot_gt'] == str(tmp_path / 'mine')
    assert mvf.test_options(preset, spec, str(tmp_path), 'v')['datasets']['test_1']['materialize'] is None


def test_bad_arguments_are_named(tmp_path):
    preset = mvf.PRESETS['demo']
    with pytest.raises(ValueError, match='--models: unknown'):
        mvf.model_specs(preset, ['meta', 'edsr'])
    with pytest.raises(ValueError, match='--iters must be a positive integer'):
        mvf.train_options(preset, mvf.model_specs(preset, ['meta'])[0], 0)
    with pytest.raises(ValueError, match='--preset must be one of'):
        mvf.run(str(tmp_path), 'imagenet', dry_run=True)
    mvf.check_manifest(str(tmp_path), {'preset': 'demo', 'iters': 5, 'seed': 0})
    mvf.check_manifest(str(tmp_path), {'preset': 'demo', 'iters': 5, 'seed': 0})  # same run: fine
    with pytest.raises(ValueError, match='holds a run with iters = 5, not 6'):
        mvf.check_manifest(str(tmp_path), {'preset': 'demo', 'iters': 6, 'seed': 0})


# --------------------------------------------------------------------------- report
class _Spec:
    def __init__(self, name, kind):
        self.name, self.kind, self.description = name, kind, f'{name} model'


def _write_metrics(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(json.dumps(r) + '\n' for r in rows))


def test_report_tables_and_records(tmp_path):
    def rec(scale, psnr, bic, it=5):
        return {'iter': it, 'dataset': 'v', 'scale': scale, 'psnr': psnr, 'ssim': psnr / 100, 'psnr_bicubic': bic,
                'ssim_bicubic': bic / 100}
    files = {'meta': tmp_path / 'm.jsonl', 'fixed_x2': tmp_path / 'f.jsonl'}
    _write_metrics(files['meta'], [rec([2, 3], 30.0, 28.0), rec([2, 2], 99.0, 30.0, it=1), rec([2, 2], 33.5, 30.0),
                                   rec([3, 3], 29.0, 27.0)])
    _write_metrics(files['fixed_x2'], [rec([2, 2], 34.25, 30.0)])
    specs = [_Spec('meta', 'meta'), _Spec('fixed_x2', 'fixed')]
    paths = report.write_report(str(tmp_path), specs, {k: str(v) for k, v in files.items()},
                                {'preset': 'demo', 'title': 't'}, {'meta': {'train_seconds': 12.4}})
    data = json.loads(open(paths['json']).read())
    got = {(r['model'], tuple(r['scale'])): r['psnr'] for r in data['records']}
    # the last line per scale wins; bicubic once per scale; symmetric scales first
    assert got == {('meta', (2.0, 2.0)): 33.5, ('meta', (3.0, 3.0)): 29.0, ('meta', (2.0, 3.0)): 30.0,
                   ('fixed_x2', (2.0, 2.0)): 34.25, ('bicubic', (2.0, 2.0)): 30.0, ('bicubic', (3.0, 3.0)): 27.0,
                   ('bicubic', (2.0, 3.0)): 28.0}
    assert [tuple(r['scale']) for r in data['records'] if r['model'] == 'meta'] == [(2, 2), (3, 3), (2, 3)]
    assert data['models'][0]['train_seconds'] == 12.4 and data['settings']['preset'] == 'demo'
    md = open(paths['markdown']).read()
    assert '| x2 | 33.50 | **34.25** | 30.00 |' in md  # best model in bold, bicubic never
    assert '| x3 | 29.00 | - | 27.00 |' in md  # a single model is not "best"; '-' where a model cannot serve
    assert '| 2 x 3 | 30.00 | - | 28.00 |' in md
    assert '| meta | fixed_x2 | x2 | 33.50 | 34.25 | -0.75 |' in md
    assert '| meta | meta model | 12 |' in md and 'title' not in md
    assert cv2.imread(paths['figure']) is not None
    with pytest.raises(ValueError, match='no evaluation results'):
        report.collect_records({'meta': str(tmp_path / 'none.jsonl')}, {'meta': 'meta'})


# --------------------------------------------------------------------------- end to end
def _y_psnr(sr, gt, border):
    """BasicSR's Y-channel PSNR of two RGB float tensors (1, 3, H, W) in [0, 1], after 8-bit rounding."""
    def img(t):
        return cv2.cvtColor((t[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.).round().astype(np.uint8),
                            cv2.COLOR_RGB2BGR)
    return calculate_psnr(img(sr), img(gt), crop_border=border, test_y_channel=True)


@pytest.mark.slow
def test_driver_end_to_end_and_resume(tmp_path):
    """Two iterations per model on the demo photos: every file is written, the records are one per
    (model, scale) each can serve, fixed_x2's and bicubic's PSNR equal an independent re-evaluation of the
    checkpoint, and a second run trains nothing and reproduces the numbers."""
    script = os.path.join(REPO, 'scripts', 'experiments', 'meta_vs_fixed.py')
    cmd = [sys.executable, script, '--iters', '2', '--out', 'out', '--models', 'meta_x2', 'fixed_x2',
           '--scales', '2', '3x2']
    env = dict(os.environ, PYTHONPATH=REPO)
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    out = tmp_path / 'out'
    for name in ('results.md', 'results.json', 'psnr_vs_scale.png', 'run.json', 'status.json'):
        assert (out / name).is_file(), name
    data = json.loads((out / 'results.json').read_text())
    keys = sorted((r['model'], tuple(r['scale'])) for r in data['records'])
    assert keys == sorted([('meta_x2', (2.0, 2.0)), ('meta_x2', (3.0, 2.0)), ('fixed_x2', (2.0, 2.0)),
                           ('bicubic', (2.0, 2.0)), ('bicubic', (3.0, 2.0))])
    # independent re-evaluation at x2: LR = imresize of the GT crop, 8-bit; bicubic_skip as trained
    from metasr_arch.inference.checkpoint import load_network
    from metasr_arch.inference.runner import run_network
    net = load_network(ckpt=str(out / 'experiments' / 'fixed_x2' / 'models' / 'net_g_latest.pth'))
    assert net.metasr_bicubic_skip
    val = sorted((tmp_path / 'datasets' / 'demo' / 'val').glob('*.png'))
    assert len(val) == 5
    model_psnr, bic_psnr = [], []
    for path in val:
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        gt = torch.from_numpy(rgb).permute(2, 0, 1)[None].double() / 255.
        h, w = gt.shape[-2] // 2, gt.shape[-1] // 2
        gt = gt[..., :2 * h, :2 * w]
        lq = (imresize_to(gt, (h, w)).clamp(0, 1) * 255).round() / 255
        model_psnr.append(_y_psnr(run_network(net, lq.float(), scale=2).double(), gt, 2))
        bic_psnr.append(_y_psnr(imresize_to(lq, (2 * h, 2 * w)), gt, 2))
    got = {(r['model'], tuple(r['scale'])): r['psnr'] for r in data['records']}
    assert got[('fixed_x2', (2.0, 2.0))] == pytest.approx(np.mean(model_psnr), abs=1e-3)
    assert got[('bicubic', (2.0, 2.0))] == pytest.approx(np.mean(bic_psnr), abs=1e-3)
    assert '| x2 |' in (out / 'results.md').read_text()
    # rerun: nothing is trained or evaluated again, same numbers
    run2 = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert run2.returncode == 0, run2.stderr[-3000:]
    assert run2.stdout.count('trained already') == 2 and run2.stdout.count('evaluated already') == 2
    assert json.loads((out / 'results.json').read_text())['records'] == data['records']
    # another budget in the same folder is refused instead of reusing these checkpoints
    run3 = subprocess.run(cmd[:3] + ['3'] + cmd[4:], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=env)
    assert run3.returncode == 2 and 'holds a run with iters = 2, not 3' in run3.stderr


# --------------------------------------------------------------------------- official weights (docs/results.md)
def test_official_weights_test_options_match_the_converter():
    """options/test/test_official_MetaRDN_x234.yml builds exactly the network the converter describes for a
    full-size official checkpoint, loads the converted weights strictly, and asks for x2, x3, x4."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('convert_official', os.path.join(REPO, 'scripts',
                                                                                   'convert_official_metardn.py'))
    conv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conv)
    g0, d, c, g = 64, 16, 8, 64  # the paper's Meta-RDN, as published
    mean = torch.tensor([0.4488, 0.4371, 0.4040], dtype=torch.float64)
    sd = {'sub_mean.weight': torch.eye(3).view(3, 3, 1, 1), 'sub_mean.bias': -255. * mean,
          'add_mean.weight': torch.eye(3).view(3, 3, 1, 1), 'add_mean.bias': 255. * mean,
          'SFENet1.weight': torch.zeros(g0, 3, 3, 3), 'SFENet1.bias': torch.zeros(g0),
          'SFENet2.weight': torch.zeros(g0, g0, 3, 3), 'SFENet2.bias': torch.zeros(g0),
          'GFF.0.weight': torch.zeros(g0, d * g0, 1, 1), 'GFF.0.bias': torch.zeros(g0),
          'GFF.1.weight': torch.zeros(g0, g0, 3, 3), 'GFF.1.bias': torch.zeros(g0),
          'P2W.meta_block.0.weight': torch.zeros(256, 3), 'P2W.meta_block.0.bias': torch.zeros(256),
          'P2W.meta_block.2.weight': torch.zeros(9 * g0 * 3, 256), 'P2W.meta_block.2.bias': torch.zeros(9 * g0 * 3)}
    for i in range(d):
        for j in range(c):
            sd[f'RDBs.{i}.convs.{j}.conv.0.weight'] = torch.zeros(g, g0 + j * g, 3, 3)
            sd[f'RDBs.{i}.convs.{j}.conv.0.bias'] = torch.zeros(g)
        sd[f'RDBs.{i}.LFF.weight'], sd[f'RDBs.{i}.LFF.bias'] = torch.zeros(g0, g0 + c * g, 1, 1), torch.zeros(g0)
    with open(os.path.join(REPO, 'options', 'test', 'test_official_MetaRDN_x234.yml')) as f:
        opt = yaml.safe_load(f)
    check_metasr_options(opt)
    net_opt = opt['network_g']
    expected = conv.official_config(sd)
    assert {k: v for k, v in net_opt.items() if k not in ('type', 'impl')} == \
        {k: list(v) if isinstance(v, tuple) else v for k, v in expected.items()}
    net = build_network(deepcopy(net_opt))
    net.load_state_dict(conv.convert_official_state_dict(sd), strict=True)
    assert opt.get('bicubic_skip', False) is False  # the official network predicts the image itself
    assert {ds['name'] for ds in opt['datasets'].values()} == {'Set14', 'B100', 'Urban100', 'Manga109'}
    assert all(ds['scales'] == [2, 3, 4] for ds in opt['datasets'].values())
    assert all(m['crop_border'] == 'auto' and m['test_y_channel'] for m in opt['val']['metrics'].values())
