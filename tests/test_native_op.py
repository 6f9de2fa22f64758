"""Native meta-upscale op (ops/meta_upscale, metasr_arch/ops/native.py).

(a) On any machine with nvcc: the CUDA sources compile (the extension build runs; a broken build fails).
(b) CPU kernels (compiled from the same per-task functions as the CUDA kernels) against
    ``phase_table_conv`` and the naive loop reference, gradients, gradcheck, opcheck, torch.compile.
(c) CUDA: the same plus float16/bfloat16 and a weight tensor with more than 2^31 elements (skipped
    with a reason where there is no CUDA device).

The extension is built once per session (module-scoped fixture) into the usual cache
($METASR_EXT_DIR or ~/.cache/metasr_arch), so later sessions load it at once.
"""
import time
import warnings

import pytest
import torch

import metasr_arch  # noqa: F401
from metasr_arch.archs import MetaUpsample
from metasr_arch.ops import axis_projection, meta_upscale, native, phase_table_conv, resolve_scale
from metasr_arch.ops.build import main as build_main
from metasr_arch.ops.geometry import AxisProjection
from metasr_arch.ops.meta_upscale import MODULE_IMPLS, available_impls, per_pixel_projection, resolve_impl
from reference import naive_meta_upscale

HAS_NVCC = torch.version.cuda is not None and native.cuda_home() is not None
HAS_CUDA = torch.cuda.is_available()
NO_CUDA = 'needs a CUDA device (none visible)'

# Tolerances of the reduced-precision kernels against a float64 evaluation of the same (rounded)
# inputs, relative to the largest reference magnitude: products and sums are float32, only the
# inputs and the final result are rounded (fp16: 11-bit, bf16: 8-bit mantissa).
REDUCED_TOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture(scope='module')
def ext():
    """The built extension: the CUDA variant where nvcc exists (its CPU kernels are then the ones
    tested here), else the CPU variant. A failing build errors the tests; it never skips them."""
    variant = 'cuda' if HAS_NVCC else 'cpu'
    obstacle = native._build_obstacle(variant)
    if obstacle is not None:
        pytest.skip(f'the native extension cannot be built here: {obstacle}')
    return native.load_extension(variant)


# ----------------------------------------------------------------------------------------------
# cases


def make_case(n, c_in, c_out, h, w, scale=None, out_size=None, k=3, per_pixel=False, dtype=torch.float64,
              device='cpu', seed=0):
    """Random x (N, C_in, h, w), table (Pv, Ph, k, k, C_in, C_out) and projections."""
    spec = resolve_scale(h, w, scale, out_size)
    rows = axis_projection(h, spec.out_h, spec.r_v, device)
    cols = axis_projection(w, spec.out_w, spec.r_h, device)
    if per_pixel:
        rows, cols = per_pixel_projection(rows), per_pixel_projection(cols)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, h, w, generator=gen, dtype=torch.float64).to(device, dtype)
    table = torch.randn(rows.phases.numel(), cols.phases.numel(), k, k, c_in, c_out, generator=gen,
                        dtype=torch.float64).to(device, dtype) / (k * (c_in ** 0.5))
    return x, table, rows, cols, spec


def per_pixel_weight(table, rows, cols):
    """(H, W, k, k, C_in, C_out) weights of every output pixel."""
    return table[rows.phase_index][:, cols.phase_index]


def maps(rows, cols):
    return rows.lr_index, rows.phase_index, cols.lr_index, cols.phase_index


CASES = [  # (n, c_in, c_out, h, w, scale, out_size, k, per_pixel)
    pytest.param(2, 5, 3, 7, 9, (4.0, 4.0), None, 3, False, id='x4-N2'),
    pytest.param(1, 4, 3, 6, 7, (2.5, 3.7), None, 3, False, id='x2.5x3.7-N1'),
    pytest.param(3, 3, 5, 5, 6, (1.3, 1.7), None, 5, False, id='x1.3x1.7-k5-N3'),
    pytest.param(2, 6, 1, 5, 7, None, (13, 22), 3, False, id='out13x22-odd'),
    pytest.param(2, 3, 2, 4, 5, (2.2, 1.6), None, 3, True, id='per-pixel'),
    pytest.param(1, 2, 6, 3, 4, (3.0, 2.0), None, 5, True, id='per-pixel-k5-Cout6'),
]


