"""Experiments built on the plugin's train/test pipelines (``scripts/experiments/``).

* ``meta_vs_fixed``: the models and BasicSR option files of the Meta-vs-fixed-scale comparison, and the
  resumable driver that trains and evaluates them through ``metasr_arch.train`` / ``metasr_arch.test``.
* ``report``: its results as ``results.json``, a markdown table and the PSNR-vs-scale figure.
"""
