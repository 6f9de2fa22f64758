"""Fine-tuning a Meta-SR network from a pretrained trunk: two ``train:`` options.

* ``trunk_lr_scale``: the trunk's learning rate relative to the head's (e.g. 0.1). The generator's
  optimizer then has two parameter groups, the head (``upsample.*``, at ``optim_g.lr``) and everything
  else (the trunk, at ``lr * trunk_lr_scale``); BasicSR's schedulers and warm-up scale both groups.
* ``freeze_trunk_iters``: during iterations 1..N the trunk is not updated (the new head learns first).
  Its gradients are dropped right before each optimizer step (a step pre-hook, so DDP, fp16 loss
  scaling and the GAN model are covered), and outside DDP the trunk's ``requires_grad`` is switched
  off as well, which also saves its backward pass.

Both survive ``--auto_resume``: the groups' learning rates are in the optimizer state that BasicSR
saves, and the freeze depends on the iteration alone. Without ``trunk_lr_scale`` the optimizer is
BasicSR's single group (earlier training states still resume).
"""
import math
from numbers import Real
from typing import Dict, List, Mapping, Optional, Tuple

from torch import nn

from metasr_arch.utils.options import OptionError

HEAD_PREFIX = 'upsample.'  # MetaSRNet's head (MetaSR, MetaRDN, SwinIRMeta)


def parse_finetune(train_opt: Mapping) -> Tuple[Optional[float], int]:
    """(trunk_lr_scale or None, freeze_trunk_iters) of ``train:``, checked.

    Raises:
        OptionError naming ``train.trunk_lr_scale`` (a finite number >= 0) or ``train.freeze_trunk_iters``
        (an integer >= 0).
    """
    scale = train_opt.get('trunk_lr_scale')
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, Real) or not math.isfinite(scale)
                              or scale < 0):
        raise OptionError(f'train.trunk_lr_scale must be a number >= 0 (the trunk\'s learning rate relative to the '
                          f'head\'s), got {scale!r}')
    iters = train_opt.get('freeze_trunk_iters') or 0
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise OptionError(f'train.freeze_trunk_iters must be an integer >= 0, got {iters!r}')
    return (None if scale is None else float(scale)), iters


def trunk_and_head(net: nn.Module) -> Tuple[List[nn.Parameter], List[nn.Parameter]]:
    """(trunk parameters, head parameters) of a bare Meta-SR network; the head is its ``upsample`` module.

    Raises:
        OptionError when the network has no ``upsample`` head parameters (not a Meta-SR network).
    """
    trunk, head = [], []
    for name, param in net.named_parameters():
        (head if name.startswith(HEAD_PREFIX) else trunk).append(param)
    if not head:
        raise OptionError(f'train.trunk_lr_scale / freeze_trunk_iters need a Meta-SR network with an upsample head, '
                          f'got {type(net).__name__}')
    return trunk, head


def optimizer_param_groups(net: nn.Module, lr: float, trunk_lr_scale: float) -> List[Dict]:
    """Parameter groups for the generator's optimizer: [head at ``lr``, trunk at ``lr * trunk_lr_scale``]."""
    trunk, head = trunk_and_head(net)
    return [{'params': head, 'lr': lr}, {'params': trunk, 'lr': lr * trunk_lr_scale}]


class TrunkFreeze:
    """Keeps the trunk of ``net`` unchanged during iterations 1..``iters``.

    ``update(current_iter)`` before the iteration's forward; ``attach(optimizer)`` once. With
    ``switch_requires_grad`` (not under DDP, whose reducer expects the same parameters every
    iteration) the trunk's ``requires_grad`` follows the freeze too.
    """

    def __init__(self, net: nn.Module, iters: int, switch_requires_grad: bool):
        self.iters = iters
        self.trunk = trunk_and_head(net)[0] if iters > 0 else []
        self.switch = switch_requires_grad
        self.frozen = False

    def update(self, current_iter: int) -> None:
        frozen = current_iter <= self.iters
        if frozen != self.frozen and self.switch:
            for param in self.trunk:
                param.requires_grad_(not frozen)
        self.frozen = frozen

    def _drop_trunk_grads(self, optimizer, args, kwargs) -> None:
        if self.frozen:
            for param in self.trunk:
                param.grad = None  # optimizers skip parameters without a gradient (no state, no weight decay)

    def attach(self, optimizer) -> None:
        if self.iters > 0:
            optimizer.register_step_pre_hook(self._drop_trunk_grads)


def skip_trunk_pretrained_when_loading(opt: dict) -> bool:
    """Drop ``network_g.trunk_pretrained`` when ``path.pretrain_network_g`` loads the whole network anyway
    (a resumed run, whose BasicSR sets it to the last checkpoint; a test run of training options): the
    trunk's start file is then neither needed nor read. Returns whether it was dropped (and logs it)."""
    net_opt = opt.get('network_g')
    if not isinstance(net_opt, dict) or not net_opt.get('trunk_pretrained') \
            or not (opt.get('path') or {}).get('pretrain_network_g'):
        return False
    from basicsr.utils import get_root_logger
    opt['network_g'] = {k: v for k, v in net_opt.items() if k != 'trunk_pretrained'}
    get_root_logger().info(f'network_g.trunk_pretrained ({net_opt["trunk_pretrained"].get("path")}) not read: '
                           f'path.pretrain_network_g ({opt["path"]["pretrain_network_g"]}) loads the whole network')
    return True


def setup_generator_optimizer(model) -> bool:
    """``SRModel.setup_optimizers`` for ``net_g`` with ``train.trunk_lr_scale`` (two groups), and the
    ``TrunkFreeze`` of ``train.freeze_trunk_iters`` as ``model.trunk_freeze``.

    Returns:
        False when ``trunk_lr_scale`` is not set: the caller builds BasicSR's optimizer, then calls
        ``attach_freeze``.
    """
    train_opt = model.opt['train']
    scale, _ = parse_finetune(train_opt)
    if scale is None:
        return False
    optim_opt = dict(train_opt['optim_g'])
    optim_type = optim_opt.pop('type')
    lr = optim_opt.pop('lr')
    groups = optimizer_param_groups(model.get_bare_model(model.net_g), lr, scale)
    model.optimizer_g = model.get_optimizer(optim_type, groups, lr, **optim_opt)
    model.optimizers.append(model.optimizer_g)
    return True


def attach_freeze(model) -> TrunkFreeze:
    """``TrunkFreeze`` of ``train.freeze_trunk_iters`` on ``model.net_g``, hooked to ``model.optimizer_g``."""
    from torch.nn.parallel import DistributedDataParallel
    _, iters = parse_finetune(model.opt['train'])
    freeze = TrunkFreeze(model.get_bare_model(model.net_g), iters,
                         switch_requires_grad=not isinstance(model.net_g, DistributedDataParallel))
    freeze.attach(model.optimizer_g)
    return freeze
