"""Mixed precision (train.amp, val.amp, inference --bf16/--fp16), channels-last and non-finite losses, on the CPU."""
import logging
import math

import metasr_arch  # noqa: F401  (before basicsr)

import pytest
import torch

from metasr_arch.archs.meta_upsample_arch import MetaUpsample
from metasr_arch.models.metasr_gan_model import MetaSRGANModel
from metasr_arch.models.metasr_model import MetaSRModel
from metasr_arch.ops.geometry import axis_projection, resolve_scale
from metasr_arch.utils.amp import amp_dtype, autocast_supported, parse_compile
from metasr_arch.inference.runner import run_network
from reference import naive_meta_upscale
from test_training import NET, make_opt

# CPU autocast of torch >= 2.4 supports both; the tests below rely on it and say so if not
pytestmark = pytest.mark.skipif(not (autocast_supported('cpu', torch.bfloat16)
                                     and autocast_supported('cpu', torch.float16)),
                                reason='this torch has no bf16/fp16 CPU autocast')

# Head under autocast vs float32, max |diff| / max |float32|: the features and the predicted table
# are rounded to the autocast dtype once (unit roundoff 2^-8 for bf16, 2^-11 for fp16) and the
# k*k*C_in products are summed; measured 3.6e-3..4.4e-3 (bf16) and 3.3e-4..5.2e-4 (fp16).
HEAD_TOL = {torch.bfloat16: 1e-2, torch.float16: 1.5e-3}
SCALES = [2.0, 2.5, (1.5, 3.5), (3.0, 1.3)]


def head_and_input(seed: int = 0):
    torch.manual_seed(seed)
    head = MetaUpsample(16, 3, 3, hidden_channels=32)
    return head, torch.randn(2, 16, 11, 9)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('impl', ['phase', 'gather', 'im2col'])
@pytest.mark.parametrize('scale', SCALES)
def test_head_under_autocast_matches_float32(dtype, impl, scale):
    """Integer, non-integer and asymmetric scales: the MLP stays float32, the convolution runs in the
    autocast dtype, the result is within HEAD_TOL of float32 and exactly the operator on the rounded
    features and table (naive reference, float64)."""
    head, x = head_and_input()
    head.impl = impl
    mlp_dtypes = []
    head.pos2weight.register_forward_hook(lambda m, i, o: mlp_dtypes.append((i[0].dtype, o.dtype)))
    ref = head(x, scale=scale)
    with torch.autocast('cpu', dtype=dtype):
        out = head(x, scale=scale)
    assert mlp_dtypes[-1] == (torch.float32, torch.float32)  # position encoding and MLP in float32
    assert out.dtype == dtype and out.shape == ref.shape
    err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
    assert err <= HEAD_TOL[dtype], err

    # independent reference: the per-pixel weights from the float32 MLP, rounded like the features
    spec = resolve_scale(11, 9, scale)
    rows = axis_projection(11, spec.out_h, spec.r_v)
    cols = axis_projection(9, spec.out_w, spec.r_h)
    fv, fh = rows.frac.float(), cols.frac.float()
    pos = torch.stack([fv[:, None].expand(-1, spec.out_w), fh[None, :].expand(spec.out_h, -1),
                       torch.full((spec.out_h, spec.out_w), 1 / spec.r_v), torch.full((spec.out_h, spec.out_w),
                                                                                       1 / spec.r_h)], -1)
    with torch.no_grad():
        table = head.pos2weight(pos.reshape(-1, 4)).view(spec.out_h, spec.out_w, 3, 3, 16, 3)
    exact = naive_meta_upscale(x.to(dtype).double(), table.to(dtype).double(), spec.r_v, spec.r_h,
                               spec.out_h, spec.out_w, 3)
    # the only error left is the output's own rounding (plus float32 accumulation)
    eps = torch.finfo(dtype).eps
    assert ((out.double() - exact).abs() <= eps * exact.abs() + 1e-6).all()


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_head_backward_under_autocast(dtype):
    """Gradients reach the float32 MLP and the input in float32, close to float32's."""
    head, x = head_and_input(1)
    grads = {}
    for name, ctx in (('f32', torch.autocast('cpu', enabled=False)), ('amp', torch.autocast('cpu', dtype=dtype))):
        head.zero_grad()
        xx = x.clone().requires_grad_(True)
        with ctx:
            out = head(xx, scale=(2.5, 1.5))
        out.float().square().mean().backward()
        grads[name] = [xx.grad] + [p.grad for p in head.parameters()]
    for a, b in zip(grads['amp'], grads['f32']):
        assert a.dtype == torch.float32 and torch.isfinite(a).all()
        assert (a - b).abs().max() <= 4 * HEAD_TOL[dtype] * b.abs().max()


