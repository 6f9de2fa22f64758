"""R1 gradient penalty (Mescheder et al. 2018) with StyleGAN2's lazy regularisation."""
import torch
from torch import nn

from basicsr.utils.registry import LOSS_REGISTRY
from metasr_arch.utils.registry import register


@register(LOSS_REGISTRY)
class R1Loss(nn.Module):
    """``gamma / 2 * E_x ||grad_x D(x)||^2`` on real images, applied lazily every ``interval`` iterations.

    As in StyleGAN2, the lazily applied penalty is multiplied by ``interval`` so that its average
    strength matches applying it at every iteration. The gradient is taken with ``create_graph=True``
    so that the penalty can be back-propagated into the discriminator's parameters.

    Args:
        loss_weight (float): gamma. Default: 10.
        interval (int): apply every ``interval`` iterations (see :meth:`is_active`). Default: 16.

    Usage::

        real = gt.detach().requires_grad_(True)
        pred = net_d(real)
        if cri_r1.is_active(current_iter):
            (cri_r1(pred, real)).backward()
    """

    def __init__(self, loss_weight: float = 10.0, interval: int = 16):
        super().__init__()
        if loss_weight < 0:
            raise ValueError(f'loss_weight (gamma) must be >= 0, got {loss_weight}')
        if int(interval) < 1:
            raise ValueError(f'interval must be >= 1, got {interval}')
        self.loss_weight = float(loss_weight)
        self.interval = int(interval)

    def is_active(self, current_iter: int) -> bool:
        """Whether the penalty is due at ``current_iter`` (every ``interval``-th iteration)."""
        return current_iter % self.interval == 0

    def penalty(self, real_pred: torch.Tensor, real_img: torch.Tensor) -> torch.Tensor:
        """``E_x ||grad_x sum(D(x))||^2``, unweighted.

        Args:
            real_pred (Tensor): D's output for ``real_img``, any shape (N, ...); its sum is differentiated
                so that every sample's gradient is with respect to its own input.
            real_img (Tensor): (N, C, H, W), ``requires_grad=True``, the tensor ``real_pred`` was computed from.

        Returns:
            Tensor: scalar.
        """
        if not real_img.requires_grad:
            raise ValueError('real_img must require grad: pass gt.detach().requires_grad_(True) to the '
                             'discriminator and then to R1Loss')
        if real_pred.grad_fn is None:
            raise ValueError('real_pred has no graph: compute it from real_img with grad enabled')
        (grad_real, ) = torch.autograd.grad(outputs=real_pred.sum(), inputs=real_img, create_graph=True)
        return grad_real.pow(2).reshape(grad_real.shape[0], -1).sum(1).mean()

    def forward(self, real_pred: torch.Tensor, real_img: torch.Tensor) -> torch.Tensor:
        """Weighted lazy penalty ``loss_weight / 2 * penalty * interval`` (scalar); shapes as :meth:`penalty`."""
        return self.loss_weight / 2 * self.penalty(real_pred, real_img) * self.interval
