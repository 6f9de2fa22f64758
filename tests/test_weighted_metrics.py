"""Latitude-weighted RMSE / MAE / bias against an independent formula, and their registration."""
import math

import metasr_arch  # noqa: F401  (before basicsr)

import numpy as np
import pytest
from basicsr.metrics import calculate_metric
from basicsr.utils.registry import METRIC_REGISTRY

from metasr_arch.metrics import latitude_weights, weighted_errors


def cell_area(lats_deg, i) -> float:
    """Area of row i's cell on the unit sphere per radian of longitude: between the latitudes halfway to the
    neighbouring rows (half a spacing beyond an end row), clipped to the poles."""
    n = len(lats_deg)
    lo = lats_deg[i] - (lats_deg[1] - lats_deg[0]) / 2 if i == 0 else (lats_deg[i - 1] + lats_deg[i]) / 2
    hi = lats_deg[i] + (lats_deg[-1] - lats_deg[-2]) / 2 if i == n - 1 else (lats_deg[i] + lats_deg[i + 1]) / 2
    lo, hi = (max(-90.0, min(90.0, v)) for v in (lo, hi))
    return abs(math.sin(math.radians(hi)) - math.sin(math.radians(lo)))


def reference(a: np.ndarray, b: np.ndarray, lats_deg, mask=None) -> dict:
    """Written out with loops: sum cell_area_i e_ij / sum cell_area_i over the valid points, per channel."""
    h, w, c = a.shape
    out = {'rmse': [], 'mae': [], 'bias': []}
    for ch in range(c):
        num_sq = num_abs = num = den = 0.0
        for i in range(h):
            cw = cell_area(list(lats_deg), i)
            for j in range(w):
                if mask is not None and not mask[i, j, ch]:
                    continue
                d = a[i, j, ch] - b[i, j, ch]
                num_sq += cw * d * d
                num_abs += cw * abs(d)
                num += cw * d
                den += cw
        out['rmse'].append(math.sqrt(num_sq / den))
        out['mae'].append(num_abs / den)
        out['bias'].append(num / den)
    return {k: np.array(v) for k, v in out.items()}


def fields(h=19, w=12, c=3, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.normal(280, 10, (h, w, c))
    pred = truth + rng.normal(0.5, 2, (h, w, c)) * np.linspace(0, 2, h)[:, None, None]  # errors grow southwards
    return pred, truth


def test_weights_are_cell_areas_with_mean_one():
    wts = latitude_weights(721)
    assert wts.mean() == pytest.approx(1.0, abs=1e-12)
    # away from the poles cell areas follow cos(latitude); a pole row keeps its small cap (not 0)
    assert wts[360] / wts[120] == pytest.approx(1 / math.cos(math.radians(60)), rel=1e-12)
    cap = 1 - math.sin(math.radians(90 - 0.125))
    assert wts[0] / wts[360] == pytest.approx(cap / (2 * math.sin(math.radians(0.125))), rel=1e-9)
    assert wts[-1] == pytest.approx(wts[0], rel=1e-12)


def test_default_grid_is_90_to_minus_90():
    pred, truth = fields()
    got = weighted_errors(pred, truth)
    want = reference(pred, truth, np.linspace(90, -90, 19))
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12)


def test_other_grid_crop_and_chw():
    pred, truth = fields(h=16, w=10, c=2, seed=1)
    lats = np.linspace(-80, 70, 16)
    got = weighted_errors(pred.transpose(2, 0, 1), truth.transpose(2, 0, 1), crop_border=(2, 3), lat_first=-80,
                          lat_last=70, input_order='CHW')
    want = reference(pred[2:-2, 3:-3], truth[2:-2, 3:-3], lats[2:-2])
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12)


