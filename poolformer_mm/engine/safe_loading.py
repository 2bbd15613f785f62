"""The torch.load allowlist for mmengine training checkpoints.

Since torch 2.6 ``torch.load`` unpickles with ``weights_only=True`` unless told
otherwise, and mmengine 0.10 relies on that default. Its training checkpoints
hold more than tensors: the message hub keeps ``HistoryBuffer`` objects with
numpy arrays, numpy scalars and references to the buffer's statistics methods.
Loading them therefore fails on current torch, in MMDetection's and
MMSegmentation's own entry points (``init_detector``, ``DetInferencer``,
``init_model``, ``MMSegInferencer``, their ``tools/test.py`` and
``tools/train.py --resume``) as much as in this package's tools.

:func:`register_mmengine_types` adds exactly those data-only types to torch's
weights-only allowlist (:func:`torch.serialization.add_safe_globals`, torch's
extension point for this), once, when :mod:`poolformer_mm` is imported; the
configs import it through ``custom_imports`` before any checkpoint is read.
The weights-only rule itself stays on: a checkpoint that references anything
else (a function, a class with code) is still refused, by torch in the
frameworks' entry points and with a :class:`CheckpointError` naming the file
and the global in this package's (:func:`safe_checkpoint_loading`).
"""
import contextlib
import functools
import pickle
import zipfile
from typing import Callable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

from ..pretrained import CheckpointError, refused_global

# HistoryBuffer's built-in statistics (registered when a buffer is created).
_DEFAULT_STATISTICS = ('min', 'max', 'current', 'mean')


def _history_buffer_attribute(obj: object, name: str) -> Callable:
    """The only ``getattr`` an mmengine checkpoint needs.

    ``HistoryBuffer`` keeps its statistics methods (``min``, ``max``,
    ``current``, ``mean``) in a dict that pickle stores as
    ``getattr(HistoryBuffer, 'min')``. Plain ``builtins.getattr`` would hand
    any attribute of any allowed object to the unpickler; this one hands out
    those methods and nothing else.
    """
    names = set(_DEFAULT_STATISTICS) | set(HistoryBuffer._statistics_methods)
    method = HistoryBuffer.__dict__.get(name) if name in names else None
    if obj is not HistoryBuffer or not callable(method):
        raise pickle.UnpicklingError(
            f'getattr({obj!r}, {name!r}) is not allowed: mmengine '
            'checkpoints only reference the statistics methods of '
            'HistoryBuffer')
    return method


def _numpy_globals() -> List[Tuple[object, str]]:
    """numpy's array / dtype / scalar reconstructors, under every module
    path that numpy 1.x and 2.x write into pickles."""
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:
        from numpy.core import multiarray
    entries = [(np.ndarray, 'numpy.ndarray'), (np.dtype, 'numpy.dtype')]
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        for name in ('_reconstruct', 'scalar'):
            entries.append((getattr(multiarray, name), f'{module}.{name}'))
    # numpy >= 1.25 pickles some dtypes by their class (numpy.dtypes.*DType).
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        for name in dir(dtypes):
            cls = getattr(dtypes, name)
            if isinstance(cls, type) and issubclass(cls, np.dtype):
                entries.append((cls, f'numpy.dtypes.{name}'))
    return entries


@functools.lru_cache(maxsize=None)
def mmengine_checkpoint_globals() -> Tuple[Tuple[object, str], ...]:
    """What an mmengine training checkpoint may reference besides tensors
    and plain containers, as ``(object, 'module.name')`` pairs for
    :func:`torch.serialization.add_safe_globals`.

    Found by disassembling checkpoints that the demo configs save
    (``torch.serialization.get_unsafe_globals_in_checkpoint``): the message
    hub's ``HistoryBuffer`` with its numpy arrays and scalars, and the
    ``getattr`` that references the buffer's statistics methods.
    """
    return tuple([(HistoryBuffer,
                   'mmengine.logging.history_buffer.HistoryBuffer'),
                  (_history_buffer_attribute, 'builtins.getattr')] +
                 _numpy_globals())


def register_mmengine_types() -> None:
    """Add :func:`mmengine_checkpoint_globals` to torch's weights-only
    allowlist for the whole process (idempotent).

    torch < 2.6 has no process-wide allowlist, and its ``torch.load`` is not
    weights-only by default: there this adds nothing (mmengine's old
    behaviour).
    """
    add_safe_globals = getattr(torch.serialization, 'add_safe_globals', None)
    if add_safe_globals is not None:
        add_safe_globals(list(mmengine_checkpoint_globals()))


@contextlib.contextmanager
def _refusals_named(filename: Optional[str]) -> Iterator[None]:
    """Turn torch's ``UnpicklingError`` into a :class:`CheckpointError` that
    names the file and the offending global."""
    try:
        yield
    except pickle.UnpicklingError as exc:
        what = refused_global(exc)
        if what is None:
            raise CheckpointError(
                f'{filename!r} is not a readable checkpoint: {exc}') from exc
        allowed = sorted({
            name + (' (of HistoryBuffer statistics only)'
                    if name == 'builtins.getattr' else '')
            for _, name in mmengine_checkpoint_globals()
            if not name.startswith('numpy.dtypes.')
        })
        raise CheckpointError(
            f'Refusing to load checkpoint {filename or ""!r}: unpickling '
            f'it needs {what}, which could run arbitrary code. Allowed '
            'are tensors, plain Python containers and the types mmengine '
            f'training checkpoints contain ({", ".join(allowed)}, numpy '
            'dtypes). If you trust the file, convert it in a trusted '
            'environment (e.g. keep only its state_dict).') from exc


def load_training_checkpoint(filename: str,
                             map_location: Union[str,
                                                 Callable] = 'cpu') -> dict:
    """Read an mmengine training checkpoint with weights-only unpickling.

    Args:
        filename (str): Local path (or any path mmengine's loaders accept).
        map_location (str | callable): Where tensors go. Defaults to 'cpu'.

    Raises:
        FileNotFoundError: No such file.
        CheckpointError: Torn or not a checkpoint, or needs unsafe globals.
    """
    from mmengine.runner.checkpoint import _load_checkpoint
    with safe_checkpoint_loading(filename):
        return _load_checkpoint(filename, map_location=map_location)


@contextlib.contextmanager
def _readable(filename: str) -> Iterator[None]:
    """Turn torch's errors for torn / foreign files into CheckpointError."""
    try:
        yield
    except (zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(
            f'{filename!r} is not a readable checkpoint (truncated or not a '
            f'PyTorch file): {exc}') from exc
    except RuntimeError as exc:
        if isinstance(exc, CheckpointError) or not any(
                s in str(exc) for s in ('zip archive', 'central directory',
                                        'PytorchStreamReader')):
            raise
        raise CheckpointError(
            f'{filename!r} is not a readable checkpoint (truncated or not a '
            f'PyTorch file): {exc}') from exc


@contextlib.contextmanager
def safe_checkpoint_loading(filename: str) -> Iterator[None]:
    """Read a training checkpoint inside: a :class:`CheckpointError` that
    names the file for a torn or foreign one, or for one that needs globals
    outside the allowlist.

    Args:
        filename (str): The file being loaded, for the messages.
    """
    with _refusals_named(filename), _readable(filename):
        yield


register_mmengine_types()
