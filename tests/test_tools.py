"""Tests of the data, plot and picture tools under scripts/, and of the README's commands.

References are independent where one exists: BasicSR's ``imresize`` for the LR images at scales
where its ``ceil`` size convention meets ours, plain slicing for the grid cells, and the records
themselves for the plotted curves (read back from the matplotlib Figure objects).
"""
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import metasr_arch  # noqa: F401  (before basicsr: functional_tensor alias)

import cv2
import numpy as np
import pytest
import torch
from basicsr.utils.matlab_functions import imresize as basicsr_imresize

from metasr_arch.utils.resize import imresize_np
from test_infer import NET_OPT, make_net, rgb_image

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / 'scripts'


def load_script(rel: str):
    """Import a script under scripts/ as a module (they are not a package)."""
    path = SCRIPTS / rel
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


gen = load_script('data/generate_multiscale_lr.py')
plot = load_script('plot_scale_curve.py')
visual = load_script('visual_compare.py')


# --------------------------------------------------------------------------- generate_multiscale_lr
@pytest.fixture()
def hr_folder(tmp_path):
    hr = tmp_path / 'HR'
    hr.mkdir()
    cv2.imwrite(str(hr / 'a.png'), rgb_image(48, 40, seed=1))  # divisible by 2 and 4
    cv2.imwrite(str(hr / 'b.png'), rgb_image(37, 51, np.uint16, seed=2)[..., 0])  # odd, grey, 16-bit
    np.save(hr / 'c.npy', np.random.default_rng(3).standard_normal((2, 30, 45)).astype(np.float32))
    return hr


