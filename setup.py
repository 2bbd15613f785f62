"""Install poolformer_mm: PoolFormer backbones for MMDetection and
MMSegmentation.

torch and mmcv (with ops) are installed by ``tools/setup_env.sh`` before this
package, as in OpenMMLab projects: their right build depends on the machine.
The frameworks are extras: ``.[mmdet]``, ``.[mmseg]``, ``.[all]`` for the
upstream releases, ``.[onedl]`` for the maintained fork (which installs the
same modules under other distribution names), so the package installs into
an environment that has either stack without replacing it; importing the
package names what is missing (``poolformer_mm/frameworks.py``).

As OpenMMLab packages do, the wheel carries the configs and tools under
``poolformer_mm/.mim/``, where mmengine looks for ``poolformer_mm::`` base
configs (see :func:`poolformer_mm.config_dir`).
"""
import os
import os.path as osp
import re
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = osp.dirname(osp.abspath(__file__))
# Copied into the built package as poolformer_mm/.mim/<name>; mmengine needs
# model-index.yml there to read `poolformer_mm::` bases.
MIM_FILES = ('configs', 'tools', 'model-index.yml')


def get_version():
    with open(osp.join(HERE, 'poolformer_mm', 'version.py')) as f:
        return re.search(r"__version__ = '([^']+)'", f.read()).group(1)


def parse_requirements(name):
    """Requirement lines of ``requirements/<name>.txt``, comments removed."""
    with open(osp.join(HERE, 'requirements', f'{name}.txt')) as f:
        lines = (line.split('#', 1)[0].strip() for line in f)
        return [line for line in lines if line]


class BuildPyWithMim(build_py):
    """``build_py`` that also copies ``configs/``, ``tools/`` and
    ``model-index.yml`` into the built package's ``.mim/`` (wheels and
    regular installs; an editable install reads them from the checkout)."""

    def run(self):
        super().run()
        if self.editable_mode:
            return
        mim = osp.join(self.build_lib, 'poolformer_mm', '.mim')
        for name in MIM_FILES:
            source, target = osp.join(HERE, name), osp.join(mim, name)
            if osp.isdir(target):
                shutil.rmtree(target)
            if osp.isdir(source):
                shutil.copytree(
                    source,
                    target,
                    ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
            else:
                os.makedirs(mim, exist_ok=True)
                shutil.copyfile(source, target)


frameworks = {
    name: parse_requirements(name)
    for name in ('mmdet', 'mmseg', 'onedl')
}

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
    extras_require=dict(
        frameworks,
        all=sorted(set(frameworks['mmdet'] + frameworks['mmseg'])),
        deploy=parse_requirements('deploy'),
        tests=parse_requirements('tests')),
    cmdclass={'build_py': BuildPyWithMim},
    zip_safe=False,
)
