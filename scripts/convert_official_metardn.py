"""Convert an official Meta-SR (github.com/XuecaiHu/Meta-SR-Pytorch) Meta-RDN checkpoint to ``MetaRDN``.

Official layout (``model/metardn.py`` of that repository), for G0 features, D blocks, C layers, growth G:

    sub_mean / add_mean          MeanShift 1x1 convs (weight eye(3)/std, bias -/+ rgb_range*mean/std)
    SFENet1, SFENet2             3x3 convs
    RDBs.{i}.convs.{c}.conv.0    3x3 conv (G0 + c*G -> G), followed by ReLU
    RDBs.{i}.LFF                 1x1 conv (G0 + C*G -> G0)
    GFF.0, GFF.1                 1x1 conv (D*G0 -> G0), 3x3 conv
    P2W.meta_block.0             Linear(3, 256), input (1/r, fv, fh)
    P2W.meta_block.2             Linear(256, 3*3*G0*3)

Weight layout of the official head. Its forward repeats the features r x r times, unfolds them with a
3x3 window (rows ordered (ci, k1, k2), as ``F.unfold`` orders them), views the MLP output of each
position as (-1, 3) = (C_in*3*3, C_out) and matmuls. So one position's 27*G0 outputs are ordered
(ci, k1, k2, co); ``MetaUpsample`` reads (k1, k2, ci, co). The last layer's rows (and bias) are
permuted accordingly. Its first layer takes (1/r, fv, fh); ours takes (fv, fh, 1/r_v, 1/r_h): the
columns move, the 1/r column feeds 1/r_v and the 1/r_h column is zero, so for r_v = r_h = r the
converted network computes exactly what the official one does.

Mean shifts. The official ``MeanShift`` sets ``requires_grad = False`` on the module, which freezes nothing:
after training ``sub_mean`` (y = W_s x + b_s, on x in [0, 255]) and ``add_mean`` (out = W_a o + b_a) are no
longer the identity shift. Both are folded exactly:

* input: y = W_s (x + W_s^-1 b_s) = W_s * img_range * (x/img_range - m), m = -W_s^-1 b_s / img_range. So
  ``rgb_mean`` = m and W_s goes into SFENet1's weight (W1' = W1 . W_s over the input channels). The zero
  padding of SFENet1 stays exact (W_s 0 = 0), which folding b_s into a bias would not be.
* output: W_a goes into the head's predicted kernels (the last MLP layer's rows, over C_out), and b_a /
  img_range becomes ``out_mean`` (written only when it differs from ``rgb_mean``).
m is computed in float64 from the float32 biases the checkpoint holds, not rounded to the nominal DIV2K
mean (that alone leaves a 1e-5 error against the official forward).

Usage:
    python scripts/convert_official_metardn.py --input model_1000.pt --output metardn_converted.pth
The output holds ``{'params': state_dict, 'network_opt': {type: MetaRDN, ...}}``: BasicSR's
``path.pretrain_network_g`` loads it, and ``infer`` / ``export`` take it alone (no ``--opt``). The
``network_g`` options are printed too.
"""
import argparse
import os
import re
import sys
from typing import Dict, Mapping

import torch

from metasr_arch.utils.atomic import atomic_write
from metasr_arch.utils.checkpoint import load_checkpoint

OFFICIAL_KERNEL = 3  # the official head unfolds with a fixed 3x3 window
OFFICIAL_OUT_CH = 3  # and predicts RGB
_RDB_CONV = re.compile(r'^RDBs\.(\d+)\.convs\.(\d+)\.conv\.0\.(weight|bias)$')
_RDB_LFF = re.compile(r'^RDBs\.(\d+)\.LFF\.(weight|bias)$')
_DIRECT = {'SFENet1': 'sfe1', 'SFENet2': 'sfe2', 'GFF.0': 'gff.0', 'GFF.1': 'gff.1'}