def test_generate_lr_equals_imresize_of_hr(hr_folder):
    out = hr_folder.parent / 'LR_bicubic'
    assert gen.main(['--hr', str(hr_folder), '--scales', '2', '4', '2.5', '2x3.5', '--workers', '1', '--quiet']) == 0
    assert sorted(p.name for p in out.iterdir()) == ['X2.00', 'X2.00_X3.50', 'X2.50', 'X4.00']

    hr_a = cv2.imread(str(hr_folder / 'a.png')).astype(np.float64) / 255
    for r in (2, 4):  # 48x40 / r is exact: BasicSR's imresize(1/r) is an independent reference
        lr = cv2.imread(str(out / f'X{r}.00' / 'a.png'))
        ref = np.rint(np.clip(basicsr_imresize(hr_a, 1 / r), 0, 1) * 255)
        assert lr.shape == (48 // r, 40 // r, 3)
        assert np.abs(lr.astype(int) - ref.astype(int)).max() <= 1

    # non-integer / asymmetric: LR size floor(H / r), made from the GT crop floor(h * r)
    hr_b = cv2.imread(str(hr_folder / 'b.png'), cv2.IMREAD_UNCHANGED)
    assert hr_b.dtype == np.uint16
    for tag, (r_v, r_h) in (('X2.50', (2.5, 2.5)), ('X2.00_X3.50', (2.0, 3.5))):
        lr = cv2.imread(str(out / tag / 'b.png'), cv2.IMREAD_UNCHANGED)
        h, w = int(37 // r_v), int(51 // r_h)
        assert lr.shape == (h, w) and lr.dtype == np.uint16
        crop = hr_b[:int(h * r_v), :int(w * r_h)].astype(np.float32) / 65535
        ref = np.rint(np.clip(imresize_np(crop, (h, w)), 0, 1) * 65535)
        assert np.abs(lr.astype(int) - ref.astype(int)).max() <= 1

    c = np.load(hr_folder / 'c.npy')
    lr_c = np.load(out / 'X2.50' / 'c.npy')
    assert lr_c.shape == (2, 12, 18) and lr_c.dtype == np.float32
    ref_c = np.stack([imresize_np(ch, (12, 18)) for ch in c])  # 30x45 -> crop 30x45 at 2.5 exactly
    np.testing.assert_allclose(lr_c, ref_c, rtol=1e-5, atol=1e-5)


def test_generate_rerun_skips_and_completes(hr_folder, capsys):
    out = hr_folder.parent / 'LR_bicubic'
    assert gen.main(['--hr', str(hr_folder), '--scales', '3', '--workers', '1', '--quiet']) == 0
    capsys.readouterr()
    done = out / 'X3.00' / 'a.png'
    stamp = done.stat().st_mtime_ns
    (out / 'X3.00' / 'b.png').unlink()  # as if the first run had been interrupted
    assert gen.main(['--hr', str(hr_folder), '--scales', '3', '--workers', '1', '--quiet']) == 0
    assert '1 written, 2 already there, 0 failed' in capsys.readouterr().err
    assert done.stat().st_mtime_ns == stamp and (out / 'X3.00' / 'b.png').is_file()
    assert not [p for p in (out / 'X3.00').iterdir() if p.name.startswith('.')]  # no temporary files left


def test_generate_reports_bad_files_and_scales(hr_folder, capsys):
    (hr_folder / 'bad.png').write_bytes(b'garbage')
    assert gen.main(['--hr', str(hr_folder), '--scales', '2', '--workers', '1', '--quiet']) == 1
    err = capsys.readouterr().err
    assert '3 written' in err and 'bad.png' in err and 'cannot read image' in err
    with pytest.raises(SystemExit):
        gen.main(['--hr', str(hr_folder), '--scales', '0.5'])
    assert '--scales' in capsys.readouterr().err


def test_generate_parallel_command_line(hr_folder):
    """The README's command, as a process with two workers (spawned)."""
    cmd = [sys.executable, str(SCRIPTS / 'data' / 'generate_multiscale_lr.py'), '--hr', str(hr_folder),
           '--scales', '2', '2x3.5', '--workers', '2', '--quiet']
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert '6 written' in proc.stderr
    lr = cv2.imread(str(hr_folder.parent / 'LR_bicubic' / 'X2.00_X3.50' / 'a.png'))
    crop = cv2.imread(str(hr_folder / 'a.png'))[:48, :int(11 * 3.5)].astype(np.float32) / 255
    assert np.abs(lr.astype(int) - np.rint(np.clip(imresize_np(crop, (24, 11)), 0, 1) * 255)).max() <= 1


# --------------------------------------------------------------------------- plot_scale_curve
def write_metrics(path: Path, runs_offset: float = 0.0) -> list:
    """Synthetic records: two datasets, two iterations, symmetric and asymmetric scales."""
    recs = []
    for it in (100, 200):
        for dataset in ('Set5', 'demo'):
            for scale in ([2, 2], [3, 3], [2.5, 2.5], [4, 4], [2, 4], [4, 2]):
                base = 40 - 3 * (scale[0] + scale[1]) / 2 + (0 if dataset == 'Set5' else -1)
                recs.append({'iter': it, 'dataset': dataset, 'scale': scale,
                             'psnr': base + it / 100 + runs_offset, 'ssim': 0.9 - 0.01 * scale[0] + it / 1e4,
                             'psnr_bicubic': base - 1, 'ssim_bicubic': 0.85 - 0.01 * scale[0]})
    path.write_text('\n'.join(json.dumps(r) for r in recs) + '\n')
    return recs


def test_curve_figure_lines_and_values(tmp_path):
    write_metrics(tmp_path / 'a.jsonl')
    write_metrics(tmp_path / 'b.jsonl', runs_offset=0.5)
    runs = [(n, plot.select_records(plot.load_metrics(tmp_path / f'{n}.jsonl'))) for n in ('a', 'b')]
    fig = plot.curve_figure(runs)
    assert len(fig.axes) == 2  # psnr, ssim
    psnr_ax = fig.axes[0]
    # 2 runs x 2 datasets model curves + 2 bicubic curves (one per dataset)
    assert len(psnr_ax.lines) == 2 * 2 + 2
    line = next(ln for ln in psnr_ax.lines if ln.get_label() == 'b (Set5)')
    assert list(line.get_xdata()) == [2, 2.5, 3, 4]  # symmetric scales only, sorted
    # latest iteration (200) by default
    np.testing.assert_allclose(line.get_ydata(), [40 - 3 * r + 2 + 0.5 for r in (2, 2.5, 3, 4)])
    bic = next(ln for ln in psnr_ax.lines if ln.get_label() == 'bicubic (demo)')
    np.testing.assert_allclose(bic.get_ydata(), [40 - 3 * r - 1 - 1 for r in (2, 2.5, 3, 4)])

    runs_100 = [('a', plot.select_records(plot.load_metrics(tmp_path / 'a.jsonl'), iteration=100))]
    fig = plot.curve_figure(runs_100, metrics=('psnr',), bicubic=False, datasets=['Set5'])
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 1
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [40 - 3 * r + 1 for r in (2, 2.5, 3, 4)])


def test_heatmap_grid_values(tmp_path):
    recs = write_metrics(tmp_path / 'm.jsonl')
    sel = plot.select_records(plot.load_metrics(tmp_path / 'm.jsonl'))
    fig = plot.heatmap_figure([('run', sel)], value='gain', datasets=['Set5'])
    image = fig.axes[0].images[0].get_array()
    rows, cols, grid = plot.heatmap_grid(sel, 'Set5', 'psnr', 'gain')
    assert rows == [2, 2.5, 3, 4] and cols == [2, 2.5, 3, 4]
    np.testing.assert_allclose(np.ma.filled(image, np.nan), grid)
    for r in recs:
        if r['iter'] == 200 and r['dataset'] == 'Set5':
            i, j = rows.index(r['scale'][0]), cols.index(r['scale'][1])
            assert grid[i, j] == pytest.approx(r['psnr'] - r['psnr_bicubic'])
    assert np.isnan(grid[rows.index(2), cols.index(3)])  # never evaluated


def test_plot_cli_writes_png_and_rejects_bad_lines(tmp_path, capsys):
    write_metrics(tmp_path / 'm.jsonl')
    assert plot.main([str(tmp_path / 'm.jsonl'), '--out', str(tmp_path / 'c.png')]) == 0
    assert plot.main([str(tmp_path / 'm.jsonl'), '--heatmap', '--out', str(tmp_path / 'h.png')]) == 0
    assert cv2.imread(str(tmp_path / 'c.png')) is not None and cv2.imread(str(tmp_path / 'h.png')) is not None
    (tmp_path / 'bad.jsonl').write_text('{"iter": 1, "dataset": "x", "scale": [2, 2], "psnr": 30}\n{oops\n')
    assert plot.main([str(tmp_path / 'bad.jsonl'), '--out', str(tmp_path / 'x.png')]) == 2
    assert 'bad.jsonl:2' in capsys.readouterr().err


# --------------------------------------------------------------------------- visual_compare
def test_visual_compare_grid_size_and_cells(tmp_path):
    gt = rgb_image(40, 44, seed=4)
    cv2.imwrite(str(tmp_path / 'gt.png'), gt)
    torch.save({'params': make_net(2).state_dict(), 'network_opt': dict(NET_OPT)}, tmp_path / 'n.pth')
    out = tmp_path / 'grid.png'
    crop = (4, 6, 12, 14)
    assert visual.main(['--gt', str(tmp_path / 'gt.png'), '--ckpt', str(tmp_path / 'n.pth'), '--scales', '2', '3',
                        '2x3.5', '--crop', *map(str, crop), '--zoom', '2', '--pad', '3',
                        '--allow-arch', 'InferTinyNet', '--out', str(out)]) == 0
    grid = cv2.imread(str(out))
    assert grid.shape[:2] == visual.grid_size(3, (12, 14), zoom=2, pad=3) == (
        visual.LABEL_H + 3 * (visual.LABEL_H + 24) + 4 * 3, 4 * 28 + 5 * 3)
    # the GT cell of the first row is the GT window, enlarged 2x with nearest neighbours
    top, left = 3 + 2 * visual.LABEL_H, 3 + 3 * (28 + 3)  # below the header and the row's label
    cell = grid[top:top + 24, left:left + 28]
    np.testing.assert_array_equal(cell, np.repeat(np.repeat(gt[4:16, 6:20], 2, 0), 2, 1))
    # the bicubic cell: BasicSR's imresize of the x2 LR (40x44 is divisible by 2, so sizes agree)
    lr = basicsr_imresize(gt[..., ::-1].astype(np.float64) / 255, 0.5)
    bic = np.rint(np.clip(basicsr_imresize(lr, 2), 0, 1) * 255)[..., ::-1][4:16, 6:20]
    left = 3 + 1 * (28 + 3)
    assert np.abs(grid[top:top + 24:2, left:left + 28:2].astype(int) - bic.astype(int)).max() <= 1


def test_visual_compare_nearest_follows_projection():
    lr = torch.arange(6.0).view(1, 2, 3)
    up = visual.nearest_upsample(lr, 5, 7, 2.5, 2.5)
    rows, cols = [int(i / 2.5) for i in range(5)], [int(j / 2.5) for j in range(7)]
    np.testing.assert_array_equal(up[0].numpy(), lr[0].numpy()[rows][:, cols])


def test_visual_compare_grid_without_labels_is_exact(tmp_path):
    panels = [np.full((20, 30, 3), v, np.uint8) for v in (10, 20, 30, 40)]
    grid = visual.compose_grid([('a', panels), ('b', panels)], (2, 3, 5, 6), zoom=3, pad=0, labels=False)
    assert grid.shape == (2 * 15, 4 * 18, 3) == visual.grid_size(2, (5, 6), 3, 0, False) + (3,)
    for col, v in enumerate((10, 20, 30, 40)):
        assert (grid[:, col * 18:(col + 1) * 18] == v).all()


def test_visual_compare_rejects_crop_outside(tmp_path, capsys):
    cv2.imwrite(str(tmp_path / 'gt.png'), rgb_image(20, 20))
    torch.save({'params': make_net(2).state_dict(), 'network_opt': dict(NET_OPT)}, tmp_path / 'n.pth')
    assert visual.main(['--gt', str(tmp_path / 'gt.png'), '--ckpt', str(tmp_path / 'n.pth'), '--scales', '3',
                        '--crop', '10', '10', '10', '10', '--allow-arch', 'InferTinyNet',
                        '--out', str(tmp_path / 'g.png')]) == 2
    assert '--crop' in capsys.readouterr().err


# --------------------------------------------------------------------------- README commands
TOOL_PARSERS = {
    'metasr_arch.infer': lambda: __import__('metasr_arch.infer', fromlist=['x']).build_parser(),
    'scripts/inference_metasr.py': lambda: __import__('metasr_arch.infer', fromlist=['x']).build_parser(),
    'scripts/data/generate_multiscale_lr.py': gen.build_parser,
    'scripts/plot_scale_curve.py': plot.build_parser,
    'scripts/visual_compare.py': visual.build_parser,
}


def documented_commands():
    """``python ...`` commands of the tools above in README.md and docs/tools.md (continuations joined)."""
    found = []
    for doc in (ROOT / 'README.md', ROOT / 'docs' / 'tools.md'):
        if not doc.is_file():
            continue
        for block in re.findall(r'```(?:bash|sh|shell)\n(.*?)```', doc.read_text(encoding='utf-8'), re.S):
            for cmd in block.replace('\\\n', ' ').splitlines():
                words = shlex.split(cmd, comments=True)
                if len(words) < 2 or not words[0].endswith('python'):
                    continue
                tool = words[2] if words[1] == '-m' else words[1]
                if tool in TOOL_PARSERS:
                    found.append((doc.name, tool, words[3:] if words[1] == '-m' else words[2:]))
    return found


def test_documented_tool_commands_parse():
    """Every tool command in the docs is accepted by the tool's own parser (the options exist and
    their values are valid); their behaviour is covered by the end-to-end tests of this file and
    tests/test_infer.py."""
    commands = documented_commands()
    if (ROOT / 'README.md').is_file() and 'metasr_arch.infer' in (ROOT / 'README.md').read_text():
        assert commands, 'README mentions the tools but no command was found'
    for doc, tool, args in commands:
        parser = TOOL_PARSERS[tool]()
        try:
            parser.parse_args(args)
        except SystemExit:
            pytest.fail(f'{doc}: `{tool} {" ".join(args)}` is rejected by its parser')
        if tool in ('metasr_arch.infer', 'scripts/inference_metasr.py'):
            from metasr_arch.utils.naming import parse_scale_text, parse_size_text
            ns = parser.parse_args(args)
            [parse_scale_text(s) for s in ns.scale] + [parse_size_text(s) for s in ns.size]
        if tool in ('scripts/data/generate_multiscale_lr.py', 'scripts/visual_compare.py'):
            from metasr_arch.utils.naming import parse_scale_text
            [parse_scale_text(s) for s in parser.parse_args(args).scales]


def test_readme_python_snippets_run():
    """The README's Python examples run as written (``features`` is the one name they assume)."""
    text = (ROOT / 'README.md').read_text(encoding='utf-8')
    blocks = re.findall(r'```python\n(.*?)```', text, re.S)
    assert blocks, 'the README shows the operator API in a python block'
    for block in blocks:
        scope = {'features': torch.randn(1, 64, 6, 5)}
        exec(compile(block, 'README.md', 'exec'), scope)  # noqa: S102 (our own documentation)
        if 'y' in scope:  # the operator example: its last call asked for exactly 721 x 1440
            assert tuple(scope['y'].shape) == (1, 3, 721, 1440)


# Paths a reader runs or opens: repository files named in commands, and relative Markdown links.
# Outputs of runs (experiments/, results/, datasets/, tb_logger/) and placeholders are not checked.
REPO_PATH = re.compile(r'(?<![\w/.-])((?:options|scripts|docs|metasr_arch|ops|tests)/[\w./-]+\.(?:yml|py|md|png))')
MD_LINK = re.compile(r'\]\(((?!https?:|#)[^)#\s]+)(?:#[^)]*)?\)')


def documentation_files():
    return [ROOT / 'README.md', ROOT / 'BENCHMARKS.md'] + sorted((ROOT / 'docs').glob('*.md'))


@pytest.mark.parametrize('doc', documentation_files(), ids=lambda p: p.name)
def test_documented_paths_exist(doc):
    """Every repository file a document names in a command or links to exists (a renamed options file
    or script must not leave a dead command behind)."""
    text = doc.read_text(encoding='utf-8')
    missing = []
    for lang, block in re.findall(r'^```(\w*)\n(.*?)^```', text, re.S | re.M):
        if lang not in ('', 'bash', 'sh', 'shell'):
            continue
        for path in REPO_PATH.findall(block):
            if '*' not in path and not (ROOT / path).exists():
                missing.append(path)
    for link in MD_LINK.findall(text):
        if not (doc.parent / link).exists():
            missing.append(link)
    assert not missing, f'{doc.name} names files that do not exist: {sorted(set(missing))}'


def test_readme_has_no_placeholders():
    """The README is finished text: no 'to be filled in' notes or template markers."""
    text = (ROOT / 'README.md').read_text(encoding='utf-8')
    for marker in ('to be filled', 'TODO', 'to be remade', 'filled in by'):
        assert marker not in text, f'README.md still contains {marker!r}'


def test_ci_demo_check(tmp_path):
    """.ci/check_demo.py passes only when the last validation beats bicubic at every scale."""
    spec = importlib.util.spec_from_file_location('check_demo', ROOT / '.ci' / 'check_demo.py')
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)

    def write(records):
        path = tmp_path / 'metrics.jsonl'
        path.write_text(''.join(json.dumps(r) + '\n' for r in records))
        return str(path)
    rec = {'dataset': 'demo_val'}
    early_loss = dict(rec, iter=1000, scale=[2, 2], psnr=30.0, psnr_bicubic=31.0)  # earlier: not judged
    good = [early_loss, dict(rec, iter=3000, scale=[2, 2], psnr=32.0, psnr_bicubic=31.0),
            dict(rec, iter=3000, scale=[1.5, 3], psnr=30.0, psnr_bicubic=29.5)]
    assert check.main(write(good)) == 0
    assert check.main(write(good + [dict(rec, iter=3000, scale=[3, 2], psnr=29.0, psnr_bicubic=29.0)])) == 1
    assert check.main(write([])) == 1


