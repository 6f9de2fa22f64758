"""Two CPU processes (gloo): every rank draws the same scale per iteration and ends with identical weights."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from test_training import make_opt


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, tmp: str, out: str) -> None:
    import pathlib
    import metasr_arch  # noqa: F401
    from metasr_arch.models.metasr_model import MetaSRModel
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    torch.manual_seed(rank)  # different data on each rank, as with a DistributedSampler
    opt = make_opt(pathlib.Path(tmp))
    opt.update(dist=True, rank=rank, world_size=world)
    torch.manual_seed(0)  # same initial weights (DDP also broadcasts them)
    model = MetaSRModel(opt)
    gen = torch.Generator().manual_seed(100 + rank)
    scales = []
    for it in range(1, 4):
        model.update_learning_rate(it)
        model.feed_data({'gt': torch.rand(2, 3, 60, 60, generator=gen)})
        scales.append(model.current_scale())
        model.optimize_parameters(it)
    params = {k: v.detach().clone() for k, v in model.get_bare_model(model.net_g).state_dict().items()}
    torch.save({'scales': scales, 'params': params}, os.path.join(out, f'rank{rank}.pt'))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_same_scales_and_parameters(tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), str(out)), nprocs=2, join=True)
    r0, r1 = (torch.load(out / f'rank{r}.pt', weights_only=True) for r in (0, 1))
    assert r0['scales'] == r1['scales']
    assert len(set(r0['scales'])) > 1 or r0['scales'][0] != (1.0, 1.0)
    for k in r0['params']:
        assert torch.allclose(r0['params'][k], r1['params'][k], atol=1e-6), k
    from metasr_arch.utils.scale_sampler import build_scale_sampler
    sampler = build_scale_sampler(make_opt(tmp_path)['train']['scale_sampler'], seed=5)
    assert [tuple(s) for s in r0['scales']] == [sampler(t) for t in range(1, 4)]


@pytest.mark.slow
def test_readme_torchrun_command_trains_on_cpu(tmp_path):
    """The README's command, ``torchrun --nproc_per_node=2 -m metasr_arch.train -opt X --launcher
    pytorch``, on tiny demo options: two CPU ranks (gloo), one experiment folder, both ranks finish."""
    import json
    import subprocess
    import sys

    import yaml
    from test_training import tiny_demo_opt
    opt = tiny_demo_opt(tmp_path, 'dist_cli')
    opt['train'].update(lr_patch_size=8, total_iter=2)
    opt['val'].update(val_freq=2, scales=[2, [1.5, 3]])
    opt['logger'].update(print_freq=1, save_checkpoint_freq=2)
    opt['dist_params'] = {'backend': 'nccl', 'port': _free_port()}  # as in the demo file: gloo replaces it
    (tmp_path / 'o.yml').write_text(yaml.safe_dump(opt))
    env = dict(os.environ, METASR_ROOT=str(tmp_path), OMP_NUM_THREADS='1')
    run = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
                          f'--master_port={_free_port()}', '-m', 'metasr_arch.train', '-opt', str(tmp_path / 'o.yml'),
                          '--launcher', 'pytorch'], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    exp = tmp_path / 'experiments' / 'dist_cli'
    assert (exp / 'models' / 'net_g_latest.pth').is_file()
    log = next(exp.glob('train_dist_cli_*.log')).read_text()
    assert 'world_size: 2' in log
    recs = [json.loads(s) for s in (exp / 'metrics.jsonl').read_text().splitlines()]
    assert len(recs) == 2 and {r['iter'] for r in recs} == {2}  # rank 0 writes, once per scale
