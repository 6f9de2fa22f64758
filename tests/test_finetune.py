"""train.trunk_lr_scale and train.freeze_trunk_iters: parameter groups, a frozen trunk, --auto_resume."""
import metasr_arch  # noqa: F401  (before basicsr)

import pytest
import torch

from metasr_arch.models import finetune
from metasr_arch.models.metasr_model import MetaSRModel
from metasr_arch.utils.options import OptionError
from test_training import make_opt, run_train_cli, tiny_demo_opt

TRUNK = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'upscale': 2}
NET = {'type': 'MetaSR', 'trunk': TRUNK, 'head': {'hidden_channels': 16}}


def model_with(tmp_path, **train):
    opt = make_opt(tmp_path, **train)
    opt['network_g'] = dict(NET)
    return MetaSRModel(opt)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {'gt': torch.rand(2, 3, 60, 60, generator=g)}


def snapshot(net):
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def changed(before, net, prefix):
    now = dict(net.named_parameters())
    return [k for k in before if k.startswith(prefix) and not torch.equal(before[k], now[k])]


def test_trunk_lr_scale_makes_two_groups_that_schedulers_scale(tmp_path):
    model = model_with(tmp_path, trunk_lr_scale=0.1)
    groups = model.optimizer_g.param_groups
    assert [g['lr'] for g in groups] == pytest.approx([1e-3, 1e-4])
    head = {id(p) for p in model.net_g.upsample.parameters()}
    assert {id(p) for p in groups[0]['params']} == head
    assert {id(p) for p in groups[1]['params']} == {id(p) for p in model.net_g.trunk.parameters()}
    for _ in range(101):  # the MultiStepLR milestone at 100 halves both
        model.update_learning_rate(_ + 1)
    assert [g['lr'] for g in model.optimizer_g.param_groups] == pytest.approx([5e-4, 5e-5])


def test_without_the_option_basicsr_single_group(tmp_path):
    assert len(model_with(tmp_path).optimizer_g.param_groups) == 1


def test_freeze_keeps_the_trunk_then_releases_it(tmp_path):
    model = model_with(tmp_path, freeze_trunk_iters=2, trunk_lr_scale=1.0)
    net = model.net_g
    for it in (1, 2):
        before = snapshot(net)
        model.update_learning_rate(it)
        model.feed_data(batch(it))
        model.optimize_parameters(it)
        assert changed(before, net, 'trunk.') == []
        assert changed(before, net, 'upsample.')  # the head learns meanwhile
        assert not any(p.requires_grad for p in net.trunk.parameters())  # no backward through the trunk
    before = snapshot(net)
    model.update_learning_rate(3)
    model.feed_data(batch(3))
    model.optimize_parameters(3)
    assert changed(before, net, 'trunk.') and all(p.requires_grad for p in net.trunk.parameters())


def test_freeze_drops_gradients_even_when_they_exist(tmp_path):
    """Under DDP requires_grad stays on: the step pre-hook alone keeps the trunk (and Adam's state) unchanged."""
    model = model_with(tmp_path, freeze_trunk_iters=5)
    model.trunk_freeze.switch = False
    before = snapshot(model.net_g)
    model.update_learning_rate(1)
    model.feed_data(batch())
    model.optimize_parameters(1)
    assert changed(before, model.net_g, 'trunk.') == [] and changed(before, model.net_g, 'upsample.')
    assert not any(p in model.optimizer_g.state for p in model.net_g.trunk.parameters())


@pytest.mark.parametrize('train, match', [({'trunk_lr_scale': -1}, 'train.trunk_lr_scale'),
                                          ({'trunk_lr_scale': 'x'}, 'train.trunk_lr_scale'),
                                          ({'freeze_trunk_iters': 1.5}, 'train.freeze_trunk_iters')])
def test_bad_values_name_the_option(train, match):
    with pytest.raises(OptionError, match=match):
        finetune.parse_finetune(train)


@pytest.mark.slow
def test_auto_resume_keeps_group_rates_and_freeze(tmp_path):
    """Train 2 of 4 iterations (trunk frozen for 3), --auto_resume to 4: groups and freeze as if uninterrupted."""
    opt = tiny_demo_opt(tmp_path, 'ft', n_train=2)
    opt['network_g'] = dict(NET)
    opt['train'].update(lr_patch_size=8, total_iter=2, trunk_lr_scale=0.25, freeze_trunk_iters=3)
    opt['val'].update(val_freq=1000, scales=[2])
    opt['logger'].update(print_freq=1, save_checkpoint_freq=2)
    run_train_cli(tmp_path, opt)
    models = tmp_path / 'experiments' / 'ft' / 'models'
    first = torch.load(str(models / 'net_g_2.pth'), weights_only=True)['params']
    state = torch.load(str(tmp_path / 'experiments' / 'ft' / 'training_states' / '2.state'), weights_only=True)
    assert [g['lr'] for g in state['optimizers'][0]['param_groups']] == pytest.approx([5e-4, 1.25e-4])
    opt['train']['total_iter'] = 4
    opt['logger']['save_checkpoint_freq'] = 1
    run_train_cli(tmp_path, opt, '--auto_resume')
    third = torch.load(str(models / 'net_g_3.pth'), weights_only=True)['params']
    fourth = torch.load(str(models / 'net_g_4.pth'), weights_only=True)['params']
    trunk = [k for k in first if k.startswith('trunk.')]
    assert all(torch.equal(first[k], third[k]) for k in trunk)  # iteration 3 still frozen after resuming
    assert not all(torch.equal(third[k], fourth[k]) for k in trunk)  # iteration 4 trains it
    state = torch.load(str(tmp_path / 'experiments' / 'ft' / 'training_states' / '4.state'), weights_only=True)
    assert [g['lr'] for g in state['optimizers'][0]['param_groups']] == pytest.approx([5e-4, 1.25e-4])


def test_trunk_pretrained_not_read_when_the_whole_network_loads(tmp_path):
    """A resumed run or a test run (path.pretrain_network_g) and inference never read trunk_pretrained."""
    from basicsr.archs import build_network
    from metasr_arch.inference.checkpoint import load_network
    fixed = build_network(dict(TRUNK))
    torch.save({'params': fixed.state_dict()}, str(tmp_path / 'fixed.pth'))
    net_opt = dict(NET, trunk_pretrained={'path': str(tmp_path / 'fixed.pth')})
    net = build_network(dict(net_opt))
    torch.save({'params': net.state_dict(), 'network_opt': net_opt}, str(tmp_path / 'meta.pth'))
    (tmp_path / 'fixed.pth').unlink()  # the start file is gone
    loaded = load_network(ckpt=str(tmp_path / 'meta.pth'))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))
    opt = make_opt(tmp_path)
    opt['network_g'] = dict(net_opt)
    opt['path']['pretrain_network_g'] = str(tmp_path / 'meta.pth')
    model = MetaSRModel(opt)
    assert 'trunk_pretrained' not in model.opt['network_g']
    assert all(torch.equal(a, b) for a, b in zip(model.net_g.state_dict().values(), net.state_dict().values()))
