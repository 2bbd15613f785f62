"""This package's configs as a config package of mmengine.

``_base_ = ['poolformer_mm::<folder>/<config>.py']`` resolves once the
package is imported (:func:`register_config_package`): mmengine reads such
bases only for packages in its ``MODULE2PACKAGE`` dict and offers no API to
add one, so the entry is added here (and, with the maintained fork, the
frameworks' entries point at its distributions), the package's one change to
mmengine's configuration state. mmengine then finds the configs under
``poolformer_mm/.mim/configs`` of an installed wheel (:func:`config_dir`).
Settings inherited that way are marked with this package's scope, which
:func:`resolve_package_scope` replaces by the config's own.
"""
import os.path as osp

from mmengine.config import Config
from mmengine.config import utils as config_utils

PACKAGE = 'poolformer_mm'


def config_dir() -> str:
    """The folder holding this package's configs: ``.mim/configs`` inside an
    installed wheel, the checkout's ``configs/`` for an editable install.

    A config outside this package names its bases by this folder where
    ``poolformer_mm::`` cannot be used (a tool that reads the config before
    anything imports poolformer_mm), e.g. through an environment variable:
    ``_base_ = ['{{$POOLFORMER_MM_CONFIGS:}}/retinanet_poolformer_s12.py']``.
    """
    package_dir = osp.dirname(osp.abspath(__file__))
    installed = osp.join(package_dir, '.mim', 'configs')
    if osp.isdir(installed):
        return installed
    return osp.join(osp.dirname(package_dir), 'configs')


def register_config_package() -> None:
    """Let mmengine read ``poolformer_mm::<folder>/<config>.py`` bases.

    mmengine resolves ``pkg::path`` only for packages in
    ``mmengine.config.utils.MODULE2PACKAGE`` (and, by its pattern
    ``pkg::folder/file``, only for configs in a sub-folder: ``_base_/`` and
    ``demo/`` here). It finds them under the installed package's
    ``.mim/configs``, which wheels of this package carry; an editable
    install has none there, so name configs by :func:`config_dir` instead.

    With the maintained fork, whose distributions have other names
    (``onedl-mmsegmentation`` installs ``mmseg``), the frameworks' entries
    are pointed at the distribution installed: mmengine (onedl-mmengine
    0.10.12 too) looks ``mmseg::`` bases up by the distribution
    ``mmsegmentation`` and would find none.
    """
    from .frameworks import installed_distribution
    config_utils.MODULE2PACKAGE.setdefault(PACKAGE, PACKAGE)
    for module in ('mmdet', 'mmseg'):
        listed = config_utils.MODULE2PACKAGE.get(module)
        installed = installed_distribution(module)
        if listed and installed and listed != installed:
            config_utils.MODULE2PACKAGE[module] = installed


def resolve_package_scope(cfg: Config) -> Config:
    """A copy of ``cfg`` in which ``_scope_='poolformer_mm'`` is replaced by
    the config's ``default_scope``.

    mmengine marks every setting a config inherits through a ``pkg::`` base
    with ``_scope_=pkg``, to build it with that package's registries. This
    package has none of its own: its configs are MMDetection or
    MMSegmentation configs (their ``default_scope``), and e.g. a pipeline
    inherited from one would otherwise be looked up in mmengine's root
    registries, which lack the frameworks' transforms.

    Args:
        cfg (Config): A config read by ``Config.fromfile``.

    Returns:
        Config: ``cfg`` itself when nothing is marked, else a copy.
    """
    scope = cfg.get('default_scope')

    def resolve(value):
        if isinstance(value, dict):
            resolved = {key: resolve(item) for key, item in value.items()}
            if resolved.get('_scope_') == PACKAGE:
                if scope is None:
                    del resolved['_scope_']
                else:
                    resolved['_scope_'] = scope
            return resolved
        if isinstance(value, (list, tuple)):
            return type(value)(resolve(item) for item in value)
        return value

    as_dict = cfg.to_dict()
    resolved = resolve(as_dict)
    if resolved == as_dict:
        return cfg
    return Config(resolved, filename=cfg.filename)


register_config_package()
