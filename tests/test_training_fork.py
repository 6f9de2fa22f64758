"""A copy of the installed basicsr stands in for a fork: after the install script, its own train.py
and test.py run this project's options files."""
import os
import shutil
import subprocess
import sys

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'scripts'))
import install_into_basicsr_fork as installer  # noqa: E402

from test_training import NET, write_images  # noqa: E402


@pytest.mark.slow
def test_fork_runs_plugin_yaml(tmp_path):
    import basicsr
    fork = tmp_path / 'fork'
    shutil.copytree(os.path.dirname(basicsr.__file__), fork / 'basicsr',
                    ignore=shutil.ignore_patterns('__pycache__', '*.so'))
    assert len(installer.install(str(fork / 'basicsr'))) == 2
    assert installer.install(str(fork / 'basicsr')) == []  # idempotent
    write_images(tmp_path / 'data' / 'train', 2, 40, 40)
    write_images(tmp_path / 'data' / 'val', 1, 24, 24)
    with open(os.path.join(REPO, 'options', 'train', 'demo_MetaRDN.yml')) as f:
        opt = yaml.safe_load(f)
    opt['name'] = 'fork_run'
    opt['network_g'].update(NET)
    opt['datasets']['train'].update(dataroot_gt=str(tmp_path / 'data' / 'train'), materialize=None, gt_size=24,
                                    num_worker_per_gpu=0, batch_size_per_gpu=2, dataset_enlarge_ratio=1)
    opt['datasets']['val'].update(dataroot_gt=str(tmp_path / 'data' / 'val'), materialize=None)
    opt['train'].update(lr_patch_size=8, total_iter=2)
    opt['val'].update(val_freq=2, scales=[2, [1.5, 3]])
    opt['logger'].update(print_freq=1, save_checkpoint_freq=2)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fork), REPO]))  # the fork's basicsr, this checkout's plugin
    # the fork's own train.py checks the whole options file: a network_g typo is named, nothing is created
    (tmp_path / 'o.yml').write_text(yaml.safe_dump(dict(opt, network_g=dict(opt['network_g'], num_feats=8))))
    run = subprocess.run([sys.executable, 'basicsr/train.py', '-opt', str(tmp_path / 'o.yml')], cwd=fork, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-3000:]
    assert "error: network_g: unknown option 'num_feats' for MetaRDN; did you mean 'num_feat'?" in run.stderr
    assert 'Traceback' not in run.stderr and not (fork / 'experiments').exists()
    (tmp_path / 'o.yml').write_text(yaml.safe_dump(opt))
    run = subprocess.run([sys.executable, 'basicsr/train.py', '-opt', str(tmp_path / 'o.yml')], cwd=fork, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    exp = fork / 'experiments' / 'fork_run'  # the fork's root: the folder above its package
    # val_freq = total_iter: BasicSR's final validation repeats the one at iter 2 and is skipped
    assert (exp / 'metrics.jsonl').read_text().count('\n') == 2  # 1 validation x 2 scales
    # the fork's scripts import the fork's own copy of BasicSR, not the installed one
    where = subprocess.run([sys.executable, '-c', 'import metasr_arch, basicsr; print(basicsr.__file__)'], cwd=fork, env=env,
                           capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(fork))
    test_opt = {'name': 'fork_test', 'model_type': 'MetaSRModel', 'num_gpu': 0, 'bicubic_skip': True,
                'network_g': opt['network_g'],
                'datasets': {'test_1': {'name': 'v', 'type': 'MetaSRGTDataset',
                                        'dataroot_gt': str(tmp_path / 'data' / 'val')}},
                'path': {'pretrain_network_g': str(exp / 'models' / 'net_g_latest.pth')},
                'val': {'save_img': False, 'scales': [2.5]}}
    (tmp_path / 't.yml').write_text(yaml.safe_dump(test_opt))
    run = subprocess.run([sys.executable, 'basicsr/test.py', '-opt', str(tmp_path / 't.yml')], cwd=fork, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (fork / 'results' / 'fork_test' / 'metrics.jsonl').is_file()
    installer.install(str(fork / 'basicsr'), undo=True)
    assert 'metasr_arch' not in (fork / 'basicsr' / 'train.py').read_text()
