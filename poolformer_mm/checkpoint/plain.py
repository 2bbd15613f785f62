"""Checkpoints as plain data, which torch's default weights-only loader reads.

Besides tensors, a training checkpoint holds mmengine's message hub, whose
``HistoryBuffer`` objects keep numpy arrays, and the random generator states
that an exact resume needs, which hold numpy arrays too. torch's
``weights_only`` unpickler refuses both, and allowing their constructors for
the whole process would let every file that process loads reach them (see
docs/security.md). So every checkpoint this package writes is first turned
into plain data by :func:`to_plain`: tensors, dicts, lists, tuples, sets,
strings, bytes, numbers, booleans and None, with the objects a resume needs
written as tagged dicts::

    {'__type__': 'mmengine.logging.HistoryBuffer', 'log_history': Tensor,
     'count_history': Tensor, 'max_length': int}
    {'__type__': 'numpy.ndarray', 'data': Tensor}

numpy scalars become Python numbers. The code that resumes turns the tags
back into objects with :func:`from_plain`, through their constructors and
from checked values.
"""
from collections import OrderedDict
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..errors import CheckpointError

TYPE_KEY = '__type__'
HISTORY_BUFFER = 'mmengine.logging.HistoryBuffer'
NDARRAY = 'numpy.ndarray'

# What torch's default weights-only unpickler reads as it is (exact types:
# subclasses such as numpy.float64 or an IntEnum pickle by their class).
_ATOMS = (str, bytes, bool, int, float, complex, type(None), torch.dtype,
          torch.device)
# numpy dtype kinds with a torch dtype: bool, signed, unsigned, float,
# complex.
NUMERIC_KINDS = 'biufc'


def array_to_tensor(array: np.ndarray, where: str = 'array') -> Tensor:
    """A tensor holding a copy of a numeric numpy array (any byte order).

    Raises:
        TypeError: ``array`` holds objects, strings, records, dates, or a
            numeric type torch lacks (e.g. ``longdouble``).
    """
    if array.dtype.kind not in NUMERIC_KINDS or array.dtype.fields:
        raise TypeError(
            f'{where} is a numpy array of dtype {array.dtype}; a checkpoint '
            'holds numeric arrays only (bool, integers, floats, complex)')
    native = np.ascontiguousarray(
        array.astype(array.dtype.newbyteorder('='), copy=False))
    try:
        return torch.from_numpy(native.copy())
    except TypeError as exc:
        raise TypeError(f'{where}: numpy dtype {array.dtype} has no torch '
                        f'dtype ({exc})') from None


def _history_buffer_type():
    from mmengine.logging import HistoryBuffer
    return HistoryBuffer


def _map_children(obj: Any, convert: Callable[[Any, str], Any],
                  where: str) -> Any:
    """``obj`` (a dict, list, tuple or set) with ``convert`` applied to its
    items; ``obj`` itself when nothing changed (a model's state dict keeps
    its identity and ``_metadata``)."""
    if isinstance(obj, dict):
        items = [(convert(k, f'{where} key {k!r}'),
                  convert(v, f'{where}[{k!r}]')) for k, v in obj.items()]
        if type(obj) in (dict, OrderedDict) and all(
                nk is k and nv is v
                for (nk, nv), (k, v) in zip(items, obj.items())):
            return obj
        new = OrderedDict(items) if isinstance(obj, OrderedDict) else dict(
            items)
        metadata = getattr(obj, '_metadata', None)
        if metadata is not None:
            new._metadata = convert(metadata, f'{where}._metadata')
        return new
    values = [convert(v, f'{where}[{i}]') for i, v in enumerate(obj)]
    if all(n is v for n, v in zip(values, obj)):
        return obj
    return type(obj)(values)


