"""Hardening against hostile or careless input: nothing loaded runs code, no input is overwritten,
huge requests fail fast, option typos are named, stale temporaries go away, empty batches backprop."""
import os
import subprocess
import sys
import time
from pathlib import Path

import metasr_arch  # noqa: F401  (before basicsr: functional_tensor alias)

import cv2
import numpy as np
import pytest
import torch
import yaml
from torch import nn

from metasr_arch.archs import MetaUpsample
from metasr_arch.archs.metardn_arch import MetaRDN
from metasr_arch.utils.options import OptionError, check_network_options
from metasr_arch.infer import main as infer_main
from metasr_arch.ops import meta_upscale
from metasr_arch.utils import atomic
from metasr_arch.utils.memory import RequestTooLargeError, parse_bytes

REPO = Path(__file__).resolve().parents[1]
NET = {'type': 'MetaRDN', 'num_feat': 8, 'num_block': 1, 'num_layer': 1, 'num_grow_ch': 4, 'hidden_channels': 8}


class Payload:
    """Pickles to ``os.system('touch <marker>')``: loading it with full unpickling creates the marker."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def crafted(path: Path, marker: Path, **extra) -> Path:
    """A checkpoint-shaped dict whose one extra entry would run code if unpickled."""
    obj = {'params': {'w': torch.zeros(1)}, 'iter': 1, 'epoch': 0, 'optimizers': [], 'schedulers': []}
    obj.update(extra)
    obj['payload'] = Payload(marker)
    torch.save(obj, path)
    return path


def tiny_net(seed: int = 0) -> MetaRDN:
    torch.manual_seed(seed)
    opt = dict(NET)
    opt.pop('type')
    return MetaRDN(**opt).eval()


def image(path: Path, h: int = 8, w: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return path


@pytest.fixture()
def ckpt(tmp_path):
    path = tmp_path / 'net.pth'
    torch.save({'params': tiny_net().state_dict(), 'network_opt': dict(NET)}, path)
    return path


def infer(*args) -> int:
    return infer_main([str(a) for a in args] + ['--quiet', '--device', 'cpu'])


# --------------------------------------------------------------------------- 1. nothing loaded runs code
def _load_resume(path):
    from metasr_arch.utils.launch import patch_load_resume_state
    import basicsr.train
    patch_load_resume_state()
    return basicsr.train.load_resume_state({'auto_resume': False, 'path': {'resume_state': str(path)}})


def _basicsr_load_network(path):
    """BasicSR's own ``BaseModel.load_network`` (SRModel & co.), inside the plugin's pipeline runner."""
    from basicsr.models.base_model import BaseModel
    from metasr_arch.utils.launch import run_pipeline
    run_pipeline(lambda root: BaseModel.load_network(object.__new__(BaseModel), nn.Linear(1, 1), str(path)))


def _model_load_network(path):
    from metasr_arch.models.metasr_model import MetaSRModel
    model = object.__new__(MetaSRModel)
    MetaSRModel.load_network(model, tiny_net(), str(path))


def _infer_load(path):
    from metasr_arch.inference.checkpoint import load_network
    load_network(None, str(path))


def _converter(path):
    sys.path.insert(0, str(REPO / 'scripts'))
    try:
        import convert_official_metardn
    finally:
        sys.path.pop(0)
    if convert_official_metardn.main(['--input', str(path), '--output', str(path) + '.out']) == 2:
        raise ValueError('converter refused the file')


def _vgg(path):
    from metasr_arch.losses.perceptual_loss import _load_state_dict
    _load_state_dict(str(path))


@pytest.mark.parametrize('loader', [_load_resume, _basicsr_load_network, _model_load_network, _infer_load,
                                    _converter, _vgg])
def test_crafted_pickle_is_refused_everywhere(tmp_path, monkeypatch, loader):
    """Every project path that loads a file refuses a pickle that would run code, even when
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 makes torch's default full unpickling."""
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    marker = tmp_path / 'marker'
    path = crafted(tmp_path / 'evil.state', marker)
    with pytest.raises((Exception, SystemExit)) as info:  # the pipeline runner ends with one line, exit 1
        loader(path)
    assert not marker.exists(), f'{loader.__name__} executed pickled code'
    assert not isinstance(info.value, SystemExit) or info.value.code == 1
    assert not isinstance(info.value, (KeyError, AttributeError, NameError, ImportError)), info.value