# ----------------------------------------------------------------------------------------------
# (a) build


@pytest.mark.slow
def test_cuda_sources_compile_with_nvcc():
    if not HAS_NVCC:
        pytest.skip('no CUDA toolkit (nvcc + headers) or a CPU-only torch: the CUDA sources cannot be compiled')
    module = native.load_extension('cuda')  # raises with the compiler's error when the build breaks
    assert module.with_cuda()
    assert callable(module.seed_loop_forward) and callable(module.seed_loop_backward)


def test_build_cli_reports_the_built_module(ext, capsys):
    args = [] if ext.with_cuda() else ['--cpu-only']
    assert build_main(args) == 0
    assert ext.__file__ in capsys.readouterr().out


def test_build_cli_fails_with_the_reason(monkeypatch, capsys):
    monkeypatch.setattr(native, '_modules', {})
    monkeypatch.setattr(native, '_errors', {})
    monkeypatch.setattr(native, '_build_obstacle', lambda variant: 'no compiler (test stand-in)')
    assert build_main(['--cpu-only']) == 1
    assert 'no compiler (test stand-in)' in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# (b) CPU kernels


@pytest.mark.parametrize('n, c_in, c_out, h, w, scale, out_size, k, per_pixel', CASES)
def test_cpu_forward_backward_match_references_float64(ext, n, c_in, c_out, h, w, scale, out_size, k, per_pixel):
    x, table, rows, cols, spec = make_case(n, c_in, c_out, h, w, scale, out_size, k, per_pixel)
    x.requires_grad_(True)
    table.requires_grad_(True)
    out = native.table_conv(x, table, rows, cols)
    ref = phase_table_conv(x, table, rows, cols, mode='pixel')
    naive = naive_meta_upscale(x.detach(), per_pixel_weight(table.detach(), rows, cols), spec.r_v, spec.r_h,
                               spec.out_h, spec.out_w, k)
    assert out.shape == (n, c_out, spec.out_h, spec.out_w)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.detach(), naive, rtol=1e-6, atol=1e-6)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, table), grad)
    want = torch.autograd.grad(ref, (x, table), grad)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('n, c_in, c_out, h, w, scale, out_size, k, per_pixel', CASES[:4])
def test_cpu_float32_within_1e4_relative(ext, n, c_in, c_out, h, w, scale, out_size, k, per_pixel):
    x, table, rows, cols, _ = make_case(n, c_in, c_out, h, w, scale, out_size, k, per_pixel)
    ref = phase_table_conv(x, table, rows, cols)
    out = native.table_conv(x.float(), table.float(), rows, cols)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_cpu_reduced_precision_within_documented_tolerance(ext, dtype):
    x, table, rows, cols, _ = make_case(2, 16, 3, 6, 7, (2.5, 3.7))
    x, table = x.to(dtype), table.to(dtype)
    xd, td = x.double().requires_grad_(True), table.double().requires_grad_(True)
    ref = phase_table_conv(xd, td, rows, cols)
    xr, tr = x.clone().requires_grad_(True), table.clone().requires_grad_(True)
    out = native.table_conv(xr, tr, rows, cols)
    assert out.dtype == dtype
    grad = torch.randn_like(ref).to(dtype)
    got = torch.autograd.grad(out, (xr, tr), grad)
    want = torch.autograd.grad(ref, (xd, td), grad.double())
    tol = REDUCED_TOL[dtype]
    for g, r in zip((out,) + got, (ref,) + want):
        torch.testing.assert_close(g.double(), r.detach(), rtol=tol, atol=tol * r.abs().max().item())


