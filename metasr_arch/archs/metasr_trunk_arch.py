"""MetaSR: the Meta-SR upscaling head on the features of any trunk registered in BasicSR's ``ARCH_REGISTRY``.

A user names the fixed-scale network they already have (``trunk: {type: EDSR, ...}``, a HAT or a
fork's own registered arch) and the head's options; ``MetaSR`` builds the trunk, removes its upsampler
and last convolution, and reads the feature map that the fixed-scale network would have fed to its
upsampler. How that map is taken is explicit per family (``TRUNK_FAMILIES``); any other registered arch
names the submodule whose *input* is the feature map (``feature_module``). ``trunk_pretrained`` starts
the trunk from a fixed-scale BasicSR checkpoint of the plain arch (``load_trunk_weights``).
"""
import copy
import logging
from dataclasses import dataclass
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from basicsr.archs.edsr_arch import EDSR
from basicsr.archs.rcan_arch import RCAN
from basicsr.archs.rrdbnet_arch import RRDBNet
from basicsr.archs.srresnet_arch import MSRResNet
from basicsr.archs.srvgg_arch import SRVGGNetCompact
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from metasr_arch.archs.meta_upsample_arch import MetaUpsample
from metasr_arch.archs.metasr_base import MetaSRNet, ScaleRangeArg, check_head_options
from metasr_arch.archs.periodic import make_convs_periodic_w, make_swin_blocks_periodic_w
from metasr_arch.archs.swinir_meta_arch import pad_to_multiple
from metasr_arch.utils.checkpoint import load_checkpoint, select_params
from metasr_arch.utils.options import OptionError, check_network_options, closest_hint
from metasr_arch.utils.registry import register

HEAD_KEYS = ('kernel_size', 'hidden_channels', 'impl')
PRETRAINED_KEYS = ('path', 'param_key')
# trunk options naming the input / output channels, in the spellings BasicSR and its forks use
IN_CH_KEYS = ('num_in_ch', 'in_chans', 'in_nc', 'in_channels')
OUT_CH_KEYS = ('num_out_ch', 'out_chans', 'out_nc', 'out_channels')
# what follows the feature map in the SwinIR family (SwinIR's four upsamplers, HAT, ...): never run, not kept
SWIN_TAIL = ('upsample', 'conv_last', 'conv_up1', 'conv_up2', 'conv_up3', 'conv_hr')
_PROBE_SIZE = 16  # least side of the zero image that finds the feature width and stride at build time

Features = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _logger() -> logging.Logger:
    from basicsr.utils import get_root_logger
    return get_root_logger()


# --- feature extraction, one function per family: (trunk, normalised image) -> features ---------------

