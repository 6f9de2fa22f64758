"""MetaSRModel: BasicSR's SRModel trained and evaluated at arbitrary (r_v, r_h).

Training: the dataset yields GT patches (``MetaSRGTDataset``); every batch gets one scale from the
``train.scale_sampler`` (a pure function of ``manual_seed`` and the iteration), the GT is cropped to
exactly the output size of a fixed LR patch (``train.lr_patch_size``) at that scale, and the LR is
made from that crop with MATLAB-compatible bicubic (``imresize_to``) on the model's device.
Pre-generated pairs (a batch with ``lq``, ``gt`` and ``scale``) are used as they are.

Validation/test: every val dataset at every ``val.scales`` entry (or pre-generated pairs at their
own scales); PSNR/SSIM per scale (Y channel, ``ceil(r)`` border per axis by default) beside the
bicubic baseline, best value per (dataset, scale), one JSON line per (dataset, scale) appended to
``metrics.jsonl`` and a markdown PSNR table (``psnr_table.md``) in the experiment/results folder.
Every option is described in ``docs/training.md``.

Speed options (``train.amp``, ``train.compile``, ``train.channels_last``, ``val.amp``): forward and
loss under ``torch.autocast``, fp16 with a ``GradScaler`` saved in the training state; non-finite losses
skip the step (counted in the log as ``skipped_nonfinite``).

Overridable steps (a GAN subclass keeps them): ``draw_scale``, ``synthesize_lq``, ``feed_data``,
``net_forward``, ``optimize_parameters``, ``current_scale``.
"""
import json
import math
import os
import time
from collections import OrderedDict
from copy import deepcopy
from os import path as osp
from typing import Dict, Iterator, List, Mapping, Optional, Set, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from basicsr.metrics import calculate_metric
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.dist_util import master_only
from basicsr.utils.registry import DATASET_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

from metasr_arch.archs.metasr_base import mark_residual_from_state, start_at_bicubic
from metasr_arch.archs.periodic import bicubic_for, is_periodic_w
from metasr_arch.losses.masked_loss import batch_mask, masked_pixel_loss
from metasr_arch.metrics.weighted import masked_psnr, scoring_inputs
from metasr_arch.models import finetune
from metasr_arch.ops.geometry import parse_scale, resolve_scale
from metasr_arch.utils.amp import all_finite, amp_dtype, amp_name, autocast, compile_for_training, parse_compile
from metasr_arch.utils import data_position, rng_state
from metasr_arch.utils.atomic import PERMANENT_WRITE_ERRORS, WriteError, atomic_write, atomic_write_bytes
from metasr_arch.utils.gridded_mask import check_periodic_batch
from metasr_arch.utils.naming import scale_tag
from metasr_arch.utils.registry import register
from metasr_arch.utils.safetensors_ckpt import read_network_checkpoint, save_safetensors_checkpoint
from metasr_arch.utils.scale_sampler import build_scale_sampler, parse_scale_list
from metasr_arch.inference.tiling import tiled_forward

Scale = Tuple[float, float]
DEFAULT_METRICS = OrderedDict([
    ('psnr', {'type': 'calculate_psnr', 'crop_border': 'auto', 'test_y_channel': True}),
    ('ssim', {'type': 'calculate_ssim', 'crop_border': 'auto', 'test_y_channel': True}),
])


# --------------------------------------------------------------------------- helpers
def plain(obj):
    """Options (OrderedDicts from BasicSR's YAML loader) as plain dicts/lists, loadable with weights_only."""
    return json.loads(json.dumps(obj))


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then ``os.replace`` (``utils.atomic``).

    A process killed during the write leaves the previous file under ``path`` intact; its temporary is
    removed by the next successful write into the folder.
    """
    atomic_write(path, lambda f: torch.save(obj, f), fsync=True)


def _pair(value, name: str) -> Tuple[int, int]:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        h, w = value
    else:
        h = w = value
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in (h, w)):
        raise ValueError(f'{name} must be a positive int or a pair [h, w] of positive ints, got {value!r}')
    return int(h), int(w)


def _border(crop_border, scale: Scale) -> Tuple[int, int]:
    if crop_border is None or crop_border == 'auto':
        return math.ceil(scale[0] - 1e-9), math.ceil(scale[1] - 1e-9)
    b = int(crop_border)
    return b, b


def _crop(img: np.ndarray, border: Tuple[int, int]) -> np.ndarray:
    bv, bh = border
    return img[bv:img.shape[0] - bv if bv else None, bh:img.shape[1] - bh if bh else None]


def _is_physical(metric_opt: Mapping) -> bool:
    """True for metrics that want fields in the data's units (``physical_units``, e.g. weighted RMSE)."""
    return bool(getattr(METRIC_REGISTRY.get(metric_opt['type']), 'physical_units', False))


def _batch_scale(scale) -> Scale:
    """One (r_v, r_h) from a collated ``scale`` entry ((N, 2) tensor, pair, number); all rows must agree."""
    if isinstance(scale, torch.Tensor):
        s = scale.reshape(-1, 2) if scale.dim() >= 1 and scale.shape[-1] == 2 else scale.reshape(-1, 1).repeat(1, 2)
        if not torch.allclose(s, s[:1].expand_as(s)):
            raise ValueError(f'a batch must share one scale, got {s.tolist()}')
        return parse_scale(s[0].tolist())
    return parse_scale(scale)