@pytest.mark.parametrize('per_pixel', [False, True], ids=['phase-table', 'per-pixel'])
def test_cpu_gradcheck_float64(ext, per_pixel):
    x, table, rows, cols, _ = make_case(2, 2, 1, 3, 3, (2.5, 1.5), per_pixel=per_pixel)
    x.requires_grad_(True)
    table.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: native.table_conv(a, b, rows, cols), (x, table))


def test_cpu_opcheck(ext):
    x, table, rows, cols, _ = make_case(2, 3, 2, 4, 5, (2.5, 1.7))
    x.requires_grad_(True)
    table.requires_grad_(True)
    torch.library.opcheck(torch.ops.metasr.table_conv.default, (x, table) + maps(rows, cols))
    grad = torch.randn(2, 2, rows.lr_index.numel(), cols.lr_index.numel(), dtype=torch.float64)
    for need_x, need_table in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(torch.ops.metasr.table_conv_backward.default,
                              (grad, x.detach(), table.detach()) + maps(rows, cols) + (need_x, need_table))


def test_cpu_non_contiguous_inputs(ext):
    x, table, rows, cols, _ = make_case(2, 4, 3, 6, 5, (2.5, 3.7))
    x_nc = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, channels-last-like strides
    table_nc = table.permute(5, 0, 1, 2, 3, 4).contiguous().permute(1, 2, 3, 4, 5, 0)
    sliced_rows = AxisProjection(*(torch.stack([t, t], 1)[:, 0] for t in rows))  # strided 1-D maps
    assert not x_nc.is_contiguous() and not table_nc.is_contiguous() and not sliced_rows.lr_index.is_contiguous()
    out = native.table_conv(x_nc, table_nc, sliced_rows, cols)
    torch.testing.assert_close(out, phase_table_conv(x, table, rows, cols), rtol=1e-6, atol=1e-6)
    # the raw op refuses non-contiguous tensors with a clear message instead of misreading them
    with pytest.raises(RuntimeError, match='x must be contiguous'):
        torch.ops.metasr.table_conv(x_nc, table, *maps(rows, cols))


def test_cpu_backward_is_deterministic(ext):
    x, table, rows, cols, _ = make_case(4, 8, 3, 8, 8, (4.0, 4.0), dtype=torch.float32)
    grad = torch.randn(4, 3, 32, 32)
    results = [torch.ops.metasr.table_conv_backward(grad, x, table, *maps(rows, cols), True, True) for _ in range(3)]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_cpu_only_requested_gradients_are_computed(ext):
    x, table, rows, cols, _ = make_case(1, 2, 1, 3, 3, (2.0, 2.0))
    grad = torch.ones(1, 1, 6, 6, dtype=torch.float64)
    gx, gt = torch.ops.metasr.table_conv_backward(grad, x, table, *maps(rows, cols), True, False)
    assert gx.shape == x.shape and gt.numel() == 0
    table.requires_grad_(True)
    (native.table_conv(x, table, rows, cols).sum()).backward()  # x needs no grad: only the table's
    assert table.grad is not None and table.grad.abs().sum() > 0


def test_cpu_bad_arguments_are_named(ext):
    x, table, rows, cols, _ = make_case(1, 3, 2, 4, 4, (2.0, 2.0))
    rl, rp, cl, cp = maps(rows, cols)
    op = torch.ops.metasr.table_conv
    with pytest.raises(RuntimeError, match='row_lr must be int64'):
        op(x, table, rl.int(), rp, cl, cp)
    with pytest.raises(RuntimeError, match='table has C_in = 3 but x has 2 channels'):
        op(x[:, :2].contiguous(), table, rl, rp, cl, cp)
    with pytest.raises(RuntimeError, match=r'row_phase\[.*outside the table'):
        op(x, table, rl, rp + 5, cl, cp)
    with pytest.raises(RuntimeError, match='col_lr must be non-decreasing'):
        op(x, table, rl, rp, cl.flip(0).contiguous(), cp)
    with pytest.raises(RuntimeError, match='col_phase must have 8 entries'):
        op(x, table, rl, rp, cl, cp[:-1].contiguous())
    with pytest.raises(RuntimeError, match='table dtype'):
        op(x, table.float(), rl, rp, cl, cp)
    with pytest.raises(TypeError, match='rows must be an AxisProjection'):
        native.table_conv(x, table, rl, cols)


