"""metasr_arch: magnification-arbitrary super-resolution (Meta-SR) as a BasicSR plugin."""
from setuptools import find_packages, setup

setup(
    name='metasr_arch',
    version='0.1.0',
    description='Meta-SR (arbitrary and asymmetric scale super-resolution) for BasicSR',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['metasr_arch', 'metasr_arch.*']),
    # The native sources live in ops/meta_upscale at the top level (design card); ship them inside the
    # package as data so that wheel installs find them too (editable installs read them in place).
    package_data={'metasr_arch': ['csrc/*.cpp', 'csrc/*.cu', 'csrc/*.h']},
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
    ],
    extras_require={'test': ['pytest', 'pytest-timeout']},
    entry_points={'console_scripts': [
        'metasr-train=metasr_arch.train:main',
        'metasr-test=metasr_arch.test:main',
        'metasr-infer=metasr_arch.infer:main',
    ]},
)
