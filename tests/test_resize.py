"""imresize_to against BasicSR's MATLAB-compatible imresize."""
import numpy as np
import pytest
import torch
from basicsr.utils.matlab_functions import imresize

from metasr_arch.utils.resize import imresize_np, imresize_to


@pytest.mark.parametrize('h,w,s', [(48, 40, 0.25), (50, 30, 0.4), (17, 9, 0.5), (10, 12, 2.0), (8, 8, 3.0)])
def test_matches_basicsr_imresize(h, w, s):
    torch.manual_seed(0)
    x = torch.rand(3, h, w)
    ref = imresize(x.clone(), s)
    out = imresize_to(x, ref.shape[-2:], scale=(s, s))
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-6)


def _cubic(x: float) -> float:
    x = abs(x)
    if x <= 1:
        return 1.5 * x**3 - 2.5 * x**2 + 1
    if x <= 2:
        return -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2
    return 0.0


def _naive_resize_axis(v: list, out_len: int) -> list:
    """MATLAB imresize along one axis, written from its definition (antialiased when shrinking)."""
    n, s = len(v), out_len / len(v)
    width = 4 / s if s < 1 else 4
    out = []
    for i in range(out_len):
        u = (i + 1) / s + 0.5 * (1 - 1 / s)  # 1-based source coordinate
        taps = range(int(np.floor(u - width / 2)), int(np.ceil(u + width / 2)) + 1)
        ws, vals = [], []
        for t in taps:
            wgt = s * _cubic(s * (u - t)) if s < 1 else _cubic(u - t)
            src = t - 1
            src = -src - 1 if src < 0 else (2 * n - 1 - src if src >= n else src)  # symmetric padding
            ws.append(wgt)
            vals.append(v[min(max(src, 0), n - 1)])
        out.append(sum(a * b for a, b in zip(ws, vals)) / sum(ws))
    return out


def test_batched_asymmetric_matches_definition():
    """A batch resized to a different scale per axis equals the 1-D definition applied per axis."""
    torch.manual_seed(1)
    x = torch.rand(2, 1, 11, 9, dtype=torch.float64)
    out = imresize_to(x, (5, 20))  # shrink rows (antialiased), enlarge columns
    for n in range(2):
        cols = [_naive_resize_axis(x[n, 0, :, j].tolist(), 5) for j in range(9)]  # (9, 5)
        ref = [_naive_resize_axis([cols[j][i] for j in range(9)], 20) for i in range(5)]
        # BasicSR computes the kernel weights in float32, hence ~1e-7 rather than float64 agreement
        torch.testing.assert_close(out[n, 0], torch.tensor(ref, dtype=torch.float64), rtol=0, atol=2e-6)


def test_numpy_wrapper_and_errors():
    img = np.random.default_rng(0).random((20, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(imresize_np(img, (10, 8)), imresize(img, 0.5), atol=2e-6)
    assert imresize_np(img[..., 0], (5, 4)).shape == (5, 4)
    with pytest.raises(ValueError, match='out_size'):
        imresize_to(torch.zeros(1, 4, 4), (0, 2))
    with pytest.raises(TypeError, match='floating'):
        imresize_to(torch.zeros(1, 4, 4, dtype=torch.uint8), (2, 2))


def test_constant_image_is_preserved():
    x = torch.full((1, 1, 23, 17), 0.37)
    torch.testing.assert_close(imresize_to(x, (10, 7)), torch.full((1, 1, 10, 7), 0.37))
    torch.testing.assert_close(imresize_to(x, (50, 41)), torch.full((1, 1, 50, 41), 0.37))
