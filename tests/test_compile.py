"""train.compile: the trunk compiled once whatever the per-batch scale; compiled training equals eager training."""
import json
import math

import metasr_arch  # noqa: F401  (before basicsr)

import pytest
import torch

from metasr_arch.models.metasr_model import MetaSRModel
from test_amp import train
from test_tools import load_script
from test_training import make_opt, run_train_cli, tiny_demo_opt

PAPER_SAMPLER = {'type': 'uniform', 'v': [1.1, 4.0], 'step': 0.1, 'p_symmetric': 0.5}


@pytest.fixture()
def fresh_dynamo():
    import torch._dynamo
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_trunk_scope_compiles_one_graph_for_100_random_scales(fresh_dynamo):
    """100 iterations of the 1.1..4.0 sampler (symmetric and asymmetric): one graph, compiled in the
    first iteration; no recompile for any new scale (the trunk's input is the fixed LR patch)."""
    counter = load_script('count_recompiles.py')
    res = counter.count('trunk', 'eager', 100, PAPER_SAMPLER, counter.TINY, batch=2, patch=12, log_every=1000)
    assert res['distinct_scales'] > 30
    assert (res['first'], res['total']) == (1, 1), res


@pytest.mark.parametrize('scope', ['trunk', pytest.param('net', marks=pytest.mark.slow)])  # net: ~20 s
def test_compiled_training_equals_eager_training(tmp_path, fresh_dynamo, scope):
    """MetaSRModel with train.compile (dynamo's 'eager' backend: the captured graphs, run as they are)
    trains to the same weights as without; validation (no grad) runs the eager trunk."""
    weights, keys = {}, {}
    for name, compile_opt in (('eager', False), ('compiled', {'scope': scope, 'backend': 'eager'})):
        torch.manual_seed(0)
        model = MetaSRModel(make_opt(tmp_path / name, compile=compile_opt))
        train(model, [1, 2, 3])
        weights[name] = [p.detach().clone() for p in model.net_g.parameters()]
        model.save(0, 3)  # checkpoints keep the plain network's keys (no compile wrapper prefix)
        keys[name] = set(torch.load(tmp_path / name / 'exp' / 'models' / 'net_g_3.pth', weights_only=True)['params'])
    assert keys['eager'] == keys['compiled']
    for a, b in zip(weights['eager'], weights['compiled']):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    if scope == 'trunk':
        from torch._dynamo.utils import counters
        graphs = counters['stats']['unique_graphs']
        model.feed_data({'lq': torch.rand(1, 3, 9, 7), 'gt': torch.rand(1, 3, 18, 14), 'scale': 2})
        model.test()  # a new LR size under no_grad: eager, nothing compiled
        assert counters['stats']['unique_graphs'] == graphs


@pytest.mark.slow
def test_compile_amp_channels_last_run_the_demo_options(tmp_path):
    """``python -m metasr_arch.train`` with ``compile: true`` (inductor), ``amp: bf16`` and
    ``channels_last: true`` on the (shrunk) demo options: trains, validates and saves."""
    opt = tiny_demo_opt(tmp_path, 'fast', n_train=2)
    opt['train'].update(lr_patch_size=8, total_iter=3, compile=True, amp='bf16', channels_last=True)
    opt['val'].update(val_freq=3, scales=[2, [1.5, 3]], amp='bf16')
    opt['logger'].update(print_freq=1, save_checkpoint_freq=3)
    run = run_train_cli(tmp_path, opt, timeout=900)
    exp = tmp_path / 'experiments' / 'fast'
    log = next(exp.glob('train_fast_*.log')).read_text()
    assert 'recompile_limit' not in run.stderr and 'non-finite' not in log
    assert log.count('l_pix: ') == 3
    recs = [json.loads(s) for s in (exp / 'metrics.jsonl').read_text().splitlines()]
    assert len(recs) == 2 and all(math.isfinite(r['psnr']) for r in recs)
    ckpt = torch.load(exp / 'models' / 'net_g_latest.pth', weights_only=True)
    assert all(v.dtype == torch.float32 for v in ckpt['params'].values())