def test_factorized_head_stays_float32_under_autocast():
    """The factorised path mixes the MLP's hidden layer into the sum: it runs in float32, exactly."""
    head, x = head_and_input(2)
    head.impl = 'factorized'
    ref = head(x, scale=(2.3, 1.7))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = head(x, scale=(2.3, 1.7))
    assert out.dtype == torch.float32 and torch.equal(out, ref)


def test_option_parsing_and_errors(tmp_path):
    assert amp_dtype('bf16', 'x') is torch.bfloat16 and amp_dtype('FP16', 'x') is torch.float16
    assert amp_dtype('off', 'x') is None and amp_dtype(None, 'x') is None and amp_dtype(False, 'x') is None
    assert parse_compile(True) == {'scope': 'trunk'} and parse_compile(False) is None
    assert parse_compile({'mode': 'max-autotune', 'dynamic': True}) == {'scope': 'trunk', 'mode': 'max-autotune',
                                                                      'dynamic': True}
    for train, match in ((dict(amp='fp32'), 'train.amp'), (dict(compile='yes'), 'train.compile'),
                         (dict(compile={'scope': 'head'}), 'train.compile.scope'),
                         (dict(compile={'mod': 'x'}), r"unknown keys \['mod'\]"),
                         (dict(channels_last='yes'), 'train.channels_last'),
                         (dict(grad_scaler=2.0), 'train.grad_scaler')):
        with pytest.raises(ValueError, match=match):
            MetaSRModel(make_opt(tmp_path, **train))
    opt = make_opt(tmp_path)
    opt['val']['amp'] = 'half'
    with pytest.raises(ValueError, match='val.amp'):
        MetaSRModel(opt)


def batch(it: int, size: int = 60) -> dict:
    return {'gt': torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(100 + it))}


def train(model, iters, logs=None):
    for it in iters:
        model.update_learning_rate(it)
        model.feed_data(batch(it))
        model.optimize_parameters(it)
        if logs is not None:
            logs.append(dict(model.get_current_log(), scale=model.current_scale()))


def test_bf16_training_finite_and_checkpoint_matches_weights(tmp_path):
    """A few bf16 iterations: finite losses close to float32's (but not equal: autocast is on), float32
    parameters, and a checkpoint whose float32 forward equals the trained network's."""
    logs = {}
    for amp in ('off', 'bf16'):
        torch.manual_seed(0)
        model = MetaSRModel(make_opt(tmp_path / amp, amp=amp))
        logs[amp] = []
        train(model, range(1, 5), logs[amp])
    assert all(math.isfinite(rec['l_pix']) for rec in logs['bf16'])
    first_off, first_bf16 = logs['off'][0]['l_pix'], logs['bf16'][0]['l_pix']
    assert first_off != first_bf16 and first_bf16 == pytest.approx(first_off, rel=2e-2)
    assert all(p.dtype == torch.float32 for p in model.net_g.parameters())
    assert 'skipped_nonfinite' not in logs['bf16'][-1] and 'amp_scale' not in logs['bf16'][-1]

    model.save(0, 4)
    ckpt = torch.load(tmp_path / 'bf16' / 'exp' / 'models' / 'net_g_4.pth', weights_only=True)
    from basicsr.archs import build_network
    net = build_network(dict(NET)).eval()
    net.load_state_dict(ckpt['params'])
    trained = model.net_g.eval()
    x = torch.rand(1, 3, 13, 11)
    with torch.no_grad():
        assert torch.equal(net(x, scale=(2.5, 1.5)), trained(x, scale=(2.5, 1.5)))
        with torch.autocast('cpu', dtype=torch.bfloat16):  # and its bf16 forward stays close
            y16 = net(x, scale=(2.5, 1.5)).float()
        y32 = net(x, scale=(2.5, 1.5))
    assert (y16 - y32).abs().max() <= 2e-2 * y32.abs().max()


