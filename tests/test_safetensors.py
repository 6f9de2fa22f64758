"""safetensors network checkpoints: format, MetaSRModel saving/loading, inference, pretrain_network_g, converter."""
import os
import subprocess
import sys

import pytest
import torch
import yaml

from metasr_arch.models.metasr_model import MetaSRModel
from metasr_arch.utils.checkpoint import load_checkpoint
from metasr_arch.inference.checkpoint import load_network
from metasr_arch.utils.safetensors_ckpt import (checkpoint_to_bytes, is_safetensors_file, load_safetensors_checkpoint,
                                                read_network_checkpoint, save_safetensors_checkpoint)
from test_training import NET, REPO, make_opt, tiny_demo_opt

ENV = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))


def states_equal(a, b):
    return set(a) == set(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def sample_checkpoint():
    torch.manual_seed(0)
    return {'params': {'a.weight': torch.randn(3, 4), 'b.bias': torch.arange(5, dtype=torch.int64)},
            'params_ema': {'a.weight': torch.randn(3, 4), 'b.bias': torch.arange(5, dtype=torch.int64) * 2},
            'network_opt': {'type': 'MetaRDN', 'num_feat': 8, 'rgb_mean': [0.0, 0.5, 1.0]}, 'bicubic_skip': True}


def test_round_trip_and_magic_bytes(tmp_path):
    ckpt = sample_checkpoint()
    path = tmp_path / 'w.bin'  # no suffix: recognised by content
    save_safetensors_checkpoint(ckpt, path)
    assert is_safetensors_file(path)
    back = load_checkpoint(str(path))
    assert set(back) == set(ckpt)
    for key in ('params', 'params_ema'):
        assert states_equal(back[key], ckpt[key])
    assert back['network_opt'] == ckpt['network_opt'] and back['bicubic_skip'] is True
    # one param key: plain tensor names, so other tools read it as a state dict
    save_safetensors_checkpoint({'params': ckpt['params']}, tmp_path / 'one.safetensors')
    from safetensors.torch import load_file
    assert states_equal(load_file(str(tmp_path / 'one.safetensors')), ckpt['params'])
    # a .pth (zip) and other files are not mistaken for safetensors
    torch.save(ckpt, tmp_path / 'w.pth')
    (tmp_path / 'junk').write_bytes(b'{"not": "a checkpoint"}')
    assert not is_safetensors_file(tmp_path / 'w.pth') and not is_safetensors_file(tmp_path / 'junk')
    assert not is_safetensors_file(tmp_path / 'missing')


def test_foreign_state_dict_and_bad_files(tmp_path):
    from safetensors.torch import save_file
    state = {'x': torch.ones(2)}
    save_file(state, str(tmp_path / 'foreign.safetensors'), metadata={'format': 'pt'})
    assert states_equal(load_safetensors_checkpoint(tmp_path / 'foreign.safetensors'), state)
    broken = tmp_path / 'broken.safetensors'
    broken.write_bytes(checkpoint_to_bytes(sample_checkpoint())[:-7])  # truncated
    with pytest.raises(ValueError, match='--ckpt .*broken.safetensors: not a readable safetensors'):
        load_checkpoint(str(broken))
    with pytest.raises(ValueError, match="entry 'when'.*not JSON-serialisable"):
        checkpoint_to_bytes({'params': state, 'when': object()})


def test_model_saves_and_loads_safetensors(tmp_path):
    opt = make_opt(tmp_path)
    opt['logger'] = {'save_checkpoint_format': 'safetensors'}
    model = MetaSRModel(opt)
    model.save(0, 1)
    models = tmp_path / 'exp' / 'models'
    assert sorted(os.listdir(models)) == ['net_g_1.safetensors']
    assert torch.load(tmp_path / 'exp' / 'training_states' / '1.state', weights_only=True)['iter'] == 1
    ckpt = load_checkpoint(str(models / 'net_g_1.safetensors'))
    assert ckpt['network_opt'] == NET and ckpt['bicubic_skip'] is False
    assert states_equal(ckpt['params'], model.net_g.state_dict())
    # BasicSR's resume names net_g_<iter>.pth: the .safetensors beside it is read
    assert states_equal(read_network_checkpoint(models / 'net_g_1.pth')['params'], model.net_g.state_dict())
    other = MetaSRModel(make_opt(tmp_path / 'b'))
    other.load_network(other.net_g, str(models / 'net_g_1.pth'))
    assert states_equal(other.net_g.state_dict(), model.net_g.state_dict())


def test_bad_checkpoint_format_option(tmp_path):
    opt = make_opt(tmp_path)
    opt['logger'] = {'save_checkpoint_format': 'safetensor'}
    with pytest.raises(ValueError, match='logger.save_checkpoint_format'):
        MetaSRModel(opt)


@pytest.mark.slow
def test_train_with_safetensors_then_infer_and_pretrain(tmp_path):
    """Two training iterations writing .safetensors; the checkpoint drives inference and pretrain_network_g."""
    opt = tiny_demo_opt(tmp_path, 'st')
    opt['train'].update(lr_patch_size=8, total_iter=2)
    opt['val'].update(val_freq=100)
    opt['logger'].update(print_freq=1, save_checkpoint_freq=2, save_checkpoint_format='safetensors')
    (tmp_path / 'train.yml').write_text(yaml.safe_dump(opt))
    run = subprocess.run([sys.executable, '-m', 'metasr_arch.train', '-opt', str(tmp_path / 'train.yml')],
                         env=dict(ENV, METASR_ROOT=str(tmp_path)), cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    models = tmp_path / 'experiments' / 'st' / 'models'
    assert sorted(os.listdir(models)) == ['net_g_2.safetensors', 'net_g_latest.safetensors']
    path = str(models / 'net_g_latest.safetensors')
    net = load_network(ckpt=path)
    assert net.metasr_bicubic_skip is True  # the demo's bicubic_skip travels in the metadata
    weights = load_safetensors_checkpoint(path)['params']
    assert states_equal(net.state_dict(), weights)
    # pretrain_network_g: a fresh model starts from those weights
    opt2 = make_opt(tmp_path / 'again')
    opt2['network_g'] = dict(opt['network_g'])
    opt2['path']['pretrain_network_g'] = path
    model = MetaSRModel(opt2)
    assert states_equal(model.net_g.state_dict(), weights)
    x = torch.rand(1, 3, 9, 7)
    with torch.no_grad():
        assert torch.equal(model.net_g.eval()(x, scale=2.5), net(x, scale=2.5))


def load_converter():
    import importlib.util
    spec = importlib.util.spec_from_file_location('convert_checkpoint', os.path.join(REPO, 'scripts',
                                                                                     'convert_checkpoint.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_converter_round_trip(tmp_path, capsys):
    ckpt = sample_checkpoint()
    torch.save(ckpt, tmp_path / 'in.pth')
    script = os.path.join(REPO, 'scripts', 'convert_checkpoint.py')
    run = subprocess.run([sys.executable, script, str(tmp_path / 'in.pth'), str(tmp_path / 'mid.safetensors')],
                         env=ENV, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert is_safetensors_file(tmp_path / 'mid.safetensors')
    converter = load_converter()
    assert converter.main([str(tmp_path / 'mid.safetensors'), str(tmp_path / 'out.pth')]) == 0
    back = torch.load(tmp_path / 'out.pth', weights_only=True)
    assert set(back) == set(ckpt) and back['network_opt'] == ckpt['network_opt'] and back['bicubic_skip'] is True
    for key in ('params', 'params_ema'):
        assert states_equal(back[key], ckpt[key])
    # a pickle that would run code is refused; the input is never the output
    torch.save({'params': {'w': torch.ones(1)}, 'hook': os.getcwd}, tmp_path / 'evil.pth')
    assert converter.main([str(tmp_path / 'evil.pth'), str(tmp_path / 'evil.safetensors')]) == 2
    assert 'INPUT' in capsys.readouterr().err and not (tmp_path / 'evil.safetensors').exists()
    assert converter.main([str(tmp_path / 'in.pth'), str(tmp_path / 'in.pth')]) == 2
    assert 'is the input file' in capsys.readouterr().err