# --------------------------------------------------------------------------- option checks
def checkpoint_format(opt: Mapping) -> str:
    """``logger.save_checkpoint_format``: 'pth' (BasicSR's, default) or 'safetensors' (network weights only)."""
    fmt = (opt.get('logger') or {}).get('save_checkpoint_format') or 'pth'
    if fmt not in ('pth', 'safetensors'):
        raise ValueError(f"logger.save_checkpoint_format must be 'pth' or 'safetensors', got {fmt!r}")
    return fmt


def check_metasr_options(opt: Mapping) -> None:
    """Fail before anything is built on options that would only break later (names the option)."""
    checkpoint_format(opt)
    net_opt = opt.get('network_g') or {}
    kernel = int(net_opt.get('kernel_size', 3))
    if opt.get('is_train'):
        train = opt.get('train') or {}
        out_size = train.get('out_size')
        if out_size is None and train.get('scale_sampler') is None:
            raise ValueError('train.scale_sampler is required by MetaSRModel (or train.out_size for a fixed '
                             'output size), e.g. {type: uniform, v: [1.1, 4.0], step: 0.1, p_symmetric: 1.0}')
        if train.get('lr_patch_size') is None:
            raise ValueError('train.lr_patch_size is required by MetaSRModel (the LR patch (h, w), e.g. 48)')
        h, w = _pair(train['lr_patch_size'], 'train.lr_patch_size')
        if min(h, w) < kernel:
            raise ValueError(f'train.lr_patch_size = {train["lr_patch_size"]!r} is smaller than the Meta '
                             f'kernel (network_g.kernel_size = {kernel})')
        if out_size is not None:
            H, W = _pair(out_size, 'train.out_size')
            resolve_scale(h, w, out_size=(H, W))  # raises if smaller than the LR patch
            biggest = (H, W)
        else:
            sampler = build_scale_sampler(train['scale_sampler'], opt.get('manual_seed') or 0)
            spec = resolve_scale(h, w, sampler.max_scale)
            biggest = (spec.out_h, spec.out_w)
        amp_dtype(train.get('amp'), 'train.amp')
        parse_compile(train.get('compile'), 'train.compile')
        if not isinstance(train.get('channels_last', False), bool):
            raise ValueError(f'train.channels_last must be true or false, got {train.get("channels_last")!r}')
        scaler = train.get('grad_scaler')
        if scaler is not None and not isinstance(scaler, Mapping):
            raise ValueError(f'train.grad_scaler must be a dict of GradScaler options, got {scaler!r}')
        ds = (opt.get('datasets') or {}).get('train') or {}
        if ds.get('gt_size') is not None:
            gh, gw = _pair(ds['gt_size'], 'datasets.train.gt_size')
            if gh < biggest[0] or gw < biggest[1]:
                raise ValueError(f'datasets.train.gt_size = {ds["gt_size"]!r} is too small: the largest training '
                                 f'scale needs GT patches of {biggest[0]}x{biggest[1]} for lr_patch_size '
                                 f'{train["lr_patch_size"]!r}')
    val = opt.get('val')
    if val is not None:
        amp_dtype(val.get('amp'), 'val.amp')
        if val.get('scales') is not None:
            parse_scale_list(val['scales'], 'val.scales')
        if val.get('lr_size') is not None:
            _pair(val['lr_size'], 'val.lr_size')
        tile = val.get('tile')
        if tile is not None:
            if not isinstance(tile, Mapping) or 'size' not in tile:
                raise ValueError(f'val.tile must be a dict {{size: N, overlap: M}}, got {tile!r}')
            _pair(tile['size'], 'val.tile.size')
            if int(tile.get('overlap', 0)) < 0:
                raise ValueError(f'val.tile.overlap must be >= 0, got {tile.get("overlap")!r}')