def unwrap_checkpoint(obj) -> Dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint: plain, or under 'state_dict'/'params'/'model'; strips 'module.'."""
    if not isinstance(obj, Mapping):
        raise ValueError(f'checkpoint must be a state dict (a mapping of names to tensors), got {type(obj).__name__}')
    for key in ('state_dict', 'params', 'model'):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    sd = dict(obj)
    for prefix in ('module.', 'model.'):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _require(sd: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in sd:
        raise KeyError(f'official Meta-RDN key {key!r} missing from the checkpoint')
    return sd[key]


def official_config(sd: Mapping[str, torch.Tensor], img_range: float = 255.) -> dict:
    """``MetaRDN`` options matching an official checkpoint (trained with ``--rgb_range img_range``).

    Returns:
        dict(num_in_ch, num_out_ch, num_feat, num_block, num_layer, num_grow_ch, kernel_size,
        hidden_channels, img_range, rgb_mean) and ``out_mean`` when the trained ``add_mean`` is not the
        inverse shift of ``sub_mean``. The means come exactly (float64) from the checkpoint's biases.
    """
    sd = unwrap_checkpoint(sd)
    sfe1 = _require(sd, 'SFENet1.weight')
    num_feat, num_in_ch = sfe1.shape[0], sfe1.shape[1]
    blocks = {int(m.group(1)) for m in map(_RDB_CONV.match, sd) if m}
    layers = {int(m.group(2)) for m in map(_RDB_CONV.match, sd) if m and m.group(1) == '0'}
    if not blocks or blocks != set(range(len(blocks))) or layers != set(range(len(layers))):
        raise ValueError('checkpoint has no contiguous RDBs.{i}.convs.{c}.conv.0 keys: not an official Meta-RDN')
    hidden, n_in = _require(sd, 'P2W.meta_block.0.weight').shape
    if n_in != 3:
        raise ValueError(f'P2W.meta_block.0.weight must take 3 inputs (1/r, fv, fh), has {n_in}')
    n_out = _require(sd, 'P2W.meta_block.2.weight').shape[0]
    if n_out % (OFFICIAL_KERNEL ** 2 * num_feat):
        raise ValueError(f'P2W.meta_block.2 has {n_out} outputs, not a multiple of 3*3*G0 = {9 * num_feat}')
    config = dict(num_in_ch=num_in_ch, num_out_ch=n_out // (OFFICIAL_KERNEL ** 2 * num_feat), num_feat=num_feat,
                  num_block=len(blocks), num_layer=len(layers),
                  num_grow_ch=_require(sd, 'RDBs.0.convs.0.conv.0.weight').shape[0], kernel_size=OFFICIAL_KERNEL,
                  hidden_channels=hidden, img_range=float(img_range))
    if 'sub_mean.weight' in sd:
        w_s, b_s = mean_shift(sd, 'sub_mean', num_in_ch)
        mean_in = -torch.linalg.solve(w_s, b_s) / img_range
        config['rgb_mean'] = tuple(mean_in.tolist())
        if 'add_mean.weight' in sd:
            _, b_a = mean_shift(sd, 'add_mean', config['num_out_ch'])
            mean_out = b_a / img_range
            if not torch.equal(mean_out, mean_in):
                config['out_mean'] = tuple(mean_out.tolist())
    return config


def mean_shift(sd: Mapping[str, torch.Tensor], name: str, channels: int):
    """(W (C, C), b (C,)) float64 of an official MeanShift 1x1 conv; refuses a singular W."""
    weight = _require(sd, f'{name}.weight').double()
    if weight.shape != (channels, channels, 1, 1):
        raise ValueError(f'{name}.weight must be ({channels}, {channels}, 1, 1), got {tuple(weight.shape)}')
    weight = weight.flatten(1)
    if not torch.linalg.cond(weight) < 1e6:  # inf or nan for a singular matrix
        raise ValueError(f'{name}.weight is (nearly) singular: the mean shift cannot be folded')
    return weight, _require(sd, f'{name}.bias').double()


def _fold_input_shift(w1: torch.Tensor, w_s: torch.Tensor) -> torch.Tensor:
    """SFENet1's weight (G0, C, 3, 3) applied after the 1x1 ``W_s``: W1'[o, i] = sum_c W1[o, c] W_s[c, i]."""
    if torch.equal(w_s, torch.eye(w_s.shape[0], dtype=w_s.dtype)):
        return w1.clone()  # the untrained shift: keep the weights bit for bit
    return torch.einsum('ochw,ci->oihw', w1.double(), w_s).to(w1.dtype)


def _fold_output_shift(t: torch.Tensor, w_a: torch.Tensor, c_out: int) -> torch.Tensor:
    """Rows (k1, k2, ci, co) of the last MLP layer (weight or bias) mixed over co by ``W_a``."""
    if torch.equal(w_a, torch.eye(w_a.shape[0], dtype=w_a.dtype)):
        return t
    rest = t.shape[1:]
    grouped = t.double().reshape(-1, c_out, *rest)
    return torch.einsum('pc,rc...->rp...', w_a, grouped).reshape(t.shape).to(t.dtype)


def _head_last_layer(t: torch.Tensor, c_in: int, c_out: int) -> torch.Tensor:
    """Rows ordered (ci, k1, k2, co) -> (k1, k2, ci, co); works for the weight (rows, hidden) and the bias (rows,)."""
    k = OFFICIAL_KERNEL
    rest = t.shape[1:]
    return t.reshape(c_in, k, k, c_out, *rest).permute(1, 2, 0, 3, *range(4, 4 + len(rest))).reshape(t.shape)


def convert_official_state_dict(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Map an official Meta-RDN state dict to ``MetaRDN``'s (see the module docstring for the layouts).

    Args:
        sd: the official state dict (optionally wrapped or prefixed, see ``unwrap_checkpoint``).

    Returns:
        a new state dict for ``MetaRDN(**official_config(sd))``; tensors keep their dtype.

    Raises:
        KeyError for a missing official key, ValueError for an unknown key or wrong shape.
    """
    sd = unwrap_checkpoint(sd)
    config = official_config(sd)
    c_in, c_out = config['num_feat'], config['num_out_ch']
    eye_in = torch.eye(config['num_in_ch'], dtype=torch.float64)
    w_s = mean_shift(sd, 'sub_mean', config['num_in_ch'])[0] if 'sub_mean.weight' in sd else eye_in
    w_a = mean_shift(sd, 'add_mean', c_out)[0] if 'add_mean.weight' in sd else torch.eye(c_out, dtype=torch.float64)
    out: Dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        head, _, leaf = key.rpartition('.')
        if key == 'SFENet1.weight':
            out['sfe1.weight'] = _fold_input_shift(value, w_s)
        elif head in _DIRECT:
            out[f'{_DIRECT[head]}.{leaf}'] = value.clone()
        elif m := _RDB_CONV.match(key):
            out[f'rdbs.{m.group(1)}.convs.{m.group(2)}.{m.group(3)}'] = value.clone()
        elif m := _RDB_LFF.match(key):
            out[f'rdbs.{m.group(1)}.lff.{m.group(2)}'] = value.clone()
        elif key == 'P2W.meta_block.0.weight':
            # official columns (1/r, fv, fh) -> ours (fv, fh, 1/r_v, 1/r_h = 0)
            out['upsample.pos2weight.meta_block.0.weight'] = torch.cat(
                [value[:, 1:3], value[:, 0:1], torch.zeros_like(value[:, 0:1])], dim=1)
        elif key == 'P2W.meta_block.0.bias':
            out['upsample.pos2weight.meta_block.0.bias'] = value.clone()
        elif key in ('P2W.meta_block.2.weight', 'P2W.meta_block.2.bias'):
            out[f'upsample.pos2weight.meta_block.2.{leaf}'] = _fold_output_shift(
                _head_last_layer(value, c_in, c_out), w_a, c_out).clone()
        elif head in ('sub_mean', 'add_mean'):
            continue  # folded: W into SFENet1 and the head above, b into the mean options (official_config)
        else:
            raise ValueError(f'unexpected key {key!r}: not part of an official Meta-RDN checkpoint')
    return out