def test_cpu_dtype_promotion_and_autocast(ext):
    x, table, rows, cols, _ = make_case(1, 3, 2, 4, 5, (2.5, 1.7))
    ref = phase_table_conv(x, table, rows, cols)
    mixed = native.table_conv(x.float(), table, rows, cols)  # float32 + float64 -> float64
    assert mixed.dtype == torch.float64
    torch.testing.assert_close(mixed, ref, rtol=1e-6, atol=1e-6)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = native.table_conv(x.float(), table.float(), rows, cols)
    assert out.dtype == torch.bfloat16
    tol = REDUCED_TOL[torch.bfloat16]
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())


def test_cpu_empty_batch(ext):
    x, table, rows, cols, _ = make_case(1, 2, 3, 3, 4, (2.0, 2.0))
    out = native.table_conv(x[:0], table, rows, cols)
    assert out.shape == (0, 3, 6, 8)


@pytest.mark.slow
def test_torch_compile_has_no_graph_break(ext):
    x, table, rows, cols, _ = make_case(2, 3, 2, 5, 6, (2.5, 1.7), dtype=torch.float32)
    torch._dynamo.reset()
    fn = torch.compile(lambda a, b: native.table_conv(a, b, rows, cols) * 2, fullgraph=True)
    xa, ta = x.clone().requires_grad_(True), table.clone().requires_grad_(True)
    out = fn(xa, ta)
    out.sum().backward()
    xb, tb = x.clone().requires_grad_(True), table.clone().requires_grad_(True)
    ref = phase_table_conv(xb, tb, rows, cols) * 2
    ref.sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ta.grad, tb.grad, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# availability, fallback, env switch (no build needed)


def test_cuda_impl_never_offered_for_cpu_tensors():
    assert 'cuda' not in available_impls('cpu')
    assert 'CUDA devices only' in native.unavailable_reason(torch.device('cpu'))


def test_env_switch(monkeypatch):
    cuda = torch.device('cuda')  # only the device type is looked at: no GPU needed
    monkeypatch.setenv(native.ENV_SWITCH, '0')
    assert not native.is_available(cuda)
    assert 'disabled by METASR_CUDA_EXT=0' in native.unavailable_reason(cuda)
    monkeypatch.setenv(native.ENV_SWITCH, '1')
    assert native.is_available(cuda)  # forced: a broken build raises at the call, never falls back
    monkeypatch.setenv(native.ENV_SWITCH, 'maybe')
    with pytest.raises(ValueError, match='METASR_CUDA_EXT must be 0, 1 or unset'):
        native.is_available(cuda)


def test_failed_build_falls_back_with_one_warning_and_explicit_cuda_raises(monkeypatch):
    monkeypatch.delenv(native.ENV_SWITCH, raising=False)
    monkeypatch.setattr(native, '_modules', {})
    monkeypatch.setattr(native, '_errors', {})
    monkeypatch.setattr(native, '_warned', False)
    monkeypatch.setattr(native, '_build_obstacle', lambda variant: 'no CUDA toolkit (test stand-in)')
    cuda = torch.device('cuda')
    with pytest.warns(RuntimeWarning, match='falling back .*no CUDA toolkit'):
        assert resolve_impl('auto', cuda) == 'gather'
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert resolve_impl('auto', cuda) == 'gather'  # no second warning
    with pytest.raises(RuntimeError, match="impl 'cuda' is not usable on cuda.*no CUDA toolkit"):
        resolve_impl('cuda', cuda)


# ----------------------------------------------------------------------------------------------
# run-time self-check (native.self_check / native.trusted), on the CPU build of the same op


