"""Convert a network checkpoint between BasicSR's ``.pth`` and ``.safetensors`` (either direction).

    python scripts/convert_checkpoint.py experiments/demo_MetaRDN/models/net_g_latest.pth net_g.safetensors
    python scripts/convert_checkpoint.py net_g.safetensors net_g.pth

The ``.pth`` is read with ``torch.load(weights_only=True)``, so a file that would run pickled code is
refused. Every param key (``params``, ``params_ema``), the network options and ``bicubic_skip`` are kept
(layout: ``metasr_arch/utils/safetensors_ckpt.py``). Training states (``.state``) are not network
checkpoints and are not converted. The output is written atomically and never replaces the input.
"""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import metasr_arch  # noqa: F401  (before basicsr)

from metasr_arch.models.metasr_model import atomic_torch_save
from metasr_arch.utils.checkpoint import load_checkpoint
from metasr_arch.utils.safetensors_ckpt import SAFETENSORS_SUFFIX, save_safetensors_checkpoint


def convert(src: str, dst: str) -> dict:
    """Read ``src`` (either format, by content) and write it to ``dst`` in the format of ``dst``'s suffix.

    Returns:
        the checkpoint dict that was written.
    """
    if Path(dst).suffix not in (SAFETENSORS_SUFFIX, '.pth'):
        raise ValueError(f'OUTPUT {dst} must end in {SAFETENSORS_SUFFIX} or .pth')
    if Path(src).resolve() == Path(dst).resolve():
        raise ValueError(f'OUTPUT {dst} is the input file; choose another name')
    ckpt = load_checkpoint(src)
    if Path(dst).suffix == SAFETENSORS_SUFFIX:
        save_safetensors_checkpoint(ckpt, dst)
    else:
        atomic_torch_save(ckpt, dst)
    return ckpt


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description='Convert a network checkpoint between .pth and .safetensors.')
    p.add_argument('input', help='checkpoint to read (.pth or .safetensors)')
    p.add_argument('output', help='checkpoint to write; its suffix (.safetensors or .pth) picks the format')
    args = p.parse_args(argv)
    try:
        ckpt = convert(args.input, args.output)
    except ValueError as err:
        print(f'error: {err}'.replace('--ckpt ', 'INPUT '), file=sys.stderr)
        return 2
    keys = [k for k, v in ckpt.items() if isinstance(v, dict) and k != 'network_opt']
    print(f'{args.input} -> {args.output}: param keys {keys}, '
          f'network_opt {"recorded" if "network_opt" in ckpt else "absent"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
