"""Inference: loading trained networks from checkpoints, running them on images, arrays and gridded
NetCDF/Zarr data (tiled, under autocast), above the archs.

Layers (``tests/test_layout.py``): ``ops`` and ``utils`` are the ground floor and import no arch;
``archs`` build on them; this package, ``models``, ``deploy`` and the command lines build on the archs.

Modules: ``checkpoint`` (``load_network``, ``build_and_load``), ``runner`` (``run_network``,
``upscale_sample``), ``tiling`` (``tiled_forward``), ``gridded`` (``upscale_gridded``, NetCDF out),
``archive`` (``upscale_archive``: a streamed, batched, resumable Zarr store), ``dask_runner``
(``upscale_on_dask``: its chunks on Dask workers), ``compiled`` (``compile_frozen``, the ``--compile``
path), ``onnx_backend`` (``onnx_frozen``, the ``--compile onnxruntime`` path). Imported on demand:
importing the package loads none of them.
"""
