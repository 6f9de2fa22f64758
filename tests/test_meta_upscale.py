"""Every implementation of the operator against the naive loop reference (values and gradients)."""
import pytest
import torch

from metasr_arch.archs import MetaUpsample
from metasr_arch.ops import axis_projection, meta_upscale, phase_table_conv, position_encoding, resolve_scale
from metasr_arch.ops.meta_upscale import choose_table_mode
from reference import naive_meta_upscale, naive_positions

CASES = [
    # (h, w, scale or out_size, k)
    (5, 7, (2.5, 3.7), 3),  # asymmetric, non-integer
    (6, 5, 4, 3),  # symmetric integer
    (5, 6, (1.3, 1.7), 5),  # k = 5
    (4, 5, 2.5, 3),  # symmetric non-integer
    (7, 9, {'out_size': (17, 20)}, 3),  # exact size, odd
    (3, 4, 1.0, 3),  # identity scale
]


def _call_kwargs(spec):
    return dict(spec) if isinstance(spec, dict) else {'scale': spec}


def _ref_for(module, x, kw):
    k = module.kernel_size
    s = resolve_scale(x.shape[2], x.shape[3], **kw)
    pos = naive_positions(x.shape[2], x.shape[3], s.out_h, s.out_w, s.r_v, s.r_h, dtype=x.dtype)
    weight = module.pos2weight(pos).view(s.out_h, s.out_w, k, k, module.in_channels, module.out_channels)
    return naive_meta_upscale(x, weight, s.r_v, s.r_h, s.out_h, s.out_w, k), weight


