"""Loading and finding the training checkpoints that mmengine writes, safely.

Since torch 2.6 ``torch.load`` unpickles with ``weights_only=True`` unless told
otherwise, and mmengine 0.10 relies on that default. Its training checkpoints
hold more than tensors: the message hub keeps ``HistoryBuffer`` objects with
numpy arrays, numpy scalars and references to the buffer's statistics methods.
Resuming therefore fails on current torch. This module allows exactly those
types, and only while the tools load a checkpoint
(:func:`allow_mmengine_types`); the weights-only rule itself stays on, and
pretrained weights (:mod:`poolformer_mm.checkpoint`) are read without these
extra types.

It also finds the checkpoint to resume from (:func:`find_resumable_checkpoint`)
without trusting a file that a crash may have left torn.
"""
import contextlib
import functools
import logging
import os
import os.path as osp
import pickle
import re
import zipfile
from typing import Callable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer, print_log

from ..checkpoint import CheckpointError

LAST_CHECKPOINT = 'last_checkpoint'
# HistoryBuffer's built-in statistics (registered when a buffer is created).
_DEFAULT_STATISTICS = ('min', 'max', 'current', 'mean')
# File names CheckpointHook gives its checkpoints by default.
_CHECKPOINT_NAME = re.compile(r'^(epoch|iter)_(\d+)\.pth$')


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
    :func:`torch.serialization.safe_globals`.

    Found by disassembling checkpoints that the demo configs save
    (``torch.serialization.get_unsafe_globals_in_checkpoint``): the message
    hub's ``HistoryBuffer`` with its numpy arrays and scalars, and the
    ``getattr`` that references the buffer's statistics methods.
    """
    return tuple([(HistoryBuffer,
                   'mmengine.logging.history_buffer.HistoryBuffer'),
                  (_history_buffer_attribute, 'builtins.getattr')] +
                 _numpy_globals())


@contextlib.contextmanager
def allow_mmengine_types(filename: Optional[str] = None) -> Iterator[None]:
    """Let weights-only ``torch.load`` calls inside read mmengine checkpoints.

    The allowlist is added on entry and removed on exit; ``weights_only``
    stays on. An ``UnpicklingError`` from a file that needs anything else is
    turned into a :class:`CheckpointError` that names the file and the
    offending global.

    torch < 2.5 has no allowlist, and its ``torch.load`` is not weights-only
    by default: there this context adds nothing (mmengine's old behaviour).

    Args:
        filename (str, optional): The file being loaded, for the message.
    """
    safe_globals = getattr(torch.serialization, 'safe_globals', None)
    allowlist = (
        safe_globals(list(mmengine_checkpoint_globals()))
        if safe_globals is not None else contextlib.nullcontext())
    with allowlist:
        try:
            yield
        except pickle.UnpicklingError as exc:
            if 'Weights only load failed' not in str(exc):
                raise CheckpointError(
                    f'{filename!r} is not a readable checkpoint: {exc}'
                ) from exc
            match = re.search(r'GLOBAL (\S+)|(getattr\(.*?\)) is not allowed',
                              str(exc))
            if match and match.group(1):
                what = f'the global {match.group(1)}'
            else:
                what = match.group(2) if match else 'other globals'
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
    with allow_mmengine_types(filename), _readable(filename):
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


def guard_checkpoint_loading(runner) -> None:
    """Make ``runner`` load checkpoints (``load_from``, ``resume``) with
    :func:`allow_mmengine_types` and readable errors.

    Only this runner's ``load_checkpoint`` is wrapped (``resume`` goes
    through it too); torch's global defaults are left alone.
    """
    load_checkpoint = runner.load_checkpoint
    if getattr(load_checkpoint, '_poolformer_mm_guarded', False):
        return

    @functools.wraps(load_checkpoint)
    def guarded(filename, *args, **kwargs):
        with allow_mmengine_types(filename), _readable(filename):
            return load_checkpoint(filename, *args, **kwargs)

    guarded._poolformer_mm_guarded = True
    runner.load_checkpoint = guarded

    resume = runner.resume

    @functools.wraps(resume)
    def checked_resume(filename, *args, **kwargs):
        resume(filename, *args, **kwargs)
        check_optimizer_state(runner, filename)

    runner.resume = checked_resume


def check_optimizer_state(runner, filename: str) -> None:
    """Fail right after resuming if the optimizer state does not fit the
    parameters it was assigned to.

    torch restores optimizer state by parameter *position*. A checkpoint of a
    model whose parameters are registered in another order or have other
    shapes (e.g. saved by an older version of the code) loads without
    complaint and breaks in the first ``optimizer.step()`` with a broadcast
    error; this names the parameter instead.
    """
    from mmengine.optim import OptimWrapperDict
    model = getattr(runner.model, 'module', runner.model)
    names = {id(p): n for n, p in model.named_parameters()}
    wrappers = runner.optim_wrapper
    wrappers = (
        list(wrappers.values())
        if isinstance(wrappers, OptimWrapperDict) else [wrappers])
    for wrapper in wrappers:
        optimizer = getattr(wrapper, 'optimizer', None)
        if optimizer is None:
            continue
        for group in optimizer.param_groups:
            for param in group['params']:
                for key, value in optimizer.state.get(param, {}).items():
                    if (isinstance(value, torch.Tensor) and value.dim() > 0
                            and value.shape != param.shape):
                        raise CheckpointError(
                            f'Cannot resume from {filename!r}: its optimizer '
                            f'state {key!r} has shape {tuple(value.shape)} '
                            'where the model parameter '
                            f'{names.get(id(param), "?")} has '
                            f'{tuple(param.shape)}. The checkpoint was saved '
                            'by a model with other parameters or another '
                            'parameter order (an older version of the code?).'
                            ' Start a new run from its weights with '
                            '--cfg-options load_from=PATH instead.')


def checkpoint_is_complete(path: str) -> bool:
    """Whether ``path`` is a whole ``torch.save`` file.

    torch writes a zip archive whose central directory comes last, so a file
    cut short by a crash has none; a CRC check over every record catches
    damage in the middle. Nothing is unpickled.
    """
    if not osp.isfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if not any(
                    n.endswith('/data.pkl') or n == 'data.pkl' for n in names):
                return False
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False


def _checkpoints_in(directory: str) -> List[str]:
    """``epoch_N.pth`` / ``iter_N.pth`` in ``directory``, newest first."""
    if not osp.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        match = _CHECKPOINT_NAME.match(name)
        if match:
            found.append(
                (int(match.group(2)), osp.getmtime(osp.join(directory, name)),
                 osp.join(directory, name)))
    return [path for *_, path in sorted(found, reverse=True)]


def find_resumable_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint to resume from: the one ``last_checkpoint`` names if it
    is complete, otherwise the newest complete ``epoch_N.pth`` /
    ``iter_N.pth`` next to it (a warning says which was skipped).

    Returns:
        str | None: None when the work dir has no checkpoint at all.

    Raises:
        CheckpointError: Checkpoints exist but none of them is complete.
    """
    pointer = osp.join(work_dir, LAST_CHECKPOINT)
    named = None
    if osp.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip() or None
    if named is not None and checkpoint_is_complete(named):
        return named
    directories = [work_dir]
    if named is not None and osp.dirname(named) not in ('', work_dir):
        directories.insert(0, osp.dirname(named))
    candidates = [p for d in directories for p in _checkpoints_in(d)]
    for path in candidates:
        if checkpoint_is_complete(path):
            if named is not None:
                print_log(
                    f'{pointer} names {named}, which is missing or '
                    f'incomplete (a crash while it was written?); resuming '
                    f'from {path} instead.',
                    logger='current',
                    level=logging.WARNING)
            return path
    if named is None and not candidates:
        return None
    raise CheckpointError(
        f'Cannot resume from {work_dir}: '
        f'{LAST_CHECKPOINT} names {named!r} and no complete checkpoint '
        f'(epoch_N.pth / iter_N.pth) was found; checked '
        f'{candidates or "no files"}. Give one with --resume PATH or start '
        'without --resume.')