class WrongKernel:
    """Test-only hook: stands in for the loaded extension (``native._extension_for``) with the real CPU
    kernels and one deliberate fault: 'forward' (last output pixel off, like an off-by-one at a border),
    'grad_table' (one gradient entry off), 'crash' (the kernel raises) or None (correct; counts calls)."""

    def __init__(self, ext, fault):
        self.ext, self.fault, self.calls = ext, fault, 0

    def forward(self, *args):
        self.calls += 1
        if self.fault == 'crash':
            raise RuntimeError('CUDA error: an illegal memory access was encountered (test stand-in)')
        out = self.ext.forward(*args)
        if self.fault == 'forward':
            out[..., -1, -1] += 0.05 * out.abs().max()
        return out

    def backward(self, *args):
        grad_x, grad_table = self.ext.backward(*args)
        if self.fault == 'grad_table' and grad_table.numel():
            grad_table.view(-1)[-1] += 0.05 * grad_table.abs().max()
        return grad_x, grad_table


@pytest.fixture
def fresh_checks(monkeypatch):
    """No remembered self-check results, no distrusted device, default environment."""
    monkeypatch.setattr(native, '_self_checks', {})
    monkeypatch.setattr(native, '_distrusted', {})
    monkeypatch.delenv(native.ENV_SWITCH, raising=False)
    monkeypatch.delenv(native.ENV_SELF_CHECK, raising=False)


def install_kernel(monkeypatch, ext, fault, auto_on_cpu=True):
    """Route the op through a ``WrongKernel`` and (by default) let 'auto' pick the op on CPU tensors, so
    that the CUDA dispatch logic runs here unchanged."""
    kernel = WrongKernel(ext, fault)
    monkeypatch.setattr(native, '_extension_for', lambda device: kernel)
    if auto_on_cpu:
        monkeypatch.setattr(native, 'AUTO_DEVICE_TYPES', ('cuda', 'cpu'))
    return kernel


def test_build_cli_self_check(ext, fresh_checks, monkeypatch, capsys):
    assert build_main(['--variant', 'auto', '--self-check', 'cpu']) == 0
    out = capsys.readouterr().out
    for dtype in ('float64', 'float32', 'float16', 'bfloat16'):
        assert f'self-check cpu {dtype}: ok in ' in out
    native.reset()
    install_kernel(monkeypatch, ext, 'crash', auto_on_cpu=False)
    assert build_main(['--variant', 'auto', '--self-check', 'cpu']) == 1
    assert "self-check cpu float32: FAILED in " in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        build_main(['--cpu-only', '--self-check', 'cuda'])
    assert exc.value.code == 2 and 'the cpu build runs on cpu only' in capsys.readouterr().err


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_self_check_passes_on_the_cpu_build_quickly(ext, fresh_checks, dtype):
    cpu_start = time.process_time()  # CPU time of all threads: not inflated by other jobs on a shared machine
    result = native.self_check('cpu', dtype)
    cpu_seconds = time.process_time() - cpu_start
    assert result.ok, result.detail
    assert result.device == 'cpu' and result.dtype == dtype
    assert 'within tolerance' in result.detail
    assert cpu_seconds < 1.0  # documented cost: tens of milliseconds on an idle machine
    assert native.self_check(torch.device('cpu'), dtype) is result  # cached per (device, dtype)


def test_self_check_leaves_rng_grad_mode_and_autocast_alone(ext, fresh_checks):
    torch.manual_seed(3)
    state = torch.get_rng_state()
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
        result = native.self_check('cpu', torch.float32)
    assert result.ok, result.detail
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize('fault, quantity', [('forward', 'forward differs'), ('grad_table', 'grad_table differs'),
                                             ('crash', 'RuntimeError: CUDA error: an illegal memory access')])