def to_plain(obj: Any, where: str = 'checkpoint') -> Any:
    """``obj`` as plain data (see the module docstring).

    Containers are rebuilt only where something inside them changes; dict
    subclasses other than ``OrderedDict`` (e.g. mmengine's ``ConfigDict``)
    become plain dicts.

    Args:
        obj: A checkpoint, or any part of one.
        where (str): How to name ``obj`` in an error. Defaults to
            'checkpoint'.

    Raises:
        TypeError: Something that is not data and has no encoding; the
            message names where it is.
    """
    if isinstance(obj, Tensor) or type(obj) in _ATOMS:
        return obj
    if isinstance(obj, np.generic):
        if obj.dtype.kind in NUMERIC_KINDS:
            return obj.item()
        if obj.dtype.kind in 'SU':
            return obj.item()
        raise TypeError(f'{where} is a numpy {obj.dtype} scalar, which a '
                        'checkpoint cannot hold')
    if isinstance(obj, np.ndarray):
        return {TYPE_KEY: NDARRAY, 'data': array_to_tensor(obj, where)}
    if isinstance(obj, _history_buffer_type()):
        return {
            TYPE_KEY: HISTORY_BUFFER,
            'log_history': array_to_tensor(
                np.asarray(obj._log_history), f'{where}.log_history'),
            'count_history': array_to_tensor(
                np.asarray(obj._count_history), f'{where}.count_history'),
            'max_length': int(obj.max_length),
        }
    if isinstance(obj, dict) or type(obj) in (list, tuple, set, torch.Size):
        return _map_children(obj, to_plain, where)
    raise TypeError(
        f'{where} is a {type(obj).__module__}.{type(obj).__qualname__}, '
        "which torch's weights-only loader refuses and this package cannot "
        'store as data. Keep only tensors, numbers, strings, lists and dicts '
        'there (e.g. in the message hub).')


def _tensor_field(value: Any, where: str, kinds: str) -> np.ndarray:
    if not isinstance(value, Tensor) or value.dim() != 1:
        raise CheckpointError(f'{where} must be a 1-D tensor, got '
                              f'{type(value).__name__}')
    array = value.detach().cpu().numpy()
    if array.dtype.kind not in kinds:
        raise CheckpointError(f'{where} has dtype {array.dtype}')
    return array


def _decode(obj: dict, where: str) -> Any:
    kind = obj[TYPE_KEY]
    if kind == NDARRAY:
        if set(obj) != {TYPE_KEY, 'data'} or not isinstance(
                obj['data'], Tensor):
            raise CheckpointError(
                f'{where}: an encoded numpy array has exactly the keys '
                f"{TYPE_KEY!r} and 'data' (a tensor), got {sorted(obj)}")
        return obj['data'].detach().cpu().numpy()
    expected = {TYPE_KEY, 'log_history', 'count_history', 'max_length'}
    if set(obj) != expected:
        raise CheckpointError(
            f'{where}: an encoded HistoryBuffer has exactly the keys '
            f'{sorted(expected)}, got {sorted(obj)}')
    log = _tensor_field(obj['log_history'], f'{where}.log_history', 'iuf')
    count = _tensor_field(obj['count_history'], f'{where}.count_history',
                          'iu')
    max_length = obj['max_length']
    if type(max_length) is not int or max_length < 1 or len(log) != len(
            count):
        raise CheckpointError(
            f'{where}: max_length must be a positive int and both '
            f'histories equally long, got max_length={max_length!r}, '
            f'{len(log)} and {len(count)} entries')
    return _history_buffer_type()(log, count, max_length)


def from_plain(obj: Any, where: str = 'checkpoint') -> Any:
    """The objects that :func:`to_plain` encoded, built through their
    constructors (``HistoryBuffer(log, count, max_length)``, numpy arrays
    from tensors); everything else as it is.

    Args:
        obj: Plain data, e.g. a checkpoint read by
            :func:`~poolformer_mm.checkpoint.read_checkpoint`.
        where (str): How to name ``obj`` in an error.

    Raises:
        CheckpointError: A tagged dict whose fields are not those of its
            type.
    """
    if isinstance(obj, dict):
        if obj.get(TYPE_KEY) in (NDARRAY, HISTORY_BUFFER):
            return _decode(obj, where)
        return _map_children(obj, from_plain, where)
    if type(obj) in (list, tuple, set):
        return _map_children(obj, from_plain, where)
    return obj
