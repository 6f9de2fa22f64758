"""Perceptual loss whose VGG weights come from a local file (no download).

BasicSR's ``VGGFeatureExtractor`` loads ImageNet weights from a fixed relative path or downloads them
through torchvision; neither works on machines without internet. ``LocalPerceptualLoss`` reuses
BasicSR's ``PerceptualLoss`` (same options, same forward, same style loss) with a feature extractor
that reads a torchvision-format VGG state dict from ``vgg_weights_path``. Only the ``features.*``
entries up to the deepest requested layer are needed, so a truncated state dict is enough.
"""
import os
from collections import OrderedDict
from typing import Dict, Mapping

import torch
from torch import nn
from torchvision.models import vgg as tv_vgg

from basicsr.archs.vgg_arch import NAMES, VGGFeatureExtractor, insert_bn
from basicsr.losses.basic_loss import PerceptualLoss
from basicsr.utils.registry import LOSS_REGISTRY
from metasr_arch.utils.checkpoint import load_checkpoint
from metasr_arch.utils.registry import register

_VGG_CFG = {'vgg11': 'A', 'vgg13': 'B', 'vgg16': 'D', 'vgg19': 'E'}


def _load_state_dict(path: str) -> Mapping[str, torch.Tensor]:
    """Read a torchvision VGG state dict (optionally wrapped in 'state_dict' / 'params' / 'params_ema')."""
    state = load_checkpoint(path, 'vgg_weights_path')  # weights_only: a crafted file cannot run code
    for key in ('state_dict', 'params_ema', 'params'):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping):
        raise ValueError(f'vgg_weights_path={path!r} does not hold a state dict (got {type(state).__name__})')
    return state


