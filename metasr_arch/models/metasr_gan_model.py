"""MetaSRGANModel: adversarial Meta-SR training at arbitrary (r_v, r_h).

MetaSRModel's per-batch scale, on-the-fly LR synthesis, per-scale validation and checkpoints, plus
BasicSR's SRGANModel recipe: a discriminator ``network_d``, pixel + perceptual + GAN losses built
through BasicSR's loss registry, ``net_d_iters`` / ``net_d_init_iters``, EMA of the generator; and
StyleGAN2's lazy R1 penalty (``train.r1_opt``, e.g. ``{type: R1Loss, loss_weight: 10, interval: 16}``).

The SR output of a batch has the size set by its scale, different from batch to batch: the
discriminator must accept any size (``StyleGAN2ResnetDiscriminator``: any size >= 32). BasicSR's
``UNetDiscriminatorSN`` needs multiples of 8: set ``train.d_crop_multiple: 8`` to crop the
discriminator's inputs (output and GT alike, top-left) to the largest multiple of 8 per axis.
Options are described in ``docs/gan.md``.
"""
from collections import OrderedDict
from typing import Optional

import torch
from torch import nn

from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.utils.registry import MODEL_REGISTRY
from metasr_arch.utils.amp import autocast
from metasr_arch.utils.registry import register
from .metasr_model import MetaSRModel


def _set_requires_grad(net: nn.Module, flag: bool) -> None:
    for p in net.parameters():
        p.requires_grad = flag


