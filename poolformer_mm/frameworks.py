"""Which OpenMMLab stack this package runs on, checked when it is imported.

Two stacks install the modules ``mmengine``, ``mmcv``, ``mmdet`` and
``mmseg``: the last upstream releases (distributions ``mmengine``, ``mmcv``,
``mmdet``, ``mmsegmentation``) and the maintained fork (``onedl-mmengine``,
``onedl-mmcv``, ``onedl-mmdetection``, ``onedl-mmsegmentation``). A package
requirement names a distribution, so requiring ``mmengine`` would make pip
install the upstream one over the fork's module; this package's requirements
therefore leave the stack out (the extras ``[mmdet]``, ``[mmseg]``,
``[onedl]`` name it), and :func:`check_frameworks` says at import what is
missing or of an untested version instead.
"""
from importlib import metadata
from typing import Dict, Optional, Tuple

# module: (lowest version, first version outside), the tested ranges of both
# stacks (upstream mmengine 0.10.7 / fork 0.10.12; mmcv 2.1 / fork 2.3).
SUPPORTED = {
    'mmengine': ((0, 10, 7), (0, 11)),
    'mmcv': ((2, 1), (2, 4)),
}
# The distributions that install each module, upstream first.
DISTRIBUTIONS = {
    'mmengine': ('mmengine', 'onedl-mmengine'),
    'mmcv': ('mmcv', 'onedl-mmcv', 'mmcv-lite'),
    'mmdet': ('mmdet', 'onedl-mmdetection'),
    'mmseg': ('mmsegmentation', 'onedl-mmsegmentation'),
}
HOW_TO_INSTALL = (
    'install one OpenMMLab stack: the upstream releases (pip install '
    'mmengine, and mmcv 2.1 with ops, see tools/setup_env.sh; or pip install '
    "'poolformer_mm[all]'), or the maintained fork (pip install "
    "'poolformer_mm[onedl]' with onedl-mmcv)")


def _version(text: str) -> Tuple[int, ...]:
    parts = []
    for part in text.split('.'):
        digits = ''.join(c for c in part if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if digits != part:
            break
    return tuple(parts)


def installed_distribution(module: str) -> Optional[str]:
    """The distribution that installed ``module`` (e.g. 'onedl-mmengine'),
    None when none of :data:`DISTRIBUTIONS` is installed."""
    for name in DISTRIBUTIONS[module]:
        try:
            metadata.version(name)
            return name
        except metadata.PackageNotFoundError:
            continue
    return None


def stack() -> Dict[str, Optional[str]]:
    """``{module: 'distribution version'}`` of the installed stack (None for
    what is missing): what a report or an issue should quote."""
    found = {}
    for module in DISTRIBUTIONS:
        name = installed_distribution(module)
        found[module] = (None if name is None else
                         f'{name} {metadata.version(name)}')
    return found


def check_frameworks() -> None:
    """Fail with what to install when mmengine or mmcv is missing, or of a
    version outside :data:`SUPPORTED`.

    Raises:
        ImportError: Names the module, the version found and the range.
    """
    for module, (low, high) in SUPPORTED.items():
        try:
            imported = __import__(module)
        except ImportError as exc:
            raise ImportError(
                f'poolformer_mm needs {module}, which cannot be imported '
                f'({exc}): {HOW_TO_INSTALL}') from exc
        version = getattr(imported, '__version__', '0')
        if not low <= _version(version) < high:
            raise ImportError(
                f'poolformer_mm runs on {module} '
                f'>={".".join(map(str, low))},<{".".join(map(str, high))}, '
                f'found {version} ({installed_distribution(module) or "?"}):'
                f' {HOW_TO_INSTALL}')