def test_calibration_constant_search_finds_the_fastest_modes():
    """scripts/calibrate_table_modes.py: with timings where the convolution wins at x2 (no waste) and
    the transposed row GEMMs win at x(1.3, 1.7) (conv computes 42x the products needed here), the
    constant search finds constants under which ``choose_table_mode`` picks the fastest mode on both
    (slowdown 1); a row factor far above the measured one would keep the wasteful convolution."""
    calib = load_script('calibrate_table_modes.py')
    fake = {'x2': {'conv': 1.0, 'row': 3.0, 'row_t': 3.0, 'pixel': 50.0},
            'x1.3x1.7': {'conv': 9.0, 'row': 4.0, 'row_t': 2.0, 'pixel': 30.0}}
    results = []
    for shape in [('x2', 1, 4, 6, 7, (2.0, 2.0), None), ('x1.3x1.7', 1, 4, 6, 7, (1.3, 1.7), None)]:
        results.append(calib.measure(shape, 1, torch.device('cpu'),
                                     timer=lambda fn, device, repeats, name=shape[0]: fake[name][fn.args[0]]))
    assert [r['fastest'] for r in results] == ['conv', 'row_t']
    row_factor, pixel_cost, slowdown = calib.best_constants(results)
    assert slowdown == 1.0
    assert [r['choose'](row_factor, pixel_cost) for r in results] == ['conv', 'row_t']
    assert results[1]['choose'](1000, 200) == 'conv'