def atomic_save(obj, path: str) -> None:
    """torch.save through a temporary beside ``path`` (``metasr_arch.utils.atomic``): no half-written checkpoint."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: torch.save(obj, f), fsync=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--input', required=True, help='official Meta-RDN checkpoint (.pt)')
    parser.add_argument('--output', required=True, help='converted checkpoint for MetaRDN (.pth)')
    parser.add_argument('--img-range', type=float, default=255., help='the --rgb_range it was trained with (255)')
    args = parser.parse_args(argv)
    try:
        checkpoint = load_checkpoint(args.input, '--input')  # weights_only: nothing in the file is executed
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    try:
        converted = convert_official_state_dict(checkpoint)
        config = official_config(checkpoint, args.img_range)
    except (KeyError, ValueError) as err:
        print(f'error: --input {args.input}: {err}', file=sys.stderr)
        return 2
    # the network options travel with the weights: infer / export build the network from the file alone
    atomic_save({'params': converted, 'network_opt': {'type': 'MetaRDN', **{
        k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}}}, args.output)
    print(f'wrote {args.output} ({len(converted)} tensors, with its network options). BasicSR options:')
    print('network_g:\n  type: MetaRDN')
    for key, value in config.items():
        print(f'  {key}: {list(value) if isinstance(value, tuple) else value}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
