"""metasr_arch: magnification-arbitrary super-resolution (Meta-SR) as a BasicSR plugin."""
from setuptools import find_packages, setup

setup(
    name='metasr_arch',
    version='0.1.0',
    description='Meta-SR (arbitrary and asymmetric scale super-resolution) for BasicSR',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['metasr_arch', 'metasr_arch.*']) + ['metasr_arch._csrc'],
    # The native sources stay at ops/meta_upscale (design card) and install as metasr_arch/_csrc, so
    # wheel installs find them too (editable installs read them in place).
    package_dir={'metasr_arch._csrc': 'ops/meta_upscale'},
    package_data={'metasr_arch._csrc': ['*.cpp', '*.cu', '*.h']},
    include_package_data=True,
    python_requires='>=3.9',
    install_requires=[
        'torch>=2.1',
        'torchvision>=0.16',
        'basicsr>=1.4.2',
        'numpy',
        'opencv-python',
        'pyyaml',
        'ninja',
        'scikit-image',
        'tqdm',
        'matplotlib',
        'safetensors',  # small, no dependencies; checkpoint loading (inference, training) reads .safetensors
    ],
    # deploy: export to ONNX (onnxscript: torch's dynamo ONNX exporter) and the ONNX Runtime check;
    # geo: NetCDF/Zarr gridded data (docs/gridded.md); the image path never imports either. dask[distributed]:
    # lazy Zarr templates of the streamed writer and --dask workers (metasr_arch.inference.archive)
    extras_require={'test': ['pytest', 'pytest-timeout', 'cf_xarray'],  # cf_xarray: CF checks of NetCDF outputs
                    'deploy': ['onnx', 'onnxruntime', 'onnxscript'],
                    'geo': ['xarray', 'netCDF4', 'zarr', 'dask[distributed]']},
    entry_points={'console_scripts': [
        'metasr-train=metasr_arch.train:main',
        'metasr-test=metasr_arch.test:main',
        'metasr-infer=metasr_arch.infer:main',
    ]},
)
