"""Upscale images or .npy arrays with a Meta-SR network: a script wrapper of ``python -m metasr_arch.infer``.

Usage (all options: ``--help``, or docs/tools.md)::

    python scripts/inference_metasr.py inputs/ --ckpt net_g_latest.pth --scale 2.5 2x3.5 -o results/infer
"""
import sys

from metasr_arch.infer import main

if __name__ == '__main__':
    sys.exit(main())