def test_self_check_catches_a_wrong_kernel(ext, fresh_checks, monkeypatch, fault, quantity):
    install_kernel(monkeypatch, ext, fault, auto_on_cpu=False)
    result = native.self_check('cpu', torch.bfloat16)
    assert not result.ok
    assert "case 'x4' in bfloat16" in result.detail and quantity in result.detail


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_auto_uses_the_native_op_after_its_self_check_passes(ext, fresh_checks, monkeypatch, dtype):
    kernel = install_kernel(monkeypatch, ext, None)
    torch.manual_seed(0)
    head = MetaUpsample(4, 3, hidden_channels=16).to(dtype)  # impl 'auto'
    x = torch.randn(2, 4, 5, 6, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        out = head(x, scale=(2.5, 3.7))
    assert native._self_checks[('cpu', dtype)].ok
    assert kernel.calls > 0  # the self-check's calls and the head's
    calls = kernel.calls
    head.impl = 'phase'
    ref = head(x, scale=(2.5, 3.7))
    assert kernel.calls == calls
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_wrong_kernel_is_caught_warned_once_and_auto_falls_back(ext, fresh_checks, monkeypatch):
    kernel = install_kernel(monkeypatch, ext, 'grad_table')
    x, table, rows, cols, spec = make_case(2, 4, 3, 5, 6, (2.5, 3.7), per_pixel=True, dtype=torch.float32)
    weight = per_pixel_weight(table, rows, cols)
    with pytest.warns(RuntimeWarning) as record:
        out = meta_upscale(x, weight, scale=(2.5, 3.7), impl='auto')
    assert len(record) == 1
    message = str(record[0].message)
    assert "self-check on cpu: case 'x4' in float32: grad_table differs" in message  # the case and the error
    assert "Falling back: impl='auto' uses the PyTorch implementations on cpu" in message  # the fallback
    torch.testing.assert_close(out, meta_upscale(x, weight, scale=(2.5, 3.7), impl='im2col'), rtol=1e-5, atol=1e-6)
    calls = kernel.calls
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no second warning, for other dtypes and APIs on that device either
        head = MetaUpsample(4, 3, hidden_channels=16).double()
        assert resolve_impl('auto', 'cpu', MODULE_IMPLS, dtype=torch.float64) == 'phase'
        out = head(x.double(), scale=(2.5, 3.7))
        assert resolve_impl('auto', 'cpu', dtype=torch.float32) == 'gather'
    assert kernel.calls == calls  # the distrusted op was not called again
    head.impl = 'phase'
    torch.testing.assert_close(out, head(x.double(), scale=(2.5, 3.7)))
    assert resolve_impl('cuda', 'cpu') == 'cuda'  # an explicit choice is not second-guessed


def test_forced_switch_turns_a_failed_self_check_into_an_error(ext, fresh_checks, monkeypatch):
    install_kernel(monkeypatch, ext, 'forward')
    monkeypatch.setenv(native.ENV_SWITCH, '1')
    head = MetaUpsample(4, 3, hidden_channels=16)
    with pytest.raises(RuntimeError, match=r"failed its self-check on cpu \(METASR_CUDA_EXT=1 forbids the fallback\)"
                                           r": case 'x4' in float32: forward differs"):
        head(torch.randn(1, 4, 5, 6), scale=2)


def test_skip_value_skips_the_self_check(ext, fresh_checks, monkeypatch):
    kernel = install_kernel(monkeypatch, ext, 'forward')
    monkeypatch.setenv(native.ENV_SELF_CHECK, '0')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert resolve_impl('auto', 'cpu', dtype=torch.float32) == 'cuda'
        x, table, rows, cols, _ = make_case(1, 2, 1, 3, 4, (2.0, 2.0), per_pixel=True, dtype=torch.float32)
        out = meta_upscale(x, per_pixel_weight(table, rows, cols), scale=2, impl='auto')
    assert native._self_checks == {} and kernel.calls == 1  # no check ran: the faulty result went through
    ref = meta_upscale(x, per_pixel_weight(table, rows, cols), scale=2, impl='im2col')
    assert not torch.allclose(out, ref, rtol=1e-4, atol=1e-4)
    monkeypatch.setenv(native.ENV_SELF_CHECK, 'later')
    with pytest.raises(ValueError, match='METASR_NATIVE_SELF_CHECK must be 0, 1 or unset'):
        resolve_impl('auto', 'cpu', dtype=torch.float32)


# ----------------------------------------------------------------------------------------------
# (c) CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
@pytest.mark.parametrize('n, c_in, c_out, h, w, scale, out_size, k, per_pixel', CASES)
def test_cuda_matches_pytorch_float32(ext, n, c_in, c_out, h, w, scale, out_size, k, per_pixel):
    x, table, rows, cols, _ = make_case(n, c_in, c_out, h, w, scale, out_size, k, per_pixel, dtype=torch.float32,
                                        device='cuda')
    x.requires_grad_(True)
    table.requires_grad_(True)
    out = native.table_conv(x, table, rows, cols)
    xd, td = x.detach().double().requires_grad_(True), table.detach().double().requires_grad_(True)
    ref = phase_table_conv(xd, td, rows, cols, mode='pixel')
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, table), grad)
    want = torch.autograd.grad(ref, (xd, td), grad.double())
    for g, r in zip((out,) + got, (ref,) + want):
        torch.testing.assert_close(g.double(), r.detach(), rtol=1e-4, atol=1e-4 * r.abs().max().item())


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_cuda_reduced_precision(ext, dtype):
    x, table, rows, cols, _ = make_case(4, 64, 3, 12, 12, (2.5, 3.7), device='cuda')
    x, table = x.to(dtype), table.to(dtype)
    xd, td = x.double().requires_grad_(True), table.double().requires_grad_(True)
    ref = phase_table_conv(xd, td, rows, cols)
    xr, tr = x.clone().requires_grad_(True), table.clone().requires_grad_(True)
    out = native.table_conv(xr, tr, rows, cols)
    grad = torch.randn_like(ref).to(dtype)
    got = torch.autograd.grad(out, (xr, tr), grad)
    want = torch.autograd.grad(ref, (xd, td), grad.double())
    tol = REDUCED_TOL[dtype]
    for g, r in zip((out,) + got, (ref,) + want):
        assert g.dtype == dtype
        torch.testing.assert_close(g.double(), r.detach(), rtol=tol, atol=tol * r.abs().max().item())


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
@pytest.mark.parametrize('per_pixel', [False, True], ids=['phase-table', 'per-pixel'])
def test_cuda_gradcheck_and_opcheck(ext, per_pixel):
    x, table, rows, cols, _ = make_case(2, 2, 1, 3, 3, (2.5, 1.5), per_pixel=per_pixel, device="cuda")
    x.requires_grad_(True)
    table.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: native.table_conv(a, b, rows, cols), (x, table))
    torch.library.opcheck(torch.ops.metasr.table_conv.default, (x, table) + maps(rows, cols))


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
def test_cuda_non_contiguous_deterministic_and_on_current_stream(ext):
    x, table, rows, cols, _ = make_case(3, 8, 3, 9, 7, (4.0, 4.0), dtype=torch.float32, device='cuda')
    x_nc = x.transpose(2, 3).contiguous().transpose(2, 3)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = native.table_conv(x_nc, table, rows, cols)
    stream.synchronize()
    torch.testing.assert_close(out, phase_table_conv(x, table, rows, cols), rtol=1e-4, atol=1e-5)
    grad = torch.randn_like(out)
    first = torch.ops.metasr.table_conv_backward(grad, x, table, *maps(rows, cols), True, True)
    second = torch.ops.metasr.table_conv_backward(grad, x, table, *maps(rows, cols), True, True)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