def test_fp16_grad_scaler_state_survives_resume(tmp_path):
    """fp16 with GradScaler: the scaler's scale and growth tracker are in the training state; a run resumed
    at iteration 3 continues with the same loss scales, the same per-batch scales and the same weights as
    the uninterrupted run."""
    # gradients overflow fp16 above about 2^22 here: the scale backs off 4 times, then grows every 2 steps
    scaler_opt = {'init_scale': 2.0 ** 26, 'growth_interval': 2}
    torch.manual_seed(0)
    full = MetaSRModel(make_opt(tmp_path / 'a', amp='fp16', grad_scaler=scaler_opt))
    logs = []
    train(full, range(1, 4), logs)
    full.save(0, 3)
    train(full, range(4, 8), logs)
    amp_scales = [rec['amp_scale'] for rec in logs]
    assert amp_scales[0] < 2.0 ** 26 and any(b > a for a, b in zip(amp_scales, amp_scales[1:])), amp_scales
    assert all(math.isfinite(rec['l_pix']) for rec in logs)

    exp = tmp_path / 'a' / 'exp'
    state = torch.load(exp / 'training_states' / '3.state', weights_only=True)
    assert state['grad_scaler']['scale'] == amp_scales[2]
    opt = make_opt(tmp_path / 'b', amp='fp16', grad_scaler=scaler_opt)
    opt['path']['pretrain_network_g'] = str(exp / 'models' / 'net_g_3.pth')
    resumed = MetaSRModel(opt)
    resumed.resume_training(state)
    assert resumed.grad_scaler.state_dict() == state['grad_scaler']
    logs_resumed = []
    train(resumed, range(4, 8), logs_resumed)
    assert [(r['amp_scale'], r['scale']) for r in logs_resumed] == [(r['amp_scale'], r['scale']) for r in logs[3:]]
    for a, b in zip(full.net_g.parameters(), resumed.net_g.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize('amp', ['off', 'bf16', 'fp16'])
def test_nonfinite_loss_is_skipped_counted_and_logged(tmp_path, amp, caplog):
    model = MetaSRModel(make_opt(tmp_path, amp=amp))
    train(model, [1])
    before = [p.detach().clone() for p in model.net_g.parameters()]
    adam_steps = [s['step'].clone() for s in model.optimizer_g.state.values()]
    scale_before = model.grad_scaler.get_scale() if amp == 'fp16' else None
    real_loss = model.cri_pix
    model.cri_pix = lambda out, gt: real_loss(out, gt) * float('nan')
    with caplog.at_level(logging.WARNING):
        train(model, [2])
    assert 'non-finite generator loss' in caplog.text and 'step skipped (1 so far)' in caplog.text
    assert model.get_current_log()['skipped_nonfinite'] == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.net_g.parameters()))
    assert [s['step'] for s in model.optimizer_g.state.values()] == adam_steps  # Adam did not step either
    if amp == 'fp16':
        assert model.grad_scaler.get_scale() == scale_before  # not mistaken for an overflow
    model.cri_pix = real_loss
    train(model, [3])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.net_g.parameters()))


def test_val_amp_runs_validation_in_bf16(tmp_path):
    opt = make_opt(tmp_path)
    opt['val']['amp'] = 'bf16'
    model = MetaSRModel(opt)
    model.feed_data({'lq': torch.rand(1, 3, 10, 8), 'gt': torch.rand(1, 3, 25, 16), 'scale': (2.5, 2.0)})
    model.test()
    with torch.no_grad():
        ref = model.net_g(model.lq, scale=(2.5, 2.0))
    assert model.output.dtype == torch.float32 and not torch.equal(model.output, ref)
    assert (model.output - ref).abs().max() <= 2e-2 * ref.abs().max()