@register(MODEL_REGISTRY)
class MetaSRGANModel(MetaSRModel):
    """MetaSRModel with a discriminator and adversarial (+ R1) training.

    Training options (``train``) beyond MetaSRModel's: ``gan_opt`` (required; BasicSR's ``GANLoss``),
    ``optim_d`` (required), ``r1_opt`` (optional, ``R1Loss``), ``net_d_iters`` (1), ``net_d_init_iters``
    (0), ``d_crop_multiple`` (1). Network: ``network_d`` (required); ``path.pretrain_network_d``,
    ``path.strict_load_d``, ``path.param_key_d`` as SRGANModel.

    Shapes: the generator maps lq (N, C, h, w) to output (N, C, H, W) at the batch's scale; the
    discriminator maps (N, C, H', W') (H', W' = H, W cropped to ``d_crop_multiple``) to logits of any shape.
    """

    def init_training_settings(self) -> None:
        train_opt = self.opt['train']
        for key in ('gan_opt', 'optim_d'):
            if not train_opt.get(key):
                raise ValueError(f'train.{key} is required by MetaSRGANModel')
        if not self.opt.get('network_d'):
            raise ValueError('network_d is required by MetaSRGANModel (e.g. {type: StyleGAN2ResnetDiscriminator})')
        self.d_crop_multiple = int(train_opt.get('d_crop_multiple', 1))
        if self.d_crop_multiple < 1:
            raise ValueError(f'train.d_crop_multiple must be >= 1, got {train_opt.get("d_crop_multiple")!r}')
        self.net_d_iters = int(train_opt.get('net_d_iters', 1))
        self.net_d_init_iters = int(train_opt.get('net_d_init_iters', 0))
        if self.net_d_iters < 1:
            raise ValueError(f'train.net_d_iters must be >= 1, got {self.net_d_iters}')

        # net_d first: the parent's init_training_settings calls our setup_optimizers, which needs it.
        self.net_d = self.model_to_device(build_network(self.opt['network_d']))
        self.print_network(self.net_d)
        load_path = self.opt['path'].get('pretrain_network_d')
        if load_path is not None:
            self.load_network(self.net_d, load_path, self.opt['path'].get('strict_load_d', True),
                              self.opt['path'].get('param_key_d', 'params'))
        self.net_d.train()

        # G losses (pixel / perceptual), EMA, optimizers (G and D) and schedulers (one per optimizer)
        super().init_training_settings()

        self.cri_gan = build_loss(train_opt['gan_opt']).to(self.device)
        self.cri_r1: Optional[nn.Module] = build_loss(train_opt['r1_opt']).to(self.device) \
            if train_opt.get('r1_opt') else None

    def setup_optimizers(self) -> None:
        super().setup_optimizers()  # optimizer_g
        optim_d = dict(self.opt['train']['optim_d'])  # a copy: BasicSR pops 'type' from the options
        optim_type = optim_d.pop('type')
        self.optimizer_d = self.get_optimizer(optim_type, self.net_d.parameters(), **optim_d)
        self.optimizers.append(self.optimizer_d)

    def d_input(self, img: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H - H % m, W - W % m) with m = ``train.d_crop_multiple`` (top-left crop)."""
        m = self.d_crop_multiple
        if m == 1:
            return img
        h, w = img.shape[-2] - img.shape[-2] % m, img.shape[-1] - img.shape[-1] % m
        if h == 0 or w == 0:
            raise ValueError(f'an output of {tuple(img.shape[-2:])} is smaller than train.d_crop_multiple = {m}')
        return img[..., :h, :w]

    def optimize_parameters(self, current_iter: int) -> None:
        # Under train.amp the generator and discriminator forwards and losses run in autocast; one
        # GradScaler serves both optimizers (updated once per iteration, as torch.amp recommends).
        stepped = False
        self.trunk_freeze.update(current_iter)  # train.freeze_trunk_iters (models.finetune)

        # ---------------- generator
        _set_requires_grad(self.net_d, False)  # no D gradients from the G step
        self.optimizer_g.zero_grad()
        g_step = current_iter % self.net_d_iters == 0 and current_iter > self.net_d_init_iters
        with torch.set_grad_enabled(g_step), self.train_autocast():  # D-only iterations need no generator graph
            self.output = self.amp_float(self.net_forward(self.net_g_train, self.train_input(self.lq)))
        if g_step:
            with self.train_autocast():
                l_g_total, loss_dict = self.pixel_losses(self.output, self.gt, prefix='l_g_')
                fake_g_pred = self.net_d(self.d_input(self.output))
                l_g_gan = self.cri_gan(self.amp_float(fake_g_pred), True, is_disc=False)
            l_g_total += l_g_gan
            loss_dict['l_g_gan'] = l_g_gan
            stepped |= self.backward_step(l_g_total, self.optimizer_g, 'generator')
        else:
            loss_dict = OrderedDict()

        # ---------------- discriminator
        _set_requires_grad(self.net_d, True)
        self.optimizer_d.zero_grad()
        real = self.d_input(self.gt.detach())
        use_r1 = self.cri_r1 is not None and self.cri_r1.is_active(current_iter)
        if use_r1:
            # the real pass doubles as R1's: grad wrt the real images needs them as graph leaves
            real = real.clone().requires_grad_(True)
        # R1 differentiates D's output with respect to its input: that pass stays float32, where a
        # low-precision input gradient could underflow
        with autocast(self.device, None if use_r1 else self.amp_dtype):
            real_d_pred = self.amp_float(self.net_d(real))
            l_d_real = self.cri_gan(real_d_pred, True, is_disc=True)
        loss_dict['l_d_real'] = l_d_real
        loss_dict['out_d_real'] = torch.mean(real_d_pred.detach())
        l_d_real_total = l_d_real
        if use_r1:
            l_d_r1 = self.cri_r1(real_d_pred, real)
            loss_dict['l_d_r1'] = l_d_r1
            l_d_real_total = l_d_real_total + l_d_r1
        d_ok = self.loss_is_finite(l_d_real_total, 'discriminator (real)')
        if d_ok:  # backward now: the real graph is freed before the fake pass
            self.grad_scaler.scale(l_d_real_total).backward()
        with self.train_autocast():
            fake_d_pred = self.amp_float(self.net_d(self.d_input(self.output.detach())))
            l_d_fake = self.cri_gan(fake_d_pred, False, is_disc=True)
        loss_dict['l_d_fake'] = l_d_fake
        loss_dict['out_d_fake'] = torch.mean(fake_d_pred.detach())
        if d_ok and self.loss_is_finite(l_d_fake, 'discriminator (fake)'):
            self.grad_scaler.scale(l_d_fake).backward()
            self.grad_scaler.step(self.optimizer_d)
            stepped = True

        self.log_dict = self.reduce_loss_dict(loss_dict)
        self.log_dict['scale_v'], self.log_dict['scale_h'] = self.scale
        self.finish_steps(stepped)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def save(self, epoch: int, current_iter: int) -> None:
        """net_g (and its EMA), net_d, and the training state."""
        if hasattr(self, 'net_g_ema'):
            self.save_network([self.net_g, self.net_g_ema], 'net_g', current_iter, param_key=['params', 'params_ema'])
        else:
            self.save_network(self.net_g, 'net_g', current_iter)
        self.save_network(self.net_d, 'net_d', current_iter)
        self.save_training_state(epoch, current_iter)
