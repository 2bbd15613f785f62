"""No fallback to unsafe unpickling in mmengine's checkpoint loaders.

The maintained fork's mmengine (onedl-mmengine 0.10.12) reads checkpoints in
every loader (local files, pavi, ceph, ``open-mmlab://`` files) through
``mmengine.runner.checkpoint._safe_torch_load``, which first tries torch's
weights-only unpickler under its own allowlist (numpy's reconstructors and
constructors, ``HistoryBuffer``: objects through which a file forges
pointers and rewrites class state, docs/security.md) and, when that fails,
loads the file again with ``weights_only=False``: a crafted checkpoint then
runs its code in ``load_checkpoint``, a config's ``load_from``,
``init_detector`` / ``init_model`` and the frameworks' test tools.

mmengine has no setting for it, and its checkpoint-loader schemes would
each have to be copied to avoid it, so :func:`refuse_unsafe_fallback`
replaces that one function, process-wide, by torch's own loader with
``weights_only=True`` and torch's allowlist: what upstream mmengine 0.10.7
does (it has no such function and is left as it is). A caller's explicit
``weights_only`` is passed on. The package's own loaders never use it
(:mod:`poolformer_mm.checkpoint`).
"""
import torch

_NAME = '_safe_torch_load'


def _weights_only_load(file, map_location=None, weights_only=None):
    """``torch.load`` with ``weights_only=True`` unless the caller chose."""
    return torch.load(
        file,
        map_location=map_location,
        weights_only=True if weights_only is None else weights_only)


def refuse_unsafe_fallback() -> bool:
    """Replace the fork's ``_safe_torch_load`` (see the module docstring);
    True where there was one."""
    from mmengine.runner import checkpoint
    if not hasattr(checkpoint, _NAME):
        return False
    setattr(checkpoint, _NAME, _weights_only_load)
    return True
