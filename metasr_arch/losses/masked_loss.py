"""Pixel losses over the valid points of masked gridded fields (land/ocean missing values).

MetaSRModel calls ``masked_pixel_loss`` with the batch's mask (``MetaSRXarrayDataset`` items carry one);
any BasicSR pixel loss whose ``forward`` takes an element-wise ``weight`` (L1Loss, MSELoss,
CharbonnierLoss) then averages over the valid points only:

    loss = sum_{n,c,i,j} m * l(out, gt) / sum m        (reduction 'mean'; 'sum' sums the valid points)

and the output and the truth at missing points are replaced by 0 first, so neither their values nor
their gradients reach the network (``torch.where``, not a multiplication: 0 * inf would be NaN).
"""
import inspect
from typing import Optional

import torch
from basicsr.utils import get_root_logger

_EMPTY = {'batches': 0}


def takes_weight(loss: torch.nn.Module) -> bool:
    """Whether ``loss.forward`` accepts an element-wise ``weight`` (BasicSR's pixel losses do)."""
    try:
        return 'weight' in inspect.signature(loss.forward).parameters
    except (TypeError, ValueError):
        return False


def masked_pixel_loss(loss: torch.nn.Module, output: torch.Tensor, gt: torch.Tensor,
                      mask: Optional[torch.Tensor]) -> torch.Tensor:
    """``loss(output, gt)`` over the valid points of ``mask``.

    Args:
        loss: a BasicSR pixel loss (``forward(pred, target, weight=None)``).
        output, gt: (N, C, H, W).
        mask: (N, C, H, W) or (N, 1, H, W) bool (True = valid), or None (plain ``loss(output, gt)``).

    Returns:
        The loss (0-d); a batch without any valid point gives 0 with no gradient to any weight, counted
        and logged.
    """
    if mask is None:
        return loss(output, gt)
    if not takes_weight(loss):
        raise ValueError(f'train.pixel_opt: {type(loss).__name__} takes no weight, so it cannot skip the missing '
                         'points of masked fields; use L1Loss, MSELoss or CharbonnierLoss')
    mask = mask.expand_as(output)
    if not bool(mask.any()):
        _EMPTY['batches'] += 1
        get_root_logger().warning(f'a training batch has no valid point (all missing): its pixel loss is 0 '
                                  f'({_EMPTY["batches"]} such batch(es) so far)')
        return (output * 0).sum()
    zero = output.new_zeros(())
    return loss(torch.where(mask, output, zero), torch.where(mask, gt, zero), weight=mask.to(output.dtype))


def batch_mask(mask: Optional[torch.Tensor], like: torch.Tensor) -> Optional[torch.Tensor]:
    """A batch's mask for fields shaped like ``like`` (N, C, H, W), or None when every point is valid.

    Args:
        mask: (N, C, Hg, Wg) or (N, 1, Hg, Wg), nonzero = valid, as the dataset gave it (at least H x W);
            it is cropped to the top-left H x W, as MetaSRModel crops the GT for an output size.

    Returns:
        (N, C or 1, H, W) bool on ``like``'s device, or None.
    """
    if mask is None:
        return None
    h, w = like.shape[-2:]
    if mask.shape[-2] < h or mask.shape[-1] < w:
        raise ValueError(f'the mask ({tuple(mask.shape)}) is smaller than the fields ({tuple(like.shape)})')
    mask = mask[..., :h, :w].to(like.device) != 0
    return None if bool(mask.all()) else mask