def test_channels_last_training_matches_contiguous(tmp_path):
    """``train.channels_last`` changes the layout of the 4-D weights and inputs, not the result."""
    outs = {}
    for flag in (False, True):
        torch.manual_seed(0)
        model = MetaSRModel(make_opt(tmp_path / str(flag), channels_last=flag))
        train(model, [1, 2])
        convs = [p for p in model.net_g.parameters() if p.dim() == 4]
        assert all(p.is_contiguous(memory_format=torch.channels_last) == flag for p in convs if p.shape[-1] > 1)
        outs[flag] = [p.detach().contiguous() for p in model.net_g.parameters()]
    for a, b in zip(outs[False], outs[True]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_gan_model_bf16_and_fp16_steps(tmp_path):
    """Both optimizers step through one GradScaler (fp16) or plainly (bf16); R1 iterations keep float32."""
    from test_gan import _gan_opt, _save_vgg_prefix
    vgg_path = str(tmp_path / 'vgg.pth')
    _save_vgg_prefix(vgg_path)
    for amp in ('bf16', 'fp16'):
        torch.manual_seed(0)
        model = MetaSRGANModel(_gan_opt(tmp_path / amp, vgg_path, amp=amp))  # R1 every 2nd iteration
        d_before = [p.detach().clone() for p in model.net_d.parameters()]
        g_before = [p.detach().clone() for p in model.net_g.parameters()]
        for it in (1, 2):
            model.update_learning_rate(it)
            model.feed_data({'gt': torch.rand(2, 3, 48, 48)})
            model.optimize_parameters(it)
        log = model.get_current_log()
        assert all(math.isfinite(v) for k, v in log.items() if k.startswith('l_'))
        assert 'l_d_r1' in log and ('amp_scale' in log) == (amp == 'fp16')
        assert any(not torch.equal(a, b) for a, b in zip(d_before, model.net_d.parameters()))
        assert any(not torch.equal(a, b) for a, b in zip(g_before, model.net_g.parameters()))


def test_run_network_bf16_and_fp16_on_cpu():
    from basicsr.archs import build_network
    torch.manual_seed(0)
    net = build_network(dict(NET)).eval()
    x = torch.rand(1, 3, 12, 10)
    ref = run_network(net, x, scale=(2.5, 1.5))
    for flag in ('fp16', 'bf16'):
        out = run_network(net, x, scale=(2.5, 1.5), **{flag: True})
        assert out.dtype == torch.float32 and out.shape == ref.shape and not torch.equal(out, ref)
        assert (out - ref).abs().max() <= 2e-2 * ref.abs().max()
    with pytest.raises(ValueError, match='at most one'):
        run_network(net, x, scale=2, fp16=True, bf16=True)


def test_infer_cli_bf16_on_cpu(tmp_path):
    import cv2
    import numpy as np
    from metasr_arch.infer import main
    from test_infer import expected, make_net, rgb_image, NET_OPT
    path = tmp_path / 'net.pth'
    torch.save({'params': make_net(0).state_dict(), 'network_opt': dict(NET_OPT)}, path)
    img = rgb_image(16, 14)
    cv2.imwrite(str(tmp_path / 'a.png'), img)
    ref = expected(make_net(0), img, scale=2.5).astype(int)
    for flag in ('--bf16', '--fp16'):
        out_dir = tmp_path / flag.strip('-')
        assert main([str(tmp_path / 'a.png'), '--ckpt', str(path), '--scale', '2.5', '--device', 'cpu', '--quiet',
                     flag, '-o', str(out_dir), '--allow-arch', 'InferTinyNet']) == 0
        got = cv2.imread(str(out_dir / 'a_X2.50.png')).astype(int)
        assert np.abs(got - ref).max() <= 3  # 8-bit levels