@pytest.mark.slow
def test_operator_benchmark_script_runs_and_reports(tmp_path):
    """scripts/benchmark_meta_upscale.py on one training shape: the JSON has both implementations,
    the operator's FLOPs, and the phase path saving fewer bytes for backward than im2col; the markdown
    table has their ratio row."""
    bench = load_script('benchmark_meta_upscale.py')
    from metasr_arch.ops.meta_upscale import flops
    md, js = tmp_path / 'b.md', tmp_path / 'b.json'
    assert bench.main(['--cases', 'train_x1.3x1.7', '--impls', 'im2col', 'phase', '--repeats', '1',
                       '--markdown', str(md), '--json', str(js)]) == 0
    rows = {r['impl']: r for r in json.loads(js.read_text())}
    case = bench.CASES['train_x1.3x1.7']
    spec = case.spec()
    expected_gflop = flops(case.n, case.c_in, case.c_out, spec.out_h, spec.out_w, 3) / 1e9
    assert rows['im2col']['gflop'] == pytest.approx(expected_gflop)
    assert 0 < rows['phase']['saved_bytes'] < rows['im2col']['saved_bytes']
    assert '| train_x1.3x1.7 | phase |' in md.read_text() and 'x fewer' in md.read_text()


def test_calibration_script_end_to_end(tmp_path, monkeypatch):
    """scripts/calibrate_table_modes.py on two small shapes: a row per shape with the mode
    ``choose_table_mode`` picks, and the constants' summary lines."""
    calib = load_script('calibrate_table_modes.py')
    monkeypatch.setattr(calib, 'SHAPES', [('x2', 1, 4, 6, 7, (2.0, 2.0), None),
                                          ('x1.3x1.7', 1, 4, 6, 7, (1.3, 1.7), None)])
    md = tmp_path / 'm.md'
    assert calib.main(['--repeats', '1', '--markdown', str(md)]) == 0
    text = md.read_text()
    assert '| x2 |' in text and '| x1.3x1.7 |' in text
    assert text.splitlines()[2].split('|')[-2].strip() == 'conv'  # x2: a sub-pixel convolution, no waste
    assert 'Implied ROW_MODE_FACTOR' in text and 'Mean slowdown' in text