@pytest.mark.parametrize('kind', ['rmse', 'mae', 'bias'])
def test_registered_metric_is_the_mean_over_variables(kind):
    pred, truth = fields()
    want = reference(pred, truth, np.linspace(90, -90, 19))[kind].mean()
    got = calculate_metric({'img': pred, 'img2': truth},
                           {'type': f'calculate_weighted_{kind}', 'crop_border': 0, 'test_y_channel': False})
    assert got == pytest.approx(want, rel=1e-12)
    assert METRIC_REGISTRY.get(f'calculate_weighted_{kind}').physical_units
    # 2-D input = one variable
    assert calculate_metric({'img': pred[..., 0], 'img2': truth[..., 0]}, {'type': f'calculate_weighted_{kind}'}) \
        == pytest.approx(reference(pred[..., :1], truth[..., :1], np.linspace(90, -90, 19))[kind][0], rel=1e-12)


def test_unweighted_equator_band_equals_plain_rmse():
    pred, truth = fields(h=5)
    got = weighted_errors(pred, truth, lat_first=0, lat_last=0)['rmse']
    np.testing.assert_allclose(got, np.sqrt(((pred - truth) ** 2).mean(axis=(0, 1))), rtol=1e-12)


def test_bad_arguments_are_named():
    pred, truth = fields()
    with pytest.raises(ValueError, match='same shape'):
        weighted_errors(pred, truth[:-1])
    with pytest.raises(ValueError, match='lat_first'):
        weighted_errors(pred, truth, lat_first=100)
    with pytest.raises(ValueError, match='crop_border'):
        weighted_errors(pred, truth, crop_border=10)
    with pytest.raises(ValueError, match='pole'):
        latitude_weights(3, 90, 90)


def test_ci_check_of_the_gridded_demo(tmp_path):
    """.ci/check_demo_grid.py passes only when the last validation's weighted RMSE is below bicubic's."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / '.ci' / 'check_demo_grid.py'
    runs = {'better': (0.3, 0.7, 0), 'worse': (0.8, 0.7, 1)}
    for name, (model, bicubic, rc) in runs.items():
        path = tmp_path / f'{name}.jsonl'
        path.write_text('\n'.join(json.dumps(r) for r in [
            {'iter': 1, 'dataset': 'v', 'scale': [3.8, 4.0], 'wrmse': 9.0, 'wrmse_bicubic': 0.7},
            {'iter': 2, 'dataset': 'v', 'scale': [3.8, 4.0], 'wrmse': model, 'wrmse_bicubic': bicubic}]))
        run = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True)
        assert run.returncode == rc, run.stderr


def test_band_from_the_data_latitudes_with_a_mask_equals_cell_areas():
    """A 20..90 N band (the eofs 500 hPa grid) scored with the data's own latitudes and a land mask equals the
    loop formula over cell areas at valid points; NaN/inf at masked points are never read; lat_first/lat_last
    given in the options override the data's latitudes."""
    pred, truth = fields(h=29, w=12, c=2, seed=4)
    lats = 20.0 + 2.5 * np.arange(29)
    mask = np.random.default_rng(5).random(pred.shape) > 0.3
    wild = np.where(mask, pred, np.inf)
    got = weighted_errors(wild, np.where(mask, truth, np.nan), lat=lats, mask=mask)
    want = reference(pred, truth, lats, mask)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12)
    # the north pole row keeps a cap of 1.25 degrees: sin(90) - sin(88.75)
    w = latitude_weights(29, lat=lats)
    assert w[-1] / w[0] == pytest.approx((1 - math.sin(math.radians(88.75))) /
                                         (math.sin(math.radians(21.25)) - math.sin(math.radians(18.75))), rel=1e-12)
    rmse = calculate_metric({'img': wild, 'img2': truth, 'lat': lats, 'mask': mask},
                            {'type': 'calculate_weighted_rmse'})
    assert rmse == pytest.approx(want['rmse'].mean(), rel=1e-12)
    over = calculate_metric({'img': pred, 'img2': truth, 'lat': lats}, {'type': 'calculate_weighted_rmse',
                                                                       'lat_first': 90, 'lat_last': -90})
    assert over == pytest.approx(reference(pred, truth, np.linspace(90, -90, 29))['rmse'].mean(), rel=1e-12)