def test_resume_refusal_is_a_whole_run_error(tmp_path):
    with pytest.raises(OptionError, match='resume state .*evil.state: refused'):
        _load_resume(crafted(tmp_path / 'evil.state', tmp_path / 'marker'))


def test_real_training_state_resumes_with_weights_only(tmp_path):
    """A state written by MetaSRModel (Adam state, MultiStepRestartLR with its Counter) loads weights-only."""
    sys.path.insert(0, str(REPO / 'tests'))
    from test_training import make_opt
    from metasr_arch.models.metasr_model import MetaSRModel
    model = MetaSRModel(make_opt(tmp_path))
    model.feed_data({'gt': torch.rand(1, 3, 60, 60)})
    model.optimize_parameters(1)
    model.save_training_state(0, 3)
    state = _load_resume(tmp_path / 'exp' / 'training_states' / '3.state')
    assert state['iter'] == 3 and state['epoch'] == 0
    assert state['schedulers'][0]['milestones'] == model.schedulers[0].state_dict()['milestones']
    assert torch.equal(state['optimizers'][0]['state'][0]['exp_avg'],
                       model.optimizers[0].state_dict()['state'][0]['exp_avg'])


def train_yaml(tmp_path, **changes) -> Path:
    opt = {'name': 'hard', 'model_type': 'MetaSRModel', 'num_gpu': 0, 'manual_seed': 1,
           'network_g': dict(NET), 'path': {},
           'datasets': {'train': {'name': 't', 'type': 'MetaSRGTDataset', 'dataroot_gt': str(tmp_path)}},
           'train': {'scale_sampler': {'type': 'uniform', 'v': [1.5, 2.0], 'step': 0.5}, 'lr_patch_size': 8,
                     'total_iter': 1, 'optim_g': {'type': 'Adam', 'lr': 1e-3},
                     'scheduler': {'type': 'MultiStepLR', 'milestones': [10], 'gamma': 0.5},
                     'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
           'logger': {'print_freq': 1, 'save_checkpoint_freq': 1}}
    for key, value in changes.items():
        opt[key] = value
    path = tmp_path / 'o.yml'
    path.write_text(yaml.safe_dump(opt))
    return path


def test_train_entry_refuses_crafted_resume_state_exit_2(tmp_path, monkeypatch, capsys):
    from metasr_arch.train import main as train_main
    monkeypatch.setenv('METASR_ROOT', str(tmp_path))
    marker = tmp_path / 'marker'
    evil = crafted(tmp_path / 'evil.state', marker)
    yml = train_yaml(tmp_path, path={'resume_state': str(evil)})
    with pytest.raises(SystemExit) as info:
        train_main(['-opt', str(yml)])
    assert info.value.code == 2 and not marker.exists()
    assert 'evil.state: refused' in capsys.readouterr().err


# --------------------------------------------------------------------------- 2. inputs never overwritten
def test_output_named_like_another_input_is_refused(tmp_path, ckpt, capsys):
    """The issue's case: a.png's output a_X2.00.png would overwrite the input a_X2.00.png."""
    a = image(tmp_path / 'a.png', seed=1)
    b = image(tmp_path / 'a_X2.00.png', seed=2)
    before = b.read_bytes()
    assert infer(a, b, '--ckpt', ckpt, '--scale', '2', '-o', tmp_path) == 1
    err = capsys.readouterr().err
    assert b.read_bytes() == before
    assert 'a.png [X2.00]' in err and 'is an input of this run' in err
    # the other input was upscaled from its own pixels
    out = cv2.imread(str(tmp_path / 'a_X2.00_X2.00.png'))
    x = torch.from_numpy(cv2.imread(str(b))[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        ref = tiny_net()(x, scale=2)[0].clamp(0, 1).permute(1, 2, 0).numpy()[..., ::-1]
    assert np.abs(out.astype(np.float64) - np.rint(ref * 255)).max() <= 1


def test_rerun_into_input_folder_skips_earlier_outputs_and_keeps_them(tmp_path, ckpt, capsys):
    image(tmp_path / 'a.png')
    assert infer(tmp_path, '--ckpt', ckpt, '--scale', '2', '-o', tmp_path) == 0
    first = (tmp_path / 'a_X2.00.png').read_bytes()
    capsys.readouterr()
    assert infer(tmp_path, '--ckpt', ckpt, '--scale', '2', '-o', tmp_path) == 1
    err = capsys.readouterr().err
    assert 'skipped 1 file(s) named like outputs of an earlier run' in err and 'a_X2.00.png' in err
    assert 'exists; pass --overwrite' in err
    assert sorted(p.name for p in tmp_path.glob('*.png')) == ['a.png', 'a_X2.00.png']
    assert (tmp_path / 'a_X2.00.png').read_bytes() == first
    os.utime(tmp_path / 'a_X2.00.png', (0, 0))
    assert infer(tmp_path, '--ckpt', ckpt, '--scale', '2', '-o', tmp_path, '--overwrite') == 0
    assert (tmp_path / 'a_X2.00.png').stat().st_mtime > 0  # rewritten
    assert sorted(p.name for p in tmp_path.glob('*.png')) == ['a.png', 'a_X2.00.png']


def test_two_inputs_with_one_output_name(tmp_path, ckpt, capsys):
    image(tmp_path / 'a.png', seed=1)
    np.save(tmp_path / 'b.npy', np.zeros((3, 8, 8), np.float32))
    image(tmp_path / 'a.jpg', seed=2)
    assert infer(tmp_path / 'a.jpg', tmp_path / 'a.png', '--ckpt', ckpt, '--scale', '2', '-o', tmp_path / 'o') == 1
    assert 'already written by' in capsys.readouterr().err
    assert [p.name for p in (tmp_path / 'o').iterdir()] == ['a_X2.00.png']


def test_output_option_naming_a_file_exits_2_with_a_message(tmp_path, ckpt, capsys):
    image(tmp_path / 'a.png')
    (tmp_path / 'taken').write_text('x')
    with pytest.raises(SystemExit) as info:
        infer(tmp_path / 'a.png', '--ckpt', ckpt, '--scale', '2', '-o', tmp_path / 'taken')
    err = capsys.readouterr().err
    assert info.value.code == 2 and 'exists and is not a folder' in err and 'Traceback' not in err


# --------------------------------------------------------------------------- 3. huge requests
@pytest.mark.parametrize('request_args', [['--size', '100000x100000'], ['--scale', '1e6']])
def test_huge_request_fails_fast_with_estimate_and_limit(tmp_path, ckpt, capsys, request_args):
    image(tmp_path / 'a.png', 16, 16)
    start = time.perf_counter()
    assert infer(tmp_path / 'a.png', '--ckpt', ckpt, *request_args, '-o', tmp_path / 'o') == 1
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err
    assert 'needs at least' in err and 'more than the limit of' in err and 'METASR_MEMORY_LIMIT' in err
    assert not list((tmp_path / 'o').iterdir())


def test_module_api_refuses_beyond_the_configurable_limit(monkeypatch):
    net = tiny_net()
    x = torch.rand(1, 3, 16, 16)
    start = time.perf_counter()
    with pytest.raises(RequestTooLargeError, match=r'100000x100000 .* needs at least'):
        net(x, out_size=(100000, 100000))
    with pytest.raises(RequestTooLargeError):
        net(x, scale=1e6)
    assert time.perf_counter() - start < 2
    # 3x32x32 output twice + 8*9 unfolded 16x16 features, float32: 4 * (2*3*1024 + 72*256) = 98304 bytes
    monkeypatch.setenv('METASR_MEMORY_LIMIT', '98303')
    with pytest.raises(RequestTooLargeError, match='METASR_MEMORY_LIMIT=98303'):
        net(x, scale=2)
    monkeypatch.setenv('METASR_MEMORY_LIMIT', '98304')
    assert net(x, scale=2).shape == (1, 3, 32, 32)
    assert parse_bytes('1.5GiB') == 3 * 2**29 and parse_bytes('8G') == 8 * 10**9


def test_head_alone_refuses_beyond_the_limit(monkeypatch):
    head = MetaUpsample(8, 3)
    x = torch.rand(1, 8, 16, 16)
    start = time.perf_counter()
    with pytest.raises(RequestTooLargeError, match=r'MetaUpsample .* 100000x100000 .* needs at least'):
        head(x, out_size=(100000, 100000))
    assert time.perf_counter() - start < 2
    # the head alone: one 3x32x32 output + 8*9 unfolded 16x16 features, float32: 4 * (3*1024 + 72*256) = 86016
    monkeypatch.setenv('METASR_MEMORY_LIMIT', '86015')
    with pytest.raises(RequestTooLargeError, match='METASR_MEMORY_LIMIT=86015'):
        head(x, scale=2)
    monkeypatch.setenv('METASR_MEMORY_LIMIT', '86016')
    assert head(x, scale=2).shape == (1, 3, 32, 32)


def test_max_pixels_option(tmp_path, ckpt, capsys):
    image(tmp_path / 'a.png', 8, 8)
    assert infer(tmp_path / 'a.png', '--ckpt', ckpt, '--scale', '2', '3', '--max-pixels', '256',
                 '-o', tmp_path / 'o') == 1
    assert 'has 576 pixels, more than --max-pixels 256' in capsys.readouterr().err
    assert [p.name for p in (tmp_path / 'o').iterdir()] == ['a_X2.00.png']


# --------------------------------------------------------------------------- 4. unknown option keys
def test_unknown_network_key_names_section_key_and_closest():
    with pytest.raises(OptionError, match=r"network_g: unknown option 'num_feats' for MetaRDN; did you mean "
                                          r"'num_feat'\?"):
        check_network_options(dict(NET, num_feats=8), 'network_g')
    with pytest.raises(OptionError, match=r"network_d.type: 'MetaRDNN' .*did you mean 'MetaRDN'"):
        check_network_options({'type': 'MetaRDNN'}, 'network_d')


def test_infer_unknown_key_in_checkpoint_or_yaml_exits_2(tmp_path, capsys):
    image(tmp_path / 'a.png')
    bad = tmp_path / 'bad.pth'
    torch.save({'params': tiny_net().state_dict(), 'network_opt': dict(NET, num_feats=8)}, bad)
    assert infer(tmp_path / 'a.png', '--ckpt', bad, '--scale', '2') == 2
    err = capsys.readouterr().err
    assert "network_opt recorded in --ckpt" in err and "'num_feats'" in err and "did you mean 'num_feat'" in err
    yml = tmp_path / 'o.yml'
    yml.write_text(yaml.safe_dump({'network_g': dict(NET, hidden_channel=8)}))
    assert infer(tmp_path / 'a.png', '--ckpt', bad, '--opt', yml, '--scale', '2') == 2
    assert "o.yml network_g: unknown option 'hidden_channel'" in capsys.readouterr().err


@pytest.mark.parametrize('entry', ['train', 'test'])
def test_train_and_test_entry_points_exit_2_on_unknown_key(tmp_path, monkeypatch, capsys, entry):
    import importlib
    monkeypatch.setenv('METASR_ROOT', str(tmp_path))
    yml = train_yaml(tmp_path, network_g=dict(NET, num_feats=8))
    if entry == 'test':
        opt = yaml.safe_load(yml.read_text())
        opt['datasets'] = {'test_1': opt['datasets']['train']}
        yml.write_text(yaml.safe_dump(opt))
    with pytest.raises(SystemExit) as info:
        importlib.import_module(f'metasr_arch.{entry}').main(['-opt', str(yml)])
    assert info.value.code == 2
    assert "network_g: unknown option 'num_feats' for MetaRDN; did you mean 'num_feat'?" in capsys.readouterr().err
    assert not (tmp_path / ('experiments' if entry == 'train' else 'results')).exists()


# --------------------------------------------------------------------------- 5. stale temporaries
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, '-c', 'pass'])
    proc.wait()
    return proc.pid


def test_stale_temporaries_removed_on_next_write(tmp_path):
    dead, live = _dead_pid(), os.getppid()
    stale = tmp_path / f'.a.png.{dead}.tmp'
    other_target = tmp_path / f'.b.pth.{dead}.tmp'
    running = tmp_path / f'.a.png.{live}.tmp'
    foreign = tmp_path / '.notes.tmp'
    for p in (stale, other_target, running, foreign):
        p.write_bytes(b'partial')
    atomic.atomic_write_bytes(tmp_path / 'a.png', b'done')
    assert (tmp_path / 'a.png').read_bytes() == b'done'
    assert not stale.exists() and not other_target.exists()
    assert running.exists() and foreign.exists()


def test_checkpoint_save_and_infer_sweep_their_folders(tmp_path, ckpt):
    sys.path.insert(0, str(REPO / 'tests'))
    from test_training import make_opt
    from metasr_arch.models.metasr_model import MetaSRModel
    dead = _dead_pid()
    model = MetaSRModel(make_opt(tmp_path))
    stale_ckpt = tmp_path / 'exp' / 'models' / f'.net_g_1.pth.{dead}.tmp'
    stale_ckpt.write_bytes(b'half a checkpoint')
    model.save(0, 1)
    assert not stale_ckpt.exists() and (tmp_path / 'exp' / 'models' / 'net_g_1.pth').is_file()
    out = tmp_path / 'o'
    out.mkdir()
    stale_png = out / f'.a_X2.00.png.{dead}.tmp'
    stale_png.write_bytes(b'half a png')
    image(tmp_path / 'a.png')
    assert infer(tmp_path / 'a.png', '--ckpt', ckpt, '--scale', '2', '-o', out) == 0
    assert not stale_png.exists()


# --------------------------------------------------------------------------- 7. empty batches
def test_empty_batch_backward_gives_zero_gradients():
    head = MetaUpsample(4, 3, hidden_channels=8)
    x = torch.zeros(0, 4, 5, 5, requires_grad=True)
    out = head(x, scale=2.5)
    assert out.shape == (0, 3, 12, 12) and out.grad_fn is not None
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p)), name

    w = torch.randn(12 * 12, 9 * 4 * 3, requires_grad=True)
    y = meta_upscale(torch.zeros(0, 4, 5, 5, requires_grad=True), w, scale=2.5)
    assert y.shape == (0, 3, 12, 12)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))


