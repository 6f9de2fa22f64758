"""scripts/gpu_check.py: the one-call GPU check (its runner, options, report, and the whole dry run)."""
import importlib.util
import os
import subprocess
import sys
from argparse import Namespace
from datetime import datetime
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / 'scripts' / 'gpu_check.py'


@pytest.fixture(scope='module')
def gpu_check():
    spec = importlib.util.spec_from_file_location('gpu_check', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def py(code: str):
    return [sys.executable, '-c', code]


def test_failing_and_hanging_steps_do_not_stop_the_others(gpu_check, tmp_path):
    steps = [
        gpu_check.Step('fails', 'exits 3', py('import sys; print("half done"); sys.exit(3)'), 60),
        gpu_check.Step('hangs', 'sleeps past its timeout', py('import time; print("start", flush=True); '
                                                              'time.sleep(60)'), 2),
        gpu_check.Step('table', 'prints a table', py('print("| a | b |"); print("|---|---|"); print("| 1 | 2 |")'),
                       60, summary=gpu_check.table_lines),
    ]
    seen = []
    outcomes = gpu_check.run_steps(steps, tmp_path, False, 60, dict(os.environ),
                                   on_done=lambda done: seen.append(len(done)))
    assert [o.status for o in outcomes] == ['failed', 'timeout', 'ok']
    assert outcomes[0].detail == 'exit status 3' and 'half done' in outcomes[0].log
    assert outcomes[1].detail == 'killed after 2 s' and 2 <= outcomes[1].seconds < 30 and 'start' in outcomes[1].log
    assert seen == [1, 2, 3]  # the report is rewritten after every step
    assert (tmp_path / 'fails.log').read_text().startswith('$ ')
    report = gpu_check.render_report(outcomes, {'device': 'test'}, Namespace(dry_run=False, budget=60, work=str(tmp_path)),
                                     datetime.now(), 10.0, [])
    assert '| fails | failed (exit status 3) |' in report and '| hangs | timeout (killed after 2 s) |' in report
    assert '| 1 | 2 |' in report  # the step's table is pasted
    assert 'half done' in report  # the end of a failing step's log


def test_dry_run_skips_steps_without_a_cpu_form_and_the_budget_is_kept(gpu_check, tmp_path):
    steps = [gpu_check.Step('gpu_only', 'needs CUDA', py('raise SystemExit(1)'), 60),
             gpu_check.Step('cpu_form', 'runs anywhere', py('raise SystemExit(1)'), 60, dry_command=py('pass'))]
    outcomes = gpu_check.run_steps(steps, tmp_path, True, 60, dict(os.environ))
    assert [(o.status, o.detail) for o in outcomes] == [('skipped', 'dry run: needs a CUDA device'), ('ok', '')]
    outcomes = gpu_check.run_steps(steps, tmp_path, False, 1, dict(os.environ))
    assert [o.status for o in outcomes] == ['not run', 'not run']
    assert 'budget of 1 s was used up' in outcomes[0].detail


@pytest.mark.parametrize('dry_run', [False, True])
def test_demo_options(gpu_check, tmp_path, dry_run):
    path = gpu_check.write_demo_options(tmp_path, dry_run)
    opt = yaml.safe_load(path.read_text())
    iters = 4 if dry_run else 300
    assert opt['train']['total_iter'] == iters and opt['num_gpu'] == (0 if dry_run else 1)
    assert opt['val']['val_freq'] > iters  # validated once, after the last iteration
    assert opt['logger']['save_checkpoint_freq'] == iters
    assert all(m < iters for m in opt['train']['scheduler']['milestones'])
    assert Path(opt['datasets']['train']['dataroot_gt']) == ROOT / 'datasets' / 'demo' / 'train'
    base = yaml.safe_load((ROOT / 'options' / 'train' / 'demo_MetaRDN.yml').read_text())
    assert opt['network_g'] == base['network_g']  # the demo's model, only shorter
    assert (opt['val']['scales'] == [2, [1.5, 3]]) == dry_run
    assert 'amp' not in opt['train'] and opt['name'] == 'gpu_check_demo'
    bf16 = yaml.safe_load(gpu_check.write_demo_options(tmp_path, dry_run, 'bf16').read_text())
    assert bf16['train'].pop('amp') == 'bf16' and bf16['name'] == 'gpu_check_demo_bf16'
    assert {k: v for k, v in bf16.items() if k != 'name'} == {k: v for k, v in opt.items() if k != 'name'}


def test_bad_arguments_exit_2_with_the_reason(gpu_check, tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(['--out', str(tmp_path / 'o'), '--wheels', str(tmp_path / 'empty')])
    assert exc.value.code == 2 and 'no *.whl files there' in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(['--out', str(tmp_path / 'o'), '--dry-run', '--only', 'bild'])
    assert exc.value.code == 2 and "unknown step(s) ['bild']" in capsys.readouterr().err


@pytest.mark.slow
def test_the_dry_run(tmp_path):
    """The dry run as CI runs it (.ci/run runs all steps; here the two steps that re-run pytest on this
    suite's own tests, cuda_tests and opcheck, are left out to keep the suite short): every step with
    a CPU form passes, the CUDA-only ones are listed as skipped, DIR holds only the report and the logs."""
    out, work = tmp_path / 'out', tmp_path / 'work'
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    steps = ['build', 'self_check', 'native_bench', 'model_bench', 'trunk_bench', 'demo', 'grid_b8']
    proc = subprocess.run([sys.executable, str(SCRIPT), '--dry-run', '--out', str(out), '--work', str(work),
                           '--only'] + steps, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=900)
    report = (out / 'report.md').read_text()
    assert proc.returncode == 0, report
    assert sorted(p.name for p in out.iterdir()) == ['logs.txt', 'report.md']
    for name in steps[:-1]:
        assert f'| {name} | ok |' in report
    assert '| grid_b8 | skipped (dry run: needs a CUDA device) |' in report
    assert 'Skipped or not run: grid_b8.' in report
    for dtype in ('float32', 'float64', 'float16', 'bfloat16'):
        assert f'self-check cpu {dtype}: ok' in report
    assert '| smoke_x2.5x3.7 | native |' in report  # the operator benchmark's table
    assert '| RDN | ' in report and '| SwinIR | ' in report  # the model benchmark's table
    assert '| EDSR | ' in report  # the MetaSR trunks' benchmark
    assert '| demo_val | 2 x 2 | 4 |' in report  # the demo's PSNR table
    assert '===== demo: ok' in (out / 'logs.txt').read_text()