def edsr_features(trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """EDSR and RCAN: ``conv_first``, the residual body and ``conv_after_body``, plus the global skip from
    ``conv_first``. This sum is what both feed ``upsample`` (the x2/x3/x4 sub-pixel convs), i.e. the
    last map that does not depend on the scale. (N, C, h, w) -> (N, num_feat, h, w)."""
    x = trunk.conv_first(x)
    return trunk.conv_after_body(trunk.body(x)) + x


def msrresnet_features(trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MSRResNet: ``conv_first`` + LeakyReLU and the residual body. Its ``upconv1`` reads this map; the
    bilinear skip MSRResNet adds belongs to its fixed scale and is not part of the features (the model's
    ``bicubic_skip`` plays that role). (N, C, h, w) -> (N, num_feat, h, w)."""
    return trunk.body(trunk.lrelu(trunk.conv_first(x)))


def rrdb_stride(trunk: nn.Module) -> int:
    """RRDBNet's pixel-unshuffle factor: 2 for its x2 setting, 4 for x1, else 1 (see ``rrdbnet_features``)."""
    return {2: 2, 1: 4}.get(int(getattr(trunk, 'scale', 4)), 1)


def rrdbnet_features(trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """RRDBNet (ESRGAN, Real-ESRGAN): ``conv_first``, the RRDB body, ``conv_body`` and the skip from
    ``conv_first``; RRDBNet interpolates this map (nearest, x2) into ``conv_up1``. For its x2 and x1
    settings the input is first pixel-unshuffled by 2 or 4, as RRDBNet does, so the map is (h/s, w/s).
    (N, C, h, w) with h, w multiples of s -> (N, num_feat, h/s, w/s)."""
    stride = rrdb_stride(trunk)
    feat = trunk.conv_first(F.pixel_unshuffle(x, stride) if stride > 1 else x)
    return feat + trunk.conv_body(trunk.body(feat))


def srvgg_features(trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """SRVGGNetCompact (Real-ESRGAN's compact net): every layer of ``body`` but its last conv, i.e. the
    activation that conv reads. That conv already has ``num_out_ch * upscale**2`` channels for the
    pixel shuffle, so it belongs to the fixed-scale upsampler and is removed. (N, C, h, w) -> (N, num_feat, h, w)."""
    for layer in trunk.body:  # the last conv was removed at build time
        x = layer(x)
    return x


def swin_features(trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """SwinIR family by structure (SwinIR, HAT and relatives): ``conv_first``, ``forward_features`` and
    ``conv_after_body`` with the skip from ``conv_first``, then ``conv_before_upsample`` (conv + LeakyReLU)
    where the trunk's upsampler uses one ('pixelshuffle', 'nearest+conv'); that is the map its
    ``upsample`` / ``conv_up1`` reads. For 'pixelshuffledirect' and '' (no upsampler) it is the residual
    sum. The caller pads to the window size and crops back (``MetaSR.forward_trunk``).
    (N, C, Hp, Wp) -> (N, F, Hp, Wp)."""
    x = trunk.conv_first(x)
    x = trunk.conv_after_body(trunk.forward_features(x)) + x
    if _uses_conv_before_upsample(trunk):
        x = trunk.conv_before_upsample(x)
    return x


def _uses_conv_before_upsample(trunk: nn.Module) -> bool:
    return hasattr(trunk, 'conv_before_upsample') and \
        getattr(trunk, 'upsampler', 'pixelshuffle') in ('pixelshuffle', 'nearest+conv')


def is_swin_layout(trunk: nn.Module) -> bool:
    """The SwinIR-family layout: ``conv_first``, ``forward_features`` and ``conv_after_body``."""
    return isinstance(getattr(trunk, 'conv_first', None), nn.Module) and \
        callable(getattr(trunk, 'forward_features', None)) and \
        isinstance(getattr(trunk, 'conv_after_body', None), nn.Module)


def swin_window_size(trunk: nn.Module, trunk_opt: Mapping) -> int:
    """The window the input must be padded to: the trunk's ``window_size`` (SwinIR's original code, HAT),
    else its option, else its blocks' (BasicSR's SwinIR keeps it on the blocks only); 1 when none has one."""
    for value in (getattr(trunk, 'window_size', None), trunk_opt.get('window_size')):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    sizes = [m.window_size for m in trunk.modules() if isinstance(getattr(m, 'window_size', None), int)]
    return max(sizes) if sizes else 1


@dataclass(frozen=True)
class TrunkFamily:
    """How one family of trunks gives its features.

    Attributes:
        name: the family's name in messages and docs.
        matches: does a built trunk belong to it.
        features: (trunk, normalised image) -> feature map.
        tail: trunk submodules after the feature map (upsampler, last conv): removed at build time.
        normalises: the family's forward subtracts ``mean`` and multiplies by ``img_range`` first (MetaSR
            then does it, with the trunk's own values).
    """

    name: str
    matches: Callable[[nn.Module], bool]
    features: Features
    tail: Tuple[str, ...]
    normalises: bool = False


def _is(cls: type) -> Callable[[nn.Module], bool]:
    """BasicSR's class, or a fork's copy of it registered under the same class name (Real-ESRGAN's SRVGGNetCompact)."""
    return lambda t: isinstance(t, cls) or type(t).__name__ == cls.__name__


TRUNK_FAMILIES: Tuple[TrunkFamily, ...] = (
    TrunkFamily('EDSR', _is(EDSR), edsr_features, ('upsample', 'conv_last'), True),
    TrunkFamily('RCAN', _is(RCAN), edsr_features, ('upsample', 'conv_last'), True),
    TrunkFamily('MSRResNet', _is(MSRResNet), msrresnet_features, ('upconv1', 'upconv2', 'conv_hr', 'conv_last')),
    TrunkFamily('RRDBNet', _is(RRDBNet), rrdbnet_features, ('conv_up1', 'conv_up2', 'conv_hr', 'conv_last')),
    TrunkFamily('SRVGGNetCompact', _is(SRVGGNetCompact), srvgg_features, ('upsampler',)),
    TrunkFamily('SwinIR', is_swin_layout, swin_features, SWIN_TAIL, True),
)


class _FeatureReached(Exception):
    """Raised by ``_FeatureTap`` to stop a trunk's forward at the feature map (carries it)."""

    def __init__(self, features: torch.Tensor):
        super().__init__('feature map reached')
        self.features = features


class _FeatureTap(nn.Module):
    """Stands in for the submodule ``feature_module`` names: hands its input back, runs nothing after it."""

    def forward(self, x, *args, **kwargs):
        raise _FeatureReached(x)


def _split_module_path(trunk: nn.Module, path: str) -> Tuple[nn.Module, str]:
    parent_path, _, leaf = path.rpartition('.')
    parent = trunk.get_submodule(parent_path) if parent_path else trunk
    if leaf not in parent._modules:  # noqa: SLF001 (the registered children, as torch's own helpers read them)
        raise AttributeError(leaf)
    return parent, leaf


def trunk_channels(trunk_opt: Mapping, trunk: nn.Module) -> Tuple[int, int]:
    """(C_in, C_out) of a trunk: its options (``num_in_ch``/``in_chans``/... , ``num_out_ch``/...) or its
    first convolution; C_out defaults to C_in (SwinIR and HAT have one ``in_chans``)."""
    c_in = next((trunk_opt[k] for k in IN_CH_KEYS if isinstance(trunk_opt.get(k), int)), None)
    if c_in is None:
        c_in = next((m.in_channels for m in trunk.modules() if isinstance(m, nn.Conv2d)), None)
    if c_in is None:
        raise OptionError(f'network_g.trunk: cannot tell the input channels of {type(trunk).__name__}; '
                          f'give one of {", ".join(IN_CH_KEYS)}')
    c_out = next((trunk_opt[k] for k in OUT_CH_KEYS if isinstance(trunk_opt.get(k), int)), c_in)
    return int(c_in), int(c_out)


def trunk_normalisation(trunk: nn.Module, c_in: int, c_out: int) -> Tuple[float, List[float], List[float]]:
    """(img_range, mean of the C_in input channels, mean of the C_out output channels) that the trunk's
    own forward applies (``self.mean`` and ``self.img_range`` of EDSR, RCAN, SwinIR, HAT); 1 and zeros
    for trunks without them. The float32 values are kept exactly."""
    img_range = float(getattr(trunk, 'img_range', 1.0))
    mean = getattr(trunk, 'mean', None)
    values = [float(v) for v in mean.flatten().tolist()] if isinstance(mean, torch.Tensor) else [0.0]

    def expand(num: int, side: str) -> List[float]:
        if len(values) == 1:
            return values * num
        if len(values) != num:
            raise OptionError(f'network_g.trunk: {type(trunk).__name__} has a mean of {len(values)} channels '
                              f'but {num} {side} channels')
        return list(values)

    return img_range, expand(c_in, 'input'), expand(c_out, 'output')


def registered_name(net_type: str) -> Optional[str]:
    """The registry key of ``net_type``: itself, or ``<type>_basicsr`` as BasicSR's ``Registry.get`` falls back
    to (basicsr 1.4.2 registers SRVGGNetCompact so, next to Real-ESRGAN's own); None when unregistered."""
    for name in (net_type, f'{net_type}_basicsr'):
        if name in ARCH_REGISTRY:
            return name
    return None


def load_trunk_weights(trunk: nn.Module, pretrained: Mapping, dropped_modules: Sequence[str],
                       section: str = 'network_g.trunk_pretrained') -> List[str]:
    """Load a fixed-scale BasicSR checkpoint of the plain arch into ``trunk`` (its tail already removed).

    Weights-only loading (``utils.checkpoint``). The checkpoint's keys under ``dropped_modules`` (the
    upsampler and last conv) are dropped and logged by name; every other key must match the trunk in
    name and shape, else the load is refused naming the keys.

    Args:
        pretrained: ``{path, param_key}``; ``param_key`` default: ``params_ema`` when present, else ``params``.
        dropped_modules: names of the removed trunk submodules.
    Returns:
        the dropped checkpoint keys, sorted.
    """
    path = pretrained['path']
    try:  # a bad file is a problem of the options: reported without a traceback by the command lines
        ckpt = load_checkpoint(str(path), f'{section}.path')
        state, key = select_params(ckpt, pretrained.get('param_key'), str(path))
    except ValueError as err:
        raise OptionError(str(err).replace('--param-key', f'{section}.param_key')) from None
    state = {(k[7:] if k.startswith('module.') else k): v for k, v in state.items()}
    dropped = sorted(k for k in state if any(k == m or k.startswith(m + '.') for m in dropped_modules))
    state = {k: v for k, v in state.items() if k not in dropped}
    own = trunk.state_dict()
    shapes = [f'{k} (checkpoint {tuple(state[k].shape)}, trunk {tuple(own[k].shape)})'
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    problems = [f'shapes differ: {", ".join(shapes)}' if shapes else '',
                f'missing from the checkpoint: {", ".join(missing)}' if missing else '',
                f'not in the trunk: {", ".join(unexpected)}' if unexpected else '']
    if any(problems):
        raise OptionError(f'{section}: {path} [{key}] does not fit the trunk {type(trunk).__name__}; '
                          + '; '.join(p for p in problems if p))
    trunk.load_state_dict(state, strict=True)
    _logger().info(f'{section}: loaded {len(state)} tensors of {path} [{key}] into the trunk '
                   f'{type(trunk).__name__}; dropped {len(dropped)} keys of its upsampler/last conv: '
                   + (', '.join(dropped) or '(none)'))
    return dropped


@register(ARCH_REGISTRY)
class MetaSR(MetaSRNet):
    """The Meta-SR head (``MetaUpsample``) on the features of a registered fixed-scale trunk.

    The trunk is built from ``trunk`` through BasicSR's ``ARCH_REGISTRY`` (any arch that BasicSR, a fork
    or another package registers), its upsampler and last convolution are removed (never run, no
    parameters), and ``forward_trunk`` applies the trunk's own input normalisation (its ``mean`` and
    ``img_range``) before its feature layers. State-dict keys: ``trunk.*`` (the plain arch's names) and
    ``upsample.*`` (the head).

    Families (``TRUNK_FAMILIES``): EDSR, RCAN, MSRResNet, RRDBNet (with its pixel-unshuffle for scale 1
    and 2), SRVGGNetCompact, and by structure the SwinIR family (SwinIR, HAT, ...: ``conv_first``,
    ``forward_features``, ``conv_after_body``, ``window_size``), padded to the window size and cropped.

    Args:
        trunk: the fixed-scale network's options, ``{type: EDSR, num_feat: 64, ..., upscale: 4}``.
        head: the head's options: ``kernel_size`` (odd, default 3), ``hidden_channels`` (256), ``impl`` ('auto').
        trunk_pretrained: ``{path, param_key}``: start the trunk from a checkpoint of the plain arch
            (``load_trunk_weights``). Used when the network is built for training; inference loads the
            whole MetaSR checkpoint instead.
        scale_range: as ``MetaRDN``.
        feature_module: for a trunk outside the families: the dotted name of the trunk submodule whose
            input is the feature map (e.g. ``upsample``). It is replaced by a tap that stops the trunk's
            forward there; the trunk's forward applies its own normalisation.
        drop_modules: with ``feature_module``: further trunk submodules that only run after it (e.g.
            ``conv_last``), removed so that they hold no parameters.
        periodic_w: as ``MetaRDN`` (convolutional trunks, and SwinIR-family trunks built from BasicSR's
            Swin blocks).

    Shapes:
        forward(x (N, C_in, h, w), scale=(r_v, r_h) or out_size=(H, W)) -> (N, C_out, H, W).
        forward_trunk(x) -> (N, C_feat, h, w). A strided trunk (RRDBNet x2/x1: features at (h/s, w/s))
        has its features repeated s times along each axis (nearest, as RRDBNet's own upsampler starts),
        so that the head reads them at the input's geometry; ``trunk_features`` gives the map itself.
    """

    def __init__(self, trunk: Mapping, head: Optional[Mapping] = None, trunk_pretrained: Optional[Mapping] = None,
                 scale_range: ScaleRangeArg = None, feature_module: Optional[str] = None,
                 drop_modules: Sequence[str] = (), periodic_w: bool = False):
        super().__init__()
        check_metasr_options({'trunk': trunk, 'head': head, 'trunk_pretrained': trunk_pretrained,
                              'feature_module': feature_module, 'drop_modules': drop_modules})
        head = dict(head or {})
        kernel_size, hidden, impl = head.get('kernel_size', 3), head.get('hidden_channels', 256), \
            head.get('impl', 'auto')
        check_head_options(kernel_size, impl)
        trunk_opt = dict(trunk)
        net_type = trunk_opt.pop('type')
        self.trunk_type = net_type
        self.trunk = ARCH_REGISTRY.get(registered_name(net_type))(**copy.deepcopy(trunk_opt))
        self.family, self._tap = self._select_family(net_type, feature_module)
        self.dropped_modules = self._drop_tail(feature_module, tuple(drop_modules))
        c_in, c_out = trunk_channels(trunk, self.trunk)
        img_range, mean_in, mean_out = trunk_normalisation(self.trunk, c_in, c_out)
        self._init_io(c_in, c_out, img_range, (0., 0., 0.), 0., scale_range)
        self.mean_in.copy_(torch.tensor(mean_in, dtype=torch.float64).view_as(self.mean_in))
        self.mean_out.copy_(torch.tensor(mean_out, dtype=torch.float64).view_as(self.mean_out))
        self.window_size = swin_window_size(self.trunk, trunk) \
            if self.family is not None and self.family.name == 'SwinIR' else 1
        self.trunk_dropped_keys: List[str] = []
        if trunk_pretrained is not None:
            self.trunk_dropped_keys = load_trunk_weights(self.trunk, trunk_pretrained, self.dropped_modules)
        feat_ch, self.feature_stride = self._probe(net_type)
        self.upsample = MetaUpsample(feat_ch, c_out, kernel_size, hidden, impl, periodic_w)
        self.periodic_w = periodic_w
        if periodic_w:
            self._make_periodic(net_type)

    # --- construction ---------------------------------------------------------------------------------

    def _select_family(self, net_type: str, feature_module: Optional[str]):
        if feature_module is not None:
            try:
                parent, leaf = _split_module_path(self.trunk, feature_module)
            except AttributeError:
                raise OptionError(f'network_g.feature_module: {net_type} has no submodule {feature_module!r}'
                                  f'{closest_hint(feature_module, [n for n, _ in self.trunk.named_modules() if n])}'
                                  ) from None
            setattr(parent, leaf, _FeatureTap())
            return None, feature_module
        for family in TRUNK_FAMILIES:
            if family.matches(self.trunk):
                return family, None
        raise OptionError(
            f'network_g.trunk: no known feature layout for type {net_type!r} (known: EDSR, RCAN, MSRResNet, '
            'RRDBNet, SRVGGNetCompact and the SwinIR layout: conv_first, forward_features, conv_after_body, '
            'window_size); set network_g.feature_module to the trunk submodule whose input is the feature map '
            '(e.g. feature_module: upsample) and drop_modules to what runs after it (docs/archs.md)')

    def _drop_tail(self, feature_module: Optional[str], drop_modules: Tuple[str, ...]) -> Tuple[str, ...]:
        """Remove the trunk's upsampler and last conv; returns their names (checkpoint key prefixes)."""
        if self.family is None:
            names = [feature_module]  # replaced by the tap: its parameters are gone
            for name in drop_modules:
                try:
                    parent, leaf = _split_module_path(self.trunk, name)
                except AttributeError:
                    raise OptionError(f'network_g.drop_modules: {self.trunk_type} has no submodule {name!r}') \
                        from None
                # a parameterless stand-in, not a deletion: the forward may look the attribute up before
                # the tap stops it (EDSR's ``self.conv_last(self.upsample(res))``)
                setattr(parent, leaf, nn.Identity())
                names.append(name)
            return tuple(names)
        names = []
        if self.family.name == 'SRVGGNetCompact':
            # its last conv maps to num_out_ch * upscale**2 channels for the pixel shuffle
            names.append(f'body.{len(self.trunk.body) - 1}')
            del self.trunk.body[len(self.trunk.body) - 1]
        for name in self.family.tail:
            if name in self.trunk._modules:  # noqa: SLF001
                delattr(self.trunk, name)
                names.append(name)
        return tuple(names)

    @torch.no_grad()
    def _probe(self, net_type: str) -> Tuple[int, int]:
        """(feature channels, stride) from one small zero image; fails at build time on a layout that does
        not run."""
        # the smallest multiple of the window (and of RRDBNet's unshuffle 4) from 16 pixels: a full-size HAT
        # (window 16) probes on 16 x 16, not on a large image
        side = self.window_size * -(-_PROBE_SIZE // self.window_size)
        x = torch.zeros(1, self.num_in_ch, side, side)
        training = self.trunk.training
        self.trunk.eval()  # no BatchNorm statistics or dropout from the probe
        try:
            feat = self.trunk_features(x)
        except Exception as err:  # noqa: BLE001 (any failure of a foreign forward means the layout is wrong)
            what = f'feature_module {self._tap!r}' if self.family is None else f'the {self.family.name} layout'
            raise OptionError(f'network_g.trunk: reading the features of {net_type} with {what} failed on a '
                              f'{side}x{side} image ({type(err).__name__}: {err}); set network_g.feature_module '
                              'to the submodule whose input is the feature map (docs/archs.md)') from None
        finally:
            self.trunk.train(training)
        if feat.dim() != 4 or feat.shape[2] > side or side % feat.shape[2] or side // feat.shape[2] != \
                side // max(feat.shape[3], 1) or side % max(feat.shape[3], 1):
            raise OptionError(f'network_g.trunk: the features of {net_type} have shape {tuple(feat.shape)} for a '
                              f'{side}x{side} input; the head needs a map at the input size or an integer '
                              'fraction of it (is feature_module after the upsampler?)')
        return int(feat.shape[1]), side // feat.shape[2]

    def _make_periodic(self, net_type: str) -> None:
        if self.family is not None and self.family.name == 'SwinIR':
            blocks = [m for m in self.trunk.modules() if getattr(m, 'shift_size', 0) > 0]
            if any(not hasattr(m, 'calculate_mask') for m in blocks):
                raise OptionError(f'network_g.periodic_w: the shifted windows of {net_type} are not BasicSR\'s '
                                  'Swin blocks; periodic_w supports convolutional trunks and BasicSR\'s SwinIR')
            make_swin_blocks_periodic_w(self.trunk)
        make_convs_periodic_w(self.trunk)

    # --- forward ----------------------------------------------------------------------------------------

    def trunk_features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's feature map, exactly what the plain fixed-scale network feeds its upsampler.

        Shapes:
            x (N, C_in, h, w) *raw* image (the trunk's own normalisation is applied here) ->
            (N, C_feat, h / s, w / s), s = ``feature_stride`` (1 except RRDBNet x2/x1); the SwinIR family
            needs h, w multiples of its window (``forward_trunk`` pads).
        """
        if self.family is None:
            try:
                self.trunk(x)
            except _FeatureReached as reached:
                return reached.features
            raise RuntimeError(f'{self.trunk_type}.forward finished without calling feature_module {self._tap!r}')
        if self.family.normalises:
            x = (x - self.mean_in.to(x.dtype)) * self.img_range
        return self.family.features(self.trunk, x)

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, h, w) -> (N, C_feat, h, w) for the head, any h, w.

        The input is padded (reflect, bottom/right) to a multiple of the window (SwinIR family) or of the
        stride (RRDBNet x2/x1); a strided map is repeated to the input's resolution; the map is cropped
        to h x w before the head, so that the head sees the input's geometry (see ``SwinIRMeta.forward_trunk``).
        """
        h, w = x.shape[2], x.shape[3]
        multiple = max(self.window_size, self.feature_stride)
        if self.periodic_w and w % multiple:
            raise ValueError(f'periodic_w needs an input width that is a multiple of {multiple} for this trunk, '
                             f'got {w} columns (pad or crop the longitudes)')
        feat = self.trunk_features(pad_to_multiple(x, multiple) if multiple > 1 else x)
        if self.feature_stride > 1:
            feat = feat.repeat_interleave(self.feature_stride, 2).repeat_interleave(self.feature_stride, 3)
        return feat[:, :, :h, :w]

    def extra_repr(self) -> str:
        family = self.family.name if self.family is not None else f'feature_module={self._tap!r}'
        return f'trunk_type={self.trunk_type!r}, family={family}, dropped={list(self.dropped_modules)}'

    @classmethod
    def check_nested_options(cls, net_opt: Mapping, section: str) -> None:
        """``utils.options.check_network_options`` hook: typos inside ``trunk:``, ``head:`` and
        ``trunk_pretrained:`` named with their section."""
        check_metasr_options(net_opt, section)


def check_metasr_options(net_opt: Mapping, section: str = 'network_g') -> None:
    """Check MetaSR's nested options: ``trunk`` against its registered class, ``head`` and
    ``trunk_pretrained`` keys, ``feature_module`` / ``drop_modules`` types.

    Raises:
        OptionError naming the nested key (``network_g.head: unknown option 'kernal_size' ...``).
    """
    trunk = net_opt.get('trunk')
    if not isinstance(trunk, Mapping) or 'type' not in trunk:
        raise OptionError(f'{section}.trunk must be the fixed-scale network\'s options with a type '
                          f'(e.g. {{type: EDSR, num_feat: 64, num_block: 16, upscale: 4}}), got {trunk!r}')
    if trunk['type'] in ('MetaSR', 'MetaRDN', 'SwinIRMeta'):
        raise OptionError(f'{section}.trunk.type: {trunk["type"]!r} is already a Meta-SR network; name its '
                          'fixed-scale trunk (EDSR, RRDBNet, SwinIR, ...)')
    name = registered_name(str(trunk['type']))
    if name is None:
        registered = sorted(ARCH_REGISTRY._obj_map)  # noqa: SLF001
        raise OptionError(f'{section}.trunk.type: {trunk["type"]!r} is not a registered architecture'
                          f'{closest_hint(str(trunk["type"]), registered)}; a fork\'s arch is registered when '
                          'its module is imported (train.py of the fork; --import MODULE for infer/export/test)')
    check_network_options({**trunk, 'type': name}, f'{section}.trunk')
    for name, value, keys in (('head', net_opt.get('head'), HEAD_KEYS),
                              ('trunk_pretrained', net_opt.get('trunk_pretrained'), PRETRAINED_KEYS)):
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise OptionError(f'{section}.{name} must be a mapping with keys {", ".join(keys)}, got {value!r}')
        for key in value:
            if key not in keys:
                raise OptionError(f'{section}.{name}: unknown option {key!r}{closest_hint(str(key), keys)} '
                                  f'(valid options: {", ".join(keys)})')
    pretrained = net_opt.get('trunk_pretrained')
    if pretrained is not None and not isinstance(pretrained.get('path'), str):
        raise OptionError(f'{section}.trunk_pretrained.path must be the path of a checkpoint of the plain '
                          f'{trunk["type"]}, got {pretrained.get("path")!r}')
    feature_module = net_opt.get('feature_module')
    if feature_module is not None and (not isinstance(feature_module, str) or not feature_module):
        raise OptionError(f'{section}.feature_module must be a submodule name such as upsample, got {feature_module!r}')
    drop = net_opt.get('drop_modules') or ()
    if not isinstance(drop, (list, tuple)) or not all(isinstance(d, str) for d in drop):
        raise OptionError(f'{section}.drop_modules must be a list of submodule names, got {drop!r}')
    if drop and feature_module is None:
        raise OptionError(f'{section}.drop_modules needs feature_module (the known families drop their own tail)')