def test_cuda_limit_is_free_plus_unused_reserved(monkeypatch):
    """The CUDA branch (no GPU here): free device memory plus what torch's allocator reserved but does not use."""
    from metasr_arch.utils import memory
    monkeypatch.delenv('METASR_MEMORY_LIMIT', raising=False)
    monkeypatch.setattr(torch.cuda, 'mem_get_info', lambda device=None: (10 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, 'memory_reserved', lambda device=None: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, 'memory_allocated', lambda device=None: 2 * 2**30)
    assert memory.memory_limit('cuda:0') == (11 * 2**30, 'free memory of cuda:0')
    with pytest.raises(RequestTooLargeError, match=r'limit of 11 GiB \(free memory of cuda:0\)'):
        memory.check_request(1, 64, 3, 100, 100, 40000, 40000, device='cuda:0')



def test_small_requests_do_not_query_the_machine(monkeypatch):
    """Every training forward runs the check: below the floor it asks neither the driver nor the OS."""
    from metasr_arch.utils import memory
    monkeypatch.delenv('METASR_MEMORY_LIMIT', raising=False)

    def no_query(device='cpu'):
        raise AssertionError('memory_limit queried for a small request')
    monkeypatch.setattr(memory, 'memory_limit', no_query)
    small = memory.check_request(16, 64, 3, 48, 48, 192, 192, device='cuda:0')  # a training batch: ~24 MiB
    assert small == memory.head_bytes(16, 64, 3, 48, 48, 192, 192, 3) < memory.QUERY_FLOOR_BYTES
    with pytest.raises(AssertionError, match='queried'):  # above the floor the limit is asked for
        memory.check_request(1, 64, 3, 100, 100, 40000, 40000, device='cuda:0')