@pytest.mark.parametrize('impl', ['im2col', 'gather', 'phase', 'factorized'])
@pytest.mark.parametrize('h,w,spec,k', CASES)
@pytest.mark.parametrize('dtype,tol', [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_module_matches_naive(impl, h, w, spec, k, dtype, tol):
    torch.manual_seed(0)
    m = MetaUpsample(4, 3, k, hidden_channels=16, impl=impl).to(dtype)
    x = torch.randn(2, 4, h, w, dtype=dtype)
    kw = _call_kwargs(spec)
    ref, _ = _ref_for(m, x, kw)
    out = m(x, **kw)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol * ref.abs().max().item())


@pytest.mark.parametrize('impl', ['im2col', 'gather'])
@pytest.mark.parametrize('h,w,spec,k', CASES)
def test_functional_matches_naive(impl, h, w, spec, k):
    torch.manual_seed(1)
    x = torch.randn(3, 2, h, w, dtype=torch.float64)
    kw = _call_kwargs(spec)
    s = resolve_scale(h, w, **kw)
    weight = torch.randn(s.out_h * s.out_w, k * k * 2 * 4, dtype=torch.float64)
    ref = naive_meta_upscale(x, weight.view(s.out_h, s.out_w, k, k, 2, 4), s.r_v, s.r_h, s.out_h, s.out_w, k)
    out = meta_upscale(x, weight, kernel_size=k, impl=impl, **kw)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-9)
    # the 6-D layout is accepted too
    out6 = meta_upscale(x, weight.view(s.out_h, s.out_w, k, k, 2, 4), kernel_size=k, impl=impl, **kw)
    torch.testing.assert_close(out6, ref, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize('mode', ['conv', 'row', 'row_t', 'pixel'])
@pytest.mark.parametrize('h,w,spec,k', CASES[:4] + [(3, 4, {'out_size': (5, 7)}, 3)])
def test_phase_table_modes_gradcheck(mode, h, w, spec, k):
    """All evaluation strategies of the phase table agree with autograd's numerical gradients."""
    torch.manual_seed(2)
    s = resolve_scale(h, w, **_call_kwargs(spec))
    rows, cols = axis_projection(h, s.out_h, s.r_v), axis_projection(w, s.out_w, s.r_h)
    x = torch.randn(2, 2, h, w, dtype=torch.float64, requires_grad=True)
    table = torch.randn(rows.phases.numel(), cols.phases.numel(), k, k, 2, 1, dtype=torch.float64,
                        requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: phase_table_conv(a, b, rows, cols, mode=mode), (x, table),
                                    fast_mode=True)


@pytest.mark.parametrize('impl', ['im2col', 'gather', 'phase', 'factorized'])
def test_module_gradients_match_naive(impl):
    """Gradients of x and of every Pos2Weight parameter equal those through the naive loop."""
    torch.manual_seed(3)
    m = MetaUpsample(3, 2, 3, hidden_channels=8, impl=impl).double()
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    ref, _ = _ref_for(m, x, {'scale': (2.5, 1.7)})
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad((ref * g).sum(), [x, *m.parameters()])
    out = m(x, scale=(2.5, 1.7))
    grads = torch.autograd.grad((out * g).sum(), [x, *m.parameters()])
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize('impl', ['gather', 'phase', 'factorized'])
def test_gradcheck_through_module(impl):
    torch.manual_seed(4)
    m = MetaUpsample(2, 1, 3, hidden_channels=4, impl=impl).double()
    x = torch.randn(1, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]
    # parameters as leaves so gradcheck perturbs the MLP weights too
    leaves = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def fn(inp, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (inp,), {'scale': (2.3, 3.1)})

    assert torch.autograd.gradcheck(fn, (x, *leaves), fast_mode=True)


def test_non_contiguous_and_batch_one():
    torch.manual_seed(5)
    m = MetaUpsample(3, 3, 3, hidden_channels=8, impl='phase').double()
    base = torch.randn(1, 7, 3, 6, dtype=torch.float64)
    x = base.permute(0, 2, 3, 1)[..., :5]  # (1, 3, 6, 5), non-contiguous
    assert not x.is_contiguous()
    ref, _ = _ref_for(m, x.contiguous(), {'scale': (1.5, 2.2)})
    for impl in ('phase', 'gather', 'im2col', 'factorized'):
        m.impl = impl
        torch.testing.assert_close(m(x, scale=(1.5, 2.2)), ref, rtol=1e-6, atol=1e-9)


def test_scale_from_float_pair_and_out_size_agree():
    """out_size=(H, W) means r = H/h; giving that scale gives the same output."""
    torch.manual_seed(6)
    m = MetaUpsample(2, 1, 3, hidden_channels=8).double()
    x = torch.randn(1, 2, 96 // 8, 144 // 8, dtype=torch.float64)
    a = m(x, out_size=(91, 180))
    b = m(x, scale=(91 / 12, 180 / 18))
    assert a.shape == (1, 1, 91, 180)
    torch.testing.assert_close(a, b)


def test_mode_choice_follows_waste():
    def mode(h, w, rv, rh):
        s = resolve_scale(h, w, (rv, rh))
        return choose_table_mode(h, w, axis_projection(h, s.out_h, s.r_v), axis_projection(w, s.out_w, s.r_h))

    assert mode(48, 48, 4, 4) == 'conv'  # sub-pixel convolution, no waste
    assert mode(48, 48, 2.5, 2.5) == 'conv'  # waste 2 x 2 beats per-row GEMMs (5x the cost per product)
    assert mode(48, 48, 1.3, 1.7) in ('row', 'row_t')  # conv would waste 10 x 10
    assert mode(96, 144, 721 / 96, 10) == 'row'  # conv would waste 96x; rows waste nothing
    assert mode(96, 144, 721 / 96, 1439 / 144) == 'pixel'  # every GEMM form wastes ~100x


def test_phase_dedup_counts():
    """A rational scale p/q has p distinct phases; 721/96 has 721."""
    assert axis_projection(48, 192, 4.0).phases.numel() == 4
    assert axis_projection(48, 120, 2.5).phases.numel() == 5
    assert axis_projection(48, 177, 3.7).phases.numel() == 37
    assert axis_projection(96, 721, 721 / 96).phases.numel() == 721


def test_position_encoding_layout():
    rows, cols = axis_projection(4, 10, 2.5), axis_projection(3, 6, 2.0)
    pos = position_encoding(rows, cols, 2.5, 2.0, per_pixel=True, dtype=torch.float64)
    ref = naive_positions(4, 3, 10, 6, 2.5, 2.0)
    torch.testing.assert_close(pos, ref, rtol=0, atol=1e-12)
    table_pos = position_encoding(rows, cols, 2.5, 2.0, dtype=torch.float64)
    assert table_pos.shape == (rows.phases.numel() * cols.phases.numel(), 4)
    # the phase-pair row used by pixel (i, j) holds that pixel's encoding
    i, j = 7, 5
    a, b = rows.phase_index[i], cols.phase_index[j]
    torch.testing.assert_close(table_pos[a * cols.phases.numel() + b], ref[i * 6 + j], rtol=0, atol=1e-8)


def test_empty_batch():
    m = MetaUpsample(3, 3)
    out = m(torch.zeros(0, 3, 5, 5), scale=2.5)
    assert out.shape == (0, 3, 12, 12)


@pytest.mark.parametrize('out_size', [(17, 23), (13, 9)])
@pytest.mark.parametrize('route', ['factorized', 'row_blocks'])
def test_over_budget_tables(monkeypatch, out_size, route):
    """Over the table budget, 'phase' goes factorised and 'cuda' to checkpointed row blocks: same values/grads."""
    import metasr_arch.archs.meta_upsample_arch as mua
    if route == 'row_blocks':  # exercise the block path on the CPU by standing in for the native op
        monkeypatch.setattr(mua, 'resolve_impl', lambda impl, device, allowed, dtype=None: 'cuda')
        monkeypatch.setattr('metasr_arch.ops.native.table_conv', lambda x, t, r, c: phase_table_conv(x, t, r, c))
    torch.manual_seed(7)
    m = MetaUpsample(3, 2, 3, hidden_channels=8, impl='phase').double()
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    ref, _ = _ref_for(m, x, {'out_size': out_size})
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad((ref * g).sum(), [x, *m.parameters()])
    per_pair = 8 * (m.pos2weight.meta_block[2].out_features + 16)
    monkeypatch.setattr(mua, 'TABLE_BUDGET_BYTES', per_pair * out_size[1] * 3)  # 3 rows per block
    out = m(x, out_size=out_size)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-9)
    grads = torch.autograd.grad((out * g).sum(), [x, *m.parameters()])
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_cached_geometry_created_in_inference_mode_still_supports_autograd():
    m = MetaUpsample(2, 1, hidden_channels=4)
    x = torch.randn(1, 2, 11, 13)
    with torch.inference_mode():
        m(x, scale=(3.3, 2.9))  # first call fills the caches
    out = m(x.requires_grad_(), scale=(3.3, 2.9))
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_listed_impls_are_accepted_by_their_api():
    """``available_impls(device, api)`` lists exactly the names that API runs on the device (issue 12):
    the functional default no longer lists 'phase'/'factorized', which ``meta_upscale`` refuses."""
    from metasr_arch import available_impls
    torch.manual_seed(0)
    m = MetaUpsample(4, 3, 3, hidden_channels=16).double()
    x = torch.randn(2, 4, 5, 7, dtype=torch.float64)
    ref, weight = _ref_for(m, x, {'scale': (2.5, 3.7)})
    functional = available_impls('cpu')
    for impl in functional:  # before the fix: "impl must be one of ('auto', 'im2col', 'gather', 'cuda'), got 'phase'"
        torch.testing.assert_close(meta_upscale(x, weight.detach(), scale=(2.5, 3.7), impl=impl), ref.detach())
    assert {'im2col', 'gather'} <= set(functional) and not {'phase', 'factorized'} & set(functional)
    assert functional == available_impls('cpu', api='functional')
    module = available_impls('cpu', api='module')
    assert set(functional) | {'phase', 'factorized'} == set(module)
    for impl in module:
        m.impl = impl
        torch.testing.assert_close(m(x, scale=(2.5, 3.7)), ref)
    with pytest.raises(ValueError, match="api must be one of \\('functional', 'module'\\), got 'head'"):
        available_impls('cpu', api='head')