def test_cuda_meta_upscale_and_module_impl(ext):
    x, table, rows, cols, spec = make_case(2, 4, 3, 6, 7, (2.5, 3.7), per_pixel=True, dtype=torch.float32,
                                           device='cuda')
    weight = per_pixel_weight(table, rows, cols)
    out = meta_upscale(x, weight, scale=(2.5, 3.7), impl='cuda')
    torch.testing.assert_close(out, meta_upscale(x, weight, scale=(2.5, 3.7), impl='im2col'), rtol=1e-4, atol=1e-5)
    head = MetaUpsample(4, 3, impl='phase').cuda()
    ref = head(x, scale=(2.5, 3.7))
    head.impl = 'cuda'
    torch.testing.assert_close(head(x, scale=(2.5, 3.7)), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
def test_cuda_self_check_passes_and_auto_then_uses_the_op(ext, fresh_checks):
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        result = native.self_check('cuda', dtype)
        assert result.ok, result.detail
    native.reset()
    head = MetaUpsample(4, 3, hidden_channels=16).cuda()  # impl 'auto'
    x = torch.randn(2, 4, 6, 7, device='cuda')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        out = head(x, scale=(2.5, 3.7))
    key = (f'cuda:{torch.cuda.current_device()}', torch.float32)
    assert native._self_checks[key].ok  # checked before the first use
    head.impl = 'phase'
    torch.testing.assert_close(out, head(x, scale=(2.5, 3.7)), rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
def test_cuda_seed_loop_baseline_matches(ext):
    x, table, rows, cols, _ = make_case(2, 4, 3, 6, 7, (2.5, 3.7), per_pixel=True, dtype=torch.float32,
                                        device='cuda')
    forward, backward = native.seed_loop(ext)
    out = forward(x, table, rows.lr_index, cols.lr_index)
    torch.testing.assert_close(out, native.table_conv(x, table, rows, cols), rtol=1e-4, atol=1e-5)
    grad = torch.randn_like(out)
    gx, gw = backward(grad, x, table, rows.lr_index, cols.lr_index)
    want = torch.ops.metasr.table_conv_backward(grad, x, table, *maps(rows, cols), True, True)
    torch.testing.assert_close(gx, want[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw, want[1], rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
def test_cuda_weight_index_beyond_2_31(ext):
    # The seed's 721x1440 configuration: per-pixel weights of 240 channels hold 2.24e9 > 2^31 elements.
    free, _ = torch.cuda.mem_get_info()
    c_in, h, w, out_h, out_w = 240, 96, 144, 721, 1440
    need = out_h * out_w * 9 * c_in * 2 * 2 + (1 << 30)
    if free < need:
        pytest.skip(f'needs {need / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} GiB free')
    spec = resolve_scale(h, w, out_size=(out_h, out_w))
    rows = per_pixel_projection(axis_projection(h, out_h, spec.r_v, 'cuda'))
    cols = per_pixel_projection(axis_projection(w, out_w, spec.r_h, 'cuda'))
    assert out_h * out_w * 9 * c_in > 2**31
    x = torch.randn(1, c_in, h, w, device='cuda', dtype=torch.float16)
    weight = torch.randn(out_h, out_w, 3, 3, c_in, 1, device='cuda', dtype=torch.float16)
    out = native.table_conv(x, weight, rows, cols)
    grad = torch.ones_like(out)
    _, grad_w = torch.ops.metasr.table_conv_backward(grad, x, weight, *maps(rows, cols), False, True)
    x_pad = torch.nn.functional.pad(x.float(), (1, 1, 1, 1))
    for i, j in ((0, 0), (out_h // 2, 7), (out_h - 1, out_w - 1), (out_h - 1, 3)):  # last rows pass 2^31
        ip, jp = rows.lr_index[i].item(), cols.lr_index[j].item()
        patch = x_pad[0, :, ip:ip + 3, jp:jp + 3].permute(1, 2, 0)  # (k, k, C_in)
        want = (patch * weight[i, j, :, :, :, 0].float()).sum()
        torch.testing.assert_close(out[0, 0, i, j].float(), want, rtol=2e-3, atol=2e-3 * want.abs().item() + 0.1)
        torch.testing.assert_close(grad_w[i, j, :, :, :, 0].float(), patch.half().float(), rtol=0, atol=0)