@register(MODEL_REGISTRY)
class MetaSRModel(SRModel):
    """SRModel with one (r_v, r_h) per batch, LR made on the fly, and per-scale validation.

    Shapes: the network is called as ``net(lq (N, C, h, w), scale=(r_v, r_h))`` (or ``out_size=(H, W)``
    in fixed-size mode) and returns (N, C_out, H, W) = the GT crop's shape.
    """

    # utils.options_check calls it (through MODEL_REGISTRY) on the whole options file before anything is built
    check_options = staticmethod(check_metasr_options)

    def __init__(self, opt: dict):
        check_metasr_options(opt)
        finetune.skip_trunk_pretrained_when_loading(opt)
        if opt.get('val') is not None and not opt['val'].get('metrics'):
            opt['val']['metrics'] = deepcopy(DEFAULT_METRICS)
        self.current_iter = 0
        self.scale: Scale = (1.0, 1.0)
        self.out_size: Optional[Tuple[int, int]] = None
        self._validated_at: Set[Tuple[str, int]] = set()  # (dataset, iter) pairs validated in this process
        self.val_amp_dtype = amp_dtype((opt.get('val') or {}).get('amp'), 'val.amp')
        # training speed settings (init_training_settings sets them from train.*; defaults for test mode)
        self.amp_dtype: Optional[torch.dtype] = None
        self.channels_last = False
        self.skipped_nonfinite = 0
        super().__init__(opt)

    # ------------------------------------------------------------------ training settings
    def init_training_settings(self) -> None:
        train = self.opt['train']
        self.lr_patch_size = _pair(train['lr_patch_size'], 'train.lr_patch_size')
        self.fixed_out_size = _pair(train['out_size'], 'train.out_size') if train.get('out_size') else None
        self.scale_sampler = None if self.fixed_out_size else build_scale_sampler(
            train['scale_sampler'], self.opt.get('manual_seed') or 0)
        self.amp_dtype = amp_dtype(train.get('amp'), 'train.amp')
        with autocast(self.device, self.amp_dtype):  # fails now if torch cannot autocast to it on this device
            pass
        # fp16 needs loss scaling (its range ends at 65504); bf16 has float32's range and needs none
        self.grad_scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16,
                                                **(train.get('grad_scaler') or {}))
        self.channels_last = bool(train.get('channels_last', False))
        super().init_training_settings()
        start_at_bicubic(self.opt, self.get_bare_model(self.net_g), getattr(self, 'net_g_ema', None))
        compile_opts = parse_compile(train.get('compile'), 'train.compile')
        self.net_g_train = self.net_g if compile_opts is None else compile_for_training(
            self.net_g, compile_opts, self.get_bare_model(self.net_g))

    def model_to_device(self, net: nn.Module) -> nn.Module:
        """BasicSR's, plus DDP on CPU (gloo): BasicSR always passes a CUDA device id; channels-last
        parameters with ``train.channels_last`` (before DDP, which keeps the layout of its gradient buckets)."""
        if self.opt.get('is_train') and (self.opt.get('train') or {}).get('channels_last'):
            net = net.to(memory_format=torch.channels_last)
        if self.opt.get('dist') and self.device.type == 'cpu':
            return DistributedDataParallel(net.to(self.device),
                                           find_unused_parameters=self.opt.get('find_unused_parameters', False))
        return super().model_to_device(net)

    def update_learning_rate(self, current_iter: int, warmup_iter: int = -1) -> None:
        # BasicSR calls this right before feed_data: the iteration the next batch's scale is drawn for
        self.current_iter = current_iter
        super().update_learning_rate(current_iter, warmup_iter)

    # ------------------------------------------------------------------ scales and LR synthesis
    def draw_scale(self, current_iter: int) -> Scale:
        """(r_v, r_h) of iteration ``current_iter`` (same on every rank, unchanged by resuming)."""
        return self.scale_sampler(current_iter)

    def current_scale(self) -> Scale:
        """(r_v, r_h) of the batch fed last."""
        return self.scale

    def synthesize_lq(self, gt: torch.Tensor, scale: Scale, lr_size: Tuple[int, int],
                      out_size: Optional[Tuple[int, int]] = None,
                      phase: str = 'train') -> Tuple[torch.Tensor, torch.Tensor]:
        """LR of size ``lr_size`` from the top-left GT crop of the output size.

        Args:
            gt: (N, C, Hg, Wg) on the model's device.
            scale: (r_v, r_h); the output size is resolve_scale(lr_size, scale) unless ``out_size``.
            lr_size: (h, w).
            phase: 'train' or 'val' (which ``lq_quantize`` applies).

        Returns:
            lq (N, C, h, w) = imresize_to(gt_crop, (h, w)) (quantised if ``lq_quantize``), gt_crop (N, C, H, W).
        """
        h, w = lr_size
        if out_size is None:
            spec = resolve_scale(h, w, scale)
            out_size = (spec.out_h, spec.out_w)
        H, W = out_size
        if gt.shape[-2] < H or gt.shape[-1] < W:
            raise ValueError(f'GT of {gt.shape[-2]}x{gt.shape[-1]} is smaller than the {H}x{W} output of a '
                             f'{h}x{w} LR at scale {scale}: raise the dataset gt_size')
        gt = gt[..., :H, :W]
        lq = bicubic_for(self.net_g)(gt, (h, w))  # wraps along W for periodic_w networks
        return self.quantize_lq(lq, phase), gt

    def quantize_lq(self, lq: torch.Tensor, phase: str = 'train') -> torch.Tensor:
        """Clamp to [0, 1] and round to ``lq_quantize`` levels (255: as an 8-bit LR file); off by default.

        ``train.lq_quantize`` applies to training batches, ``val.lq_quantize`` (default: the train value)
        to LR synthesised for validation/test.
        """
        train_levels = (self.opt.get('train') or {}).get('lq_quantize')
        levels = train_levels if phase == 'train' else (self.opt.get('val') or {}).get('lq_quantize', train_levels)
        if not levels:
            return lq
        return torch.round(lq.clamp(0, 1) * levels) / levels

    def feed_data(self, data: Mapping) -> None:
        """Batch -> ``self.lq``, ``self.gt``, ``self.scale`` (and ``self.out_size`` in fixed-size mode).

        ``data``: {'gt': (N, C, Hg, Wg)} for on-the-fly LR synthesis at the drawn scale, or
        {'lq', 'gt', 'scale'} for pre-generated pairs (optional 'out_size': call by exact size).
        Gridded batches may carry 'mask' (valid points, cropped with the GT into ``self.mask``).
        """
        check_periodic_batch(is_periodic_w(self.net_g), data)
        if 'lq' in data:
            self.lq = data['lq'].to(self.device)
            if 'gt' in data:
                self.gt = data['gt'].to(self.device)
            self.out_size = tuple(int(v) for v in data['out_size']) if data.get('out_size') is not None else None
            if data.get('scale') is not None:
                self.scale = _batch_scale(data['scale'])
            elif self.out_size is not None:
                self.scale = (self.out_size[0] / self.lq.shape[-2], self.out_size[1] / self.lq.shape[-1])
            else:
                raise KeyError("a batch with 'lq' needs its 'scale' (or 'out_size')")
            self.mask = batch_mask(data.get('mask'), self.gt) if 'gt' in data else None
            return
        if 'gt' not in data:
            raise KeyError("MetaSRModel.feed_data needs 'gt' (GT patches) or 'lq'+'gt'+'scale' (pairs)")
        gt = data['gt'].to(self.device)
        if self.fixed_out_size is not None:
            self.out_size = self.fixed_out_size
            self.scale = (self.out_size[0] / self.lr_patch_size[0], self.out_size[1] / self.lr_patch_size[1])
        else:
            self.out_size = None
            self.scale = self.draw_scale(self.current_iter)
        self.lq, self.gt = self.synthesize_lq(gt, self.scale, self.lr_patch_size, self.out_size)
        self.mask = batch_mask(data.get('mask'), self.gt)

    # ------------------------------------------------------------------ forward / optimisation
    def net_forward(self, net: nn.Module, lq: torch.Tensor, tile: Optional[Mapping] = None) -> torch.Tensor:
        """``net`` at the current request (scale or exact size), tiled when ``tile`` is given."""
        request = {'out_size': self.out_size} if self.out_size is not None else {'scale': self.scale}
        if tile:
            out = tiled_forward(net, lq, tile=tile['size'], overlap=int(tile.get('overlap', 0)), **request)
        else:
            out = net(lq, **request)
        if self.opt.get('bicubic_skip', False):
            # global skip: the network predicts the residual over MATLAB bicubic (off by default); in
            # float32 under autocast, where a bf16 image would be rounded to about 8 bits
            with torch.autocast(lq.device.type, enabled=False):
                dtype = torch.promote_types(out.dtype, lq.dtype)
                out = out.to(dtype) + bicubic_for(net)(lq, tuple(out.shape[-2:])).to(dtype)
        return out

    # ------------------------------------------------------------------ mixed precision steps
    def train_autocast(self):
        """``torch.autocast`` of ``train.amp`` for the training forward and loss (no-op when off)."""
        return autocast(self.device, self.amp_dtype)

    def amp_float(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` as float32 under ``train.amp`` (losses are computed from float32), unchanged otherwise."""
        return t.float() if self.amp_dtype is not None else t

    def train_input(self, lq: torch.Tensor) -> torch.Tensor:
        """``lq`` in the training memory format (channels-last with ``train.channels_last``)."""
        return lq.contiguous(memory_format=torch.channels_last) if self.channels_last else lq

    def loss_is_finite(self, loss: torch.Tensor, what: str = 'generator') -> bool:
        """Whether ``loss`` is finite (on every rank); if not, warn and count it in ``skipped_nonfinite``."""
        if all_finite(loss, bool(self.opt.get('dist'))):
            return True
        self.skipped_nonfinite += 1
        get_root_logger().warning(
            f'iter {self.current_iter}: non-finite {what} loss ({float(loss.detach()):g}) at scale '
            f'{tuple(self.scale)} (amp {amp_name(self.amp_dtype)}); step skipped ({self.skipped_nonfinite} so far)')
        return False

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, what: str = 'generator') -> bool:
        """``loss.backward()`` and ``optimizer.step()``, through the GradScaler with fp16.

        A non-finite loss (on any rank) skips both (``loss_is_finite``): nothing of it reaches the
        weights. With fp16 the scaler also skips steps whose gradients overflow and lowers its scale
        (standard loss scaling, not counted as non-finite losses). Returns whether the step was taken;
        the caller then calls ``finish_steps`` once per iteration.
        """
        if not self.loss_is_finite(loss, what):
            return False
        self.grad_scaler.scale(loss).backward()
        self.grad_scaler.step(optimizer)
        return True

    def finish_steps(self, stepped: bool) -> None:
        """Update the fp16 loss scale after the iteration's steps; add the AMP counters to ``log_dict``."""
        if stepped:
            self.grad_scaler.update()
        if self.grad_scaler.is_enabled():
            self.log_dict['amp_scale'] = float(self.grad_scaler.get_scale())
        if self.skipped_nonfinite:
            self.log_dict['skipped_nonfinite'] = self.skipped_nonfinite

    def pixel_losses(self, output: torch.Tensor, gt: torch.Tensor, prefix: str = 'l_') -> Tuple[torch.Tensor, dict]:
        """Pixel and perceptual/style losses of ``output`` against ``gt``: (their sum, named terms)."""
        l_total = 0
        loss_dict = OrderedDict()
        mask = getattr(self, 'mask', None)  # valid points of masked gridded fields
        if self.cri_pix:
            l_pix = masked_pixel_loss(self.cri_pix, output, gt, mask)
            l_total += l_pix
            loss_dict[prefix + 'pix'] = l_pix
        if self.cri_perceptual:
            l_percep, l_style = self.cri_perceptual(output if mask is None else torch.where(mask, output, gt), gt)
            if l_percep is not None:
                l_total += l_percep
                loss_dict[prefix + 'percep'] = l_percep
            if l_style is not None:
                l_total += l_style
                loss_dict[prefix + 'style'] = l_style
        return l_total, loss_dict

    def setup_optimizers(self) -> None:
        """BasicSR's, or head and trunk groups with ``train.trunk_lr_scale``; ``train.freeze_trunk_iters``
        (``models.finetune``)."""
        if not finetune.setup_generator_optimizer(self):
            super().setup_optimizers()
        self.trunk_freeze = finetune.attach_freeze(self)

    def optimize_parameters(self, current_iter: int) -> None:
        self.trunk_freeze.update(current_iter)
        self.optimizer_g.zero_grad()
        with self.train_autocast():
            self.output = self.amp_float(self.net_forward(self.net_g_train, self.train_input(self.lq)))
            l_total, loss_dict = self.pixel_losses(self.output, self.gt)
        stepped = self.backward_step(l_total, self.optimizer_g)
        self.log_dict = self.reduce_loss_dict(loss_dict)
        self.log_dict['scale_v'], self.log_dict['scale_h'] = self.scale
        self.finish_steps(stepped)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def test(self) -> None:
        """``self.output`` from the EMA network if any, else net_g (eval mode, no grad, tiled per ``val.tile``,
        under autocast with ``val.amp``; the output is float32 then)."""
        net = self.net_g_ema if hasattr(self, 'net_g_ema') else self.get_bare_model(self.net_g)
        was_training = net.training
        net.eval()
        with torch.no_grad(), autocast(self.device, self.val_amp_dtype):
            self.output = self.net_forward(net, self.lq, (self.opt.get('val') or {}).get('tile'))
        if self.val_amp_dtype is not None:
            self.output = self.output.float()
        net.train(was_training)

    # ------------------------------------------------------------------ validation
    def val_scales(self) -> List[Scale]:
        """Scales from ``val.scales`` (default [2, 3, 4])."""
        return parse_scale_list((self.opt.get('val') or {}).get('scales') or [2, 3, 4], 'val.scales')

    def val_pairs(self, data: Mapping) -> Iterator[dict]:
        """Feedable pairs of one val item: the item itself if pre-generated, else one per val scale.

        For a GT-only item and scale r: LR size floor(GT / r) per axis, GT cropped to
        resolve_scale(LR, r), LR = imresize_to(GT crop) (``val.lr_size``: LR of exactly that size, output
        at the GT's size).
        """
        if 'lq' in data:
            yield dict(data)
            return
        gt = data['gt'].to(self.device)
        H, W = gt.shape[-2:]
        lr_size = (self.opt.get('val') or {}).get('lr_size')
        if lr_size is not None:
            h, w = _pair(lr_size, 'val.lr_size')
            lq, gt_c = self.synthesize_lq(gt, (H / h, W / w), (h, w), (H, W), phase='val')
            yield {'lq': lq, 'gt': gt_c, 'out_size': (H, W)}
            return
        for r_v, r_h in self.val_scales():
            h, w = int(math.floor(H / r_v + 1e-9)), int(math.floor(W / r_h + 1e-9))
            if h < 1 or w < 1:
                raise ValueError(f'val image {H}x{W} is too small for scale {(r_v, r_h)}')
            lq, gt_c = self.synthesize_lq(gt, (r_v, r_h), (h, w), phase='val')
            yield {'lq': lq, 'gt': gt_c, 'scale': (r_v, r_h)}

    def _to_metric_image(self, t: torch.Tensor, float_data: bool) -> np.ndarray:
        if float_data:  # gridded data: no 8-bit rounding; x255 so BasicSR's 255-peak PSNR means range 1
            return t[0].detach().float().cpu().numpy().transpose(1, 2, 0).astype(np.float64) * 255.
        return tensor2img([t.detach().cpu()])

    def _to_physical(self, t: torch.Tensor, dataset) -> np.ndarray:
        """(H, W, C) float64 in the dataset's units: its ``denormalize`` if it has one, else the values as they are."""
        arr = t[0].detach().double().cpu().numpy().transpose(1, 2, 0)
        return dataset.denormalize(arr) if hasattr(dataset, 'denormalize') else arr

    def _metric_values(self, img: np.ndarray, gt: np.ndarray, scale: Scale, float_data: bool,
                       physical: Optional[Tuple[np.ndarray, np.ndarray]] = None, mask: Optional[np.ndarray] = None,
                       lat: Optional[np.ndarray] = None) -> Dict[str, float]:
        """Every ``val.metrics`` entry; metrics marked ``physical_units`` (the latitude-weighted ones) get
        ``physical`` = (img, gt) in the data's units, with no border cropped unless ``crop_border`` says so,
        the rows' latitudes ``lat`` and the valid points ``mask`` (H, W, C); with a mask, PSNR counts the
        valid points only and other metrics see the truth at missing points."""
        out = {}
        for name, mopt in self.opt['val']['metrics'].items():
            mopt = dict(mopt)
            if physical is not None and _is_physical(mopt):
                mopt['crop_border'] = _border(mopt.get('crop_border', 0), scale)
                extra = {k: v for k, v in (('lat', lat), ('mask', mask)) if v is not None}
                out[name] = float(calculate_metric({'img': physical[0], 'img2': physical[1], **extra}, mopt))
                continue
            border = _border(mopt.pop('crop_border', 'auto'), scale)
            if mask is not None and mopt['type'] == 'calculate_psnr':
                out[name] = masked_psnr(img, gt, mask, border)
                continue
            if mask is not None:
                img = np.where(mask, img, gt)
            if float_data:
                mopt['test_y_channel'] = False
            mopt['crop_border'] = 0  # BasicSR crops both axes alike; the per-axis border is applied here
            out[name] = float(calculate_metric({'img': _crop(img, border), 'img2': _crop(gt, border)}, mopt))
        return out

    def _save_path(self, dataset_name: str, img_name: str, tag: str, current_iter, ext: str, what: str = '') -> str:
        vis = self.opt['path']['visualization']
        if self.opt['is_train']:
            return osp.join(vis, dataset_name, f'{img_name}_{tag}{what}_{current_iter}.{ext}')
        suffix = self.opt['val'].get('suffix') or self.opt['name']
        return osp.join(vis, dataset_name, f'{img_name}_{tag}{what}_{suffix}.{ext}')

    def _save(self, t: torch.Tensor, img: np.ndarray, path: str, float_data: bool, dataset=None) -> None:
        if float_data:  # (C, H, W) float32, in the data's units when the dataset can denormalise
            os.makedirs(osp.dirname(path), exist_ok=True)
            np.save(path, self._to_physical(t, dataset).transpose(2, 0, 1).astype(np.float32))
        else:
            imwrite(img, path)

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img: bool) -> None:
        if self.opt['is_train'] and isinstance(current_iter, int):
            # BasicSR's final validation runs one (or two) past total_iter: report the real iteration
            current_iter = min(current_iter, int(self.opt['train']['total_iter']))
        dataset = dataloader.dataset
        dataset_name = dataset.opt['name']
        # BasicSR validates once more after the last iteration; when total_iter is a multiple of
        # val_freq the weights are those just validated, so repeating it would only add duplicate
        # metrics.jsonl records (and minutes on large validation sets).
        if self.opt['is_train'] and (dataset_name, current_iter) in self._validated_at:
            get_root_logger().info(f'Validation {dataset_name}: already done at iter {current_iter} '
                                   '(same weights); see the PSNR table above.')
            return
        self._validated_at.add((dataset_name, current_iter))
        float_data = bool(getattr(dataset, 'float_data', False))
        save_bicubic = bool(self.opt['val'].get('save_bicubic', False))
        metric_names = list(self.opt['val']['metrics'].keys())
        physical = any(_is_physical(m) for m in self.opt['val']['metrics'].values())
        sums: Dict[Scale, Dict[str, float]] = OrderedDict()
        counts: Dict[Scale, int] = OrderedDict()
        skipped_empty = 0
        start = time.time()
        for data in dataloader:
            path = (data.get('lq_path') or data.get('gt_path'))[0]
            img_name = osp.splitext(osp.basename(path))[0]
            for pair in self.val_pairs(data):
                pair.setdefault('mask', data.get('mask'))
                self.feed_data(pair)
                mask, lat = scoring_inputs(self.mask, dataset, self.gt.shape[-2])
                if mask is not None and not mask.any():  # a crop of missing points only: nothing to score
                    skipped_empty += 1
                    continue
                self.test()
                scale = self.scale
                bicubic = bicubic_for(self.net_g)(self.lq.float(), tuple(self.gt.shape[-2:]))
                sr_img = self._to_metric_image(self.output, float_data)
                gt_img = self._to_metric_image(self.gt, float_data)
                bic_img = self._to_metric_image(bicubic, float_data)
                phys = [self._to_physical(t, dataset) for t in (self.output, bicubic, self.gt)] if physical else None
                values = self._metric_values(sr_img, gt_img, scale, float_data, phys and (phys[0], phys[2]), mask, lat)
                values.update({f'{k}_bicubic': v for k, v in self._metric_values(
                    bic_img, gt_img, scale, float_data, phys and (phys[1], phys[2]), mask, lat).items()})
                if data.get('mask') is not None:  # masked data: every field says how much of it was scored
                    values['valid_fraction'] = 1.0 if mask is None else float(mask.mean())
                acc = sums.setdefault(scale, OrderedDict((k, 0.0) for k in values))
                for k, v in values.items():
                    acc[k] += v
                counts[scale] = counts.get(scale, 0) + 1
                if save_img:
                    tag, ext = scale_tag(*scale), 'npy' if float_data else 'png'
                    self._save(self.output, sr_img, self._save_path(dataset_name, img_name, tag, current_iter, ext),
                               float_data, dataset)
                    if save_bicubic:
                        self._save(bicubic, bic_img,
                                   self._save_path(dataset_name, img_name, tag, current_iter, ext, '_bicubic'),
                                   float_data, dataset)
                del self.lq, self.output, self.gt
        if skipped_empty:
            get_root_logger().warning(f'Validation {dataset_name}: {skipped_empty} field(s) had no valid point '
                                      '(all missing) and were not scored')
        results = OrderedDict((s, OrderedDict((k, v / counts[s]) for k, v in acc.items())) for s, acc in sums.items())
        self.metric_results = results
        self._record_validation(dataset_name, results, metric_names, current_iter, tb_logger, time.time() - start)

    def _record_validation(self, dataset_name: str, results, metric_names: List[str], current_iter, tb_logger,
                           seconds: float) -> None:
        """Best values per (dataset, scale), log, tensorboard, metrics.jsonl and psnr_table.md."""
        logger = get_root_logger()
        lines = [f'Validation {dataset_name} ({seconds:.1f} s)']
        for scale, values in results.items():
            key = f'{dataset_name}@{scale_tag(*scale)}'
            self._initialize_best_metric_results(key)
            for m in metric_names:
                self._update_best_metric_result(key, m, values[m], current_iter)
            best = self.best_metric_results[key]
            lines.append(f'\t{scale_tag(*scale):>12}  ' + '  '.join(
                f'{m}: {values[m]:.4f} (bicubic {values[m + "_bicubic"]:.4f}, best {best[m]["val"]:.4f} @ '
                f'{best[m]["iter"]})' for m in metric_names))
            if tb_logger:
                for m, v in values.items():
                    tb_logger.add_scalar(f'metrics/{dataset_name}/{scale_tag(*scale)}/{m}', v, current_iter)
        logger.info('\n'.join(lines))
        self._write_reports(dataset_name, results, current_iter)

    def output_root(self) -> str:
        """experiments/<name> when training, results/<name> when testing."""
        paths = self.opt['path']
        return paths.get('experiments_root') if self.opt['is_train'] else paths.get('results_root')

    @master_only
    def _write_reports(self, dataset_name: str, results, current_iter) -> None:
        root = self.output_root()
        if root is None:
            return
        jsonl = osp.join(root, 'metrics.jsonl')
        try:  # a read-only or full disk: one error naming the file, not a traceback
            os.makedirs(root, exist_ok=True)
            with open(jsonl, 'a') as f:
                for scale, values in results.items():
                    record = {'iter': current_iter, 'dataset': dataset_name, 'scale': [scale[0], scale[1]]}
                    record.update(values)
                    f.write(json.dumps(record) + '\n')
        except OSError as err:
            raise WriteError.of(err, jsonl) from None
        if not hasattr(self, '_table_rows'):
            self._table_rows = OrderedDict()
        for scale, values in results.items():
            self._table_rows[(dataset_name, scale)] = (current_iter, values)
        table = self.psnr_table()
        get_root_logger().info('PSNR table (model vs bicubic)\n' + table)
        table_path = osp.join(root, 'psnr_table.md')
        try:
            atomic_write_bytes(table_path, table.encode('utf-8'))
        except OSError as err:
            raise WriteError.of(err, table_path) from None

    def psnr_table(self) -> str:
        """Markdown table of the latest validation per (dataset, scale): PSNR model vs bicubic, then one
        table for each physical-unit metric (latitude-weighted RMSE ...; lower is better there)."""
        metrics = self.opt['val']['metrics']
        first = 'psnr' if 'psnr' in metrics else next(iter(metrics))
        physical = [m for m in metrics if m != first and _is_physical(metrics[m])]
        return '\n'.join([self._metric_table(first)] + [self._metric_table(m, 4) for m in physical])

    def _metric_table(self, metric: str, digits: int = 2) -> str:
        rows = [f'| dataset | scale (r_v x r_h) | iter | {metric} model | {metric} bicubic | gain |',
                '|---|---|---|---:|---:|---:|']
        for (dataset_name, scale), (it, values) in self._table_rows.items():
            model, bicubic = values[metric], values[f'{metric}_bicubic']
            fraction = values.get('valid_fraction', 1.0)
            masked = f' (masked: {fraction:.0%} valid points)' if fraction < 1 else ''
            rows.append(f'| {dataset_name}{masked} | {scale[0]:g} x {scale[1]:g} | {it} | {model:.{digits}f} | '
                        f'{bicubic:.{digits}f} | {model - bicubic:+.{digits}f} |')
        return '\n'.join(rows) + '\n'

    # ------------------------------------------------------------------ checkpoints
    def _network_opt_for(self, net_label: str) -> Optional[dict]:
        key = 'network_' + net_label[len('net_'):] if net_label.startswith('net_') else None
        return plain(self.opt[key]) if key and isinstance(self.opt.get(key), Mapping) else None

    def _train_normalization(self) -> Optional[dict]:
        """Per-variable statistics of the training set, when its dataset has them (``normalization_for``)."""
        ds_opt = (self.opt.get('datasets') or {}).get('train')
        if not isinstance(ds_opt, Mapping) or 'type' not in ds_opt:
            return None
        resolve = getattr(DATASET_REGISTRY.get(ds_opt['type']), 'normalization_for', None)
        return plain(resolve(dict(ds_opt))) if resolve is not None else None

    @master_only
    def save_network(self, net, net_label: str, current_iter, param_key='params') -> None:
        """BasicSR's ``save_network``, written atomically and with the network options (``network_opt``)."""
        if current_iter == -1:
            current_iter = 'latest'
        safetensors = checkpoint_format(self.opt) == 'safetensors'
        save_path = osp.join(self.opt['path']['models'],
                             f'{net_label}_{current_iter}.{"safetensors" if safetensors else "pth"}')
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        if len(nets) != len(keys):
            raise ValueError('save_network: net and param_key lengths differ')
        save_dict = {}
        for net_, key in zip(nets, keys):
            state = self.get_bare_model(net_).state_dict()
            save_dict[key] = OrderedDict((k[7:] if k.startswith('module.') else k, v.cpu()) for k, v in state.items())
        network_opt = self._network_opt_for(net_label)
        if network_opt is not None:
            save_dict['network_opt'] = network_opt
            # inference must add the same bicubic skip as training (MetaSRModel option bicubic_skip)
            save_dict['bicubic_skip'] = bool(self.opt.get('bicubic_skip', False))
            normalization = self._train_normalization()
            if normalization is not None:  # inference must normalise inputs and undo it like training did
                save_dict['normalization'] = normalization
        self._atomic_save(save_dict, save_path, save_safetensors_checkpoint if safetensors else atomic_torch_save)

    @master_only
    def save_training_state(self, epoch: int, current_iter: int) -> None:
        """BasicSR's ``save_training_state``, written atomically."""
        if current_iter == -1:
            return
        state = {'epoch': epoch, 'iter': current_iter, 'optimizers': [o.state_dict() for o in self.optimizers],
                 'schedulers': [s.state_dict() for s in self.schedulers]}
        scaler = getattr(self, 'grad_scaler', None)
        if scaler is not None and scaler.is_enabled():
            state['grad_scaler'] = scaler.state_dict()  # fp16 loss scale and its growth tracker
        state['rng'] = rng_state.capture()  # the data pipeline's crops and flips continue exactly on resume
        where = data_position.position()  # samples of the current epoch already trained on
        if where is not None:
            state['data_position'] = where
        self._atomic_save(state, osp.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, resume_state: Mapping) -> None:
        """BasicSR's (optimizers, schedulers), plus the random states of the data pipeline (states saved by
        this version) and the fp16 GradScaler's state when both sides use it."""
        super().resume_training(resume_state)
        if resume_state.get('rng'):
            rng_state.restore(resume_state['rng'])
        data_position.resume_at(resume_state.get('data_position'))
        scaler = getattr(self, 'grad_scaler', None)
        if scaler is None or not scaler.is_enabled():
            return
        if resume_state.get('grad_scaler'):
            scaler.load_state_dict(resume_state['grad_scaler'])
        else:
            get_root_logger().warning('train.amp is fp16 but the resumed training state has no GradScaler state '
                                      f'(trained with another amp setting?): starting at scale {scaler.get_scale()}')

    def _atomic_save(self, obj, path: str, writer=atomic_torch_save, retries: int = 3) -> None:
        """Write ``obj`` to ``path`` atomically; a failure that may pass (a full or flaky network disk) is
        retried ``retries - 1`` times, 1 s apart. Raises ``WriteError`` naming ``path`` when it cannot be
        written (at once for a read-only or forbidden folder): the run stops rather than go on unsaved."""
        for attempt in range(retries):
            try:
                writer(obj, path)
                return
            except OSError as err:
                if err.errno in PERMANENT_WRITE_ERRORS or attempt == retries - 1:
                    raise WriteError.of(err, path) from None
                get_root_logger().warning(f'Saving {path} failed ({err}); {retries - attempt - 1} retries left')
                time.sleep(1)

    def load_network(self, net: nn.Module, load_path: str, strict: bool = True, param_key: str = 'params') -> None:
        """BasicSR's ``load_network`` with ``weights_only=True`` (checkpoints hold tensors and plain options);
        ``.safetensors`` files too (``read_network_checkpoint``). Weights of a ``bicubic_skip`` network trained
        from scratch make ``net`` a residual network first (``mark_residual_from_state``), so their
        ``bicubic_residual`` flag is not reported as a key the network lacks."""
        logger = get_root_logger()
        net = self.get_bare_model(net)
        ckpt = read_network_checkpoint(load_path)
        if param_key is not None:
            if param_key not in ckpt and 'params' in ckpt:
                logger.info(f'Loading: {param_key} does not exist in {load_path}, use params.')
                param_key = 'params'
            if param_key not in ckpt:
                raise KeyError(f'{load_path} has no {param_key!r} (keys: {sorted(ckpt)})')
            ckpt = ckpt[param_key]
        state = OrderedDict((k[7:] if k.startswith('module.') else k, v) for k, v in ckpt.items())
        logger.info(f'Loading {net.__class__.__name__} model from {load_path}, with param key: [{param_key}].')
        mark_residual_from_state(net, state)  # before BasicSR's key comparison
        self._print_different_keys_loading(net, state, strict)
        net.load_state_dict(state, strict=strict)
