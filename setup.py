"""Install poolformer_mm: PoolFormer backbones for MMDetection and MMSegmentation.

torch and mmcv (with ops) are installed by ``tools/setup_env.sh`` before this
package, as in OpenMMLab projects: their right build depends on the machine.
"""
import os.path as osp
import re

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def get_version():
    with open(osp.join(HERE, 'poolformer_mm', 'version.py')) as f:
        return re.search(r"__version__ = '([^']+)'", f.read()).group(1)


def parse_requirements(name):
    """Requirement lines of ``requirements/<name>.txt``, comments removed."""
    with open(osp.join(HERE, 'requirements', f'{name}.txt')) as f:
        lines = (line.split('#', 1)[0].strip() for line in f)
        return [line for line in lines if line]


setup(
    name='poolformer_mm',
    version=get_version(),
    description='PoolFormer (MetaFormer, CVPR 2022) backbones for '
    'MMDetection 3.x and MMSegmentation 1.x',
    long_description=open(osp.join(HERE, 'README.md')).read(),
    long_description_content_type='text/markdown',
    license='Apache License 2.0',
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools')),
    python_requires='>=3.8',
    install_requires=parse_requirements('runtime'),
    extras_require={'tests': parse_requirements('tests')},
    zip_safe=False,
)