class LocalVGGFeatureExtractor(VGGFeatureExtractor):
    """BasicSR's ``VGGFeatureExtractor`` built from local weights; forward is BasicSR's.

    Args:
        layer_name_list (list[str]): layers to return, e.g. ['relu1_1', 'conv5_4'].
        vgg_weights_path (str): torchvision-format VGG state dict (``features.<i>.weight`` / ``.bias``...).
        vgg_type (str): 'vgg11' | 'vgg13' | 'vgg16' | 'vgg19', optionally with '_bn'. Default: 'vgg19'.
        use_input_norm, range_norm, requires_grad, remove_pooling, pooling_stride: as BasicSR's.

    Shapes: (N, 3, H, W) -> dict name -> (N, C_name, H_name, W_name).
    """

    def __init__(self,
                 layer_name_list,
                 vgg_weights_path: str,
                 vgg_type: str = 'vgg19',
                 use_input_norm: bool = True,
                 range_norm: bool = False,
                 requires_grad: bool = False,
                 remove_pooling: bool = False,
                 pooling_stride: int = 2):
        # BasicSR's __init__ would download; build the same module layout here instead.
        nn.Module.__init__(self)
        base_type = vgg_type.replace('_bn', '')
        if base_type not in _VGG_CFG:
            raise ValueError(f'vgg_type must be one of {sorted(_VGG_CFG)} (optionally with _bn), got {vgg_type!r}')
        self.layer_name_list = list(layer_name_list)
        self.use_input_norm = use_input_norm
        self.range_norm = range_norm
        self.names = NAMES[base_type]
        batch_norm = 'bn' in vgg_type
        if batch_norm:
            self.names = insert_bn(self.names)
        unknown = [n for n in self.layer_name_list if n not in self.names]
        if not self.layer_name_list or unknown:
            raise ValueError(f'layer_weights must name layers of {vgg_type}; unknown: {unknown}')
        max_idx = max(self.names.index(n) for n in self.layer_name_list)

        if not vgg_weights_path:
            raise FileNotFoundError('vgg_weights_path is not set: LocalPerceptualLoss needs local VGG weights '
                                    '(a torchvision state dict, e.g. vgg19-dcbb9e9d.pth) in perceptual_opt.vgg_weights_path')
        if not os.path.isfile(vgg_weights_path):
            raise FileNotFoundError(f'vgg_weights_path={vgg_weights_path!r} does not exist: put the VGG weights '
                                    '(a torchvision state dict, e.g. vgg19-dcbb9e9d.pth) there or set '
                                    'perceptual_opt.vgg_weights_path to their location')

        features = tv_vgg.make_layers(tv_vgg.cfgs[_VGG_CFG[base_type]], batch_norm=batch_norm)[:max_idx + 1]
        state = _load_state_dict(vgg_weights_path)
        wanted = features.state_dict()
        picked = OrderedDict()
        for key in wanted:
            for candidate in (f'features.{key}', key):
                if candidate in state:
                    picked[key] = state[candidate]
                    break
        missing = [f'features.{k}' for k in wanted if k not in picked]
        if missing:
            raise ValueError(f'vgg_weights_path={vgg_weights_path!r} lacks {missing} needed for layers '
                           f'{self.layer_name_list} of {vgg_type}')
        try:
            features.load_state_dict(picked)
        except RuntimeError as err:
            raise ValueError(f'vgg_weights_path={vgg_weights_path!r} does not fit {vgg_type}: {err}') from err

        modified_net = OrderedDict()
        for name, layer in zip(self.names, features):
            if 'pool' in name:
                if remove_pooling:
                    continue
                modified_net[name] = nn.MaxPool2d(kernel_size=2, stride=pooling_stride)
            else:
                modified_net[name] = layer
        self.vgg_net = nn.Sequential(modified_net)

        self.vgg_net.train(requires_grad)
        for param in self.parameters():
            param.requires_grad = requires_grad
        if self.use_input_norm:
            # ImageNet statistics for images in [0, 1], as BasicSR.
            self.register_buffer('mean', torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            self.register_buffer('std', torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def train(self, mode: bool = True):
        """Keep a frozen VGG in eval mode even when the model calls ``.train()`` (BatchNorm statistics)."""
        super().train(mode)
        if not any(p.requires_grad for p in self.parameters()):
            self.vgg_net.eval()
        return self


@register(LOSS_REGISTRY)
class LocalPerceptualLoss(PerceptualLoss):
    """BasicSR's ``PerceptualLoss`` with VGG weights read from ``vgg_weights_path``.

    Args:
        layer_weights (dict): layer name -> weight, e.g. {'conv5_4': 1.0}.
        vgg_weights_path (str): local torchvision-format VGG state dict (required; a clear
            ``FileNotFoundError`` naming this option when missing).
        vgg_type, use_input_norm, range_norm, perceptual_weight, style_weight: as BasicSR's.
        criterion (str): 'l1' | 'l2' | 'fro'. Default: 'l1'.

    Shapes: forward(x (N, 3, H, W), gt (N, 3, H, W)) -> (perceptual loss | None, style loss | None).
    """

    def __init__(self,
                 layer_weights: Dict[str, float],
                 vgg_weights_path: str = None,
                 vgg_type: str = 'vgg19',
                 use_input_norm: bool = True,
                 range_norm: bool = False,
                 perceptual_weight: float = 1.0,
                 style_weight: float = 0.,
                 criterion: str = 'l1'):
        nn.Module.__init__(self)  # PerceptualLoss.__init__ builds a downloading extractor
        self.perceptual_weight = perceptual_weight
        self.style_weight = style_weight
        self.layer_weights = dict(layer_weights)
        self.vgg = LocalVGGFeatureExtractor(
            layer_name_list=list(self.layer_weights.keys()),
            vgg_weights_path=vgg_weights_path,
            vgg_type=vgg_type,
            use_input_norm=use_input_norm,
            range_norm=range_norm)
        self.criterion_type = criterion
        if criterion == 'l1':
            self.criterion = nn.L1Loss()
        elif criterion == 'l2':
            self.criterion = nn.MSELoss()  # BasicSR names a non-existent torch.nn.L2loss here
        elif criterion == 'fro':
            self.criterion = None
        else:
            raise ValueError(f"criterion must be 'l1', 'l2' or 'fro', got {criterion!r}")
