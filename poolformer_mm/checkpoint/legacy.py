"""Reading checkpoints that hold mmengine and numpy objects, without their
constructors.

mmengine's own ``CheckpointHook``, and this package before it wrote plain
data (:mod:`.plain`), store the message hub's ``HistoryBuffer`` objects,
numpy arrays and numpy scalars by pickling them. Unpickling them would call
numpy's ``_reconstruct`` and ``ndarray.__setstate__`` and
``HistoryBuffer.__setstate__`` with whatever the file says: a crafted file
forges object pointers (an object array from raw bytes), makes numpy read
memory it does not own (a planted ``__array_interface__``), rewrites the
class-level statistics table of every ``HistoryBuffer`` in the process, or
asks for views of 10^15 elements (docs/security.md).

Here those names stand for validating stand-ins instead
(:data:`STAND_INS`), allowed only while :func:`stand_ins` is active, i.e.
inside this package's loaders, never for the whole process. Each stand-in
accepts exactly the state that numpy and mmengine write for data, checks
it, and records it; :func:`resolve` then replaces every stand-in in the
loaded object by plain data (:mod:`.plain`):

- arrays: numeric dtypes only (no object, string, record, void or date
  dtypes), C or Fortran order, exactly ``prod(shape) * itemsize`` bytes of
  at most :data:`MAX_ARRAY_BYTES`, copied into a tensor;
- dtypes: a numeric type string and the state numpy writes for it;
- scalars: a numeric dtype and exactly ``itemsize`` bytes, as a Python
  number;
- ``HistoryBuffer``: its state field by field (``max_length`` an int, the
  two histories numeric 1-D arrays of one length, the statistics methods
  named by the four defaults), kept as data: nothing is written to an
  instance or to the class;
- ``getattr``: only ``getattr(HistoryBuffer, name)`` for the four default
  statistics, which pickle writes for the buffer's statistics table.

Everything else stays refused by torch's weights-only unpickler.
"""
import contextlib
import math
import pickle
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import torch

from .plain import (HISTORY_BUFFER, NDARRAY, NUMERIC_KINDS, TYPE_KEY,
                    array_to_tensor)

# The largest numpy array a checkpoint may hold: the message hub keeps at
# most HistoryBuffer's max_length (10^6 by default) values per buffer.
MAX_ARRAY_BYTES = 1 << 28
# The statistics every HistoryBuffer registers; pickle stores the buffer's
# table of them as ``getattr(HistoryBuffer, name)``.
DEFAULT_STATISTICS = ('min', 'max', 'current', 'mean')
_HISTORY_BUFFER_FIELDS = ('max_length', '_log_history', '_count_history')
# numpy type strings of the numeric dtypes (byte order comes from the
# state).
_NUMERIC_TYPESTRS = {
    '?', 'b1', 'i1', 'u1', 'i2', 'u2', 'i4', 'u4', 'i8', 'u8', 'f2', 'f4',
    'f8', 'c8', 'c16'
}


class RefusedError(pickle.UnpicklingError):
    """What the stand-ins raise for state that is not plain data."""


def _refuse(what: str) -> None:
    raise RefusedError(f'poolformer_mm refused {what}')


class _StandIn:
    """Base of the stand-in classes: created only by the unpickler's paths
    that numpy and mmengine pickles take, built once."""

    _built = False

    def __new__(cls, *args, **kwargs):
        _refuse(f'{cls._pickled_as}({_short(args)}): only the reconstructor '
                'that numpy / mmengine pickles call may create it')

    @classmethod
    def _blank(cls) -> '_StandIn':
        return object.__new__(cls)

    def __setstate__(self, state: Any) -> None:
        if self._built:
            _refuse(f'a second state for {self._pickled_as}')
        self._build(state)
        self._built = True

    def __reduce__(self):
        _refuse(f'pickling a stand-in for {self._pickled_as}')


def _short(value: Any) -> str:
    if isinstance(value, type) and issubclass(value, _StandIn):
        return value._pickled_as
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + '...'


class Dtype(_StandIn):
    """``numpy.dtype(typestr, align, copy)`` of a numeric type."""

    _pickled_as = 'numpy.dtype'

    def __new__(cls, *args, **kwargs):
        if kwargs or len(args) != 3 or args[0] not in _NUMERIC_TYPESTRS or (
                args[1] is not False) or args[2] is not True:
            _refuse(f'numpy.dtype{_short(args)}: only numeric dtypes '
                    f'{sorted(_NUMERIC_TYPESTRS)} are accepted')
        self = cls._blank()
        self.typestr = args[0]
        return self

    def _build(self, state: Any) -> None:
        # (version, byte order, subarray, names, fields, elsize, alignment,
        # flags): what numpy writes for a plain numeric dtype.
        if (not isinstance(state, tuple) or len(state) != 8 or state[0] != 3
                or state[1] not in ('<', '>', '|', '=')
                or state[2:5] != (None, None, None)
                or state[5:7] != (-1, -1) or state[7] != 0):
            _refuse(f'the dtype state {_short(state)}: a numeric dtype has '
                    "(3, byte order, None, None, None, -1, -1, 0)")
        self.dtype = np.dtype(self.typestr).newbyteorder(state[1])

    def __repr__(self) -> str:
        return f'numpy.dtype({self.typestr!r})'

    def value(self) -> np.dtype:
        if not self._built:
            _refuse('a numpy dtype without its state')
        return self.dtype


class Array(_StandIn):
    """A numpy array: ``_reconstruct(ndarray, (0,), b'b')``, then its state
    ``(1, shape, dtype, is_fortran, raw bytes)``."""

    _pickled_as = 'numpy.ndarray'

    def _build(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != 5 or state[0] != 1:
            _refuse(f'the array state {_short(state)}: numpy writes (1, '
                    'shape, dtype, is_fortran, data)')
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, Dtype):
            _refuse(f'an array of {_short(dtype)}: only numeric dtypes')
        dtype = dtype.value()
        if (not isinstance(shape, tuple) or len(shape) > 32 or not all(
                type(n) is int and n >= 0 for n in shape)):
            _refuse(f'the array shape {_short(shape)}')
        if type(fortran) is not bool or type(raw) is not bytes:
            _refuse('an array whose data are not raw bytes')
        size = math.prod(shape) * dtype.itemsize
        if size != len(raw) or size > MAX_ARRAY_BYTES:
            _refuse(f'an array of shape {shape} and dtype {dtype} with '
                    f'{len(raw)} bytes of data: it needs exactly {size}, at '
                    f'most {MAX_ARRAY_BYTES}')
        self.array = _from_bytes(raw, dtype).reshape(
            shape, order='F' if fortran else 'C')

    def value(self) -> np.ndarray:
        if not self._built:
            _refuse('a numpy array without its state')
        return self.array


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> Array:
    if subtype is not Array or shape != (0, ) or typecode != b'b':
        _refuse(f'numpy _reconstruct({_short((subtype, shape, typecode))}):'
                ' numpy writes _reconstruct(ndarray, (0,), b"b")')
    return Array._blank()


def _scalar(dtype: Any, raw: Any = None) -> Any:
    if not isinstance(dtype, Dtype) or type(raw) is not bytes:
        _refuse(f'numpy scalar({_short((dtype, raw))}): only numeric '
                'scalars from raw bytes')
    dtype = dtype.value()
    if len(raw) != dtype.itemsize:
        _refuse(f'a {dtype} scalar of {len(raw)} bytes')
    return _from_bytes(raw, dtype)[0].item()


def _from_bytes(raw: bytes, dtype: np.dtype) -> np.ndarray:
    """The values of ``raw`` as a 1-D array of ``dtype``; booleans through
    ``!= 0`` (a byte other than 0 or 1 is no valid bool)."""
    if dtype.kind == 'b':
        return np.frombuffer(raw, dtype=np.uint8) != 0
    return np.frombuffer(raw, dtype=dtype)


class StatisticName:
    """What ``getattr(HistoryBuffer, name)`` gives here: the name of one of
    the default statistics, nothing callable."""

    __slots__ = ('name', )

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f'HistoryBuffer.{self.name}'


def _getattr(obj: Any, name: Any, *default: Any) -> StatisticName:
    if default or obj is not HistoryBuffer or name not in DEFAULT_STATISTICS:
        _refuse(f'getattr({_short(obj)}, {_short(name)}): only '
                f'HistoryBuffer\'s statistics {DEFAULT_STATISTICS}')
    return StatisticName(name)


class HistoryBuffer(_StandIn):
    """mmengine's ``HistoryBuffer``: created empty (pickle's NEWOBJ), then
    given its ``__dict__`` (BUILD)."""

    _pickled_as = 'mmengine.logging.history_buffer.HistoryBuffer'

    def __new__(cls, *args, **kwargs):
        if args or kwargs:
            _refuse(f'HistoryBuffer({_short(args)}): pickle creates it empty')
        return cls._blank()

    def _build(self, state: Any) -> None:
        if not isinstance(state, dict) or not set(state) <= set(
                _HISTORY_BUFFER_FIELDS) | {'statistics_methods'} or not set(
                    _HISTORY_BUFFER_FIELDS) <= set(state):
            keys = sorted(state) if isinstance(state, dict) else state
            _refuse(f'the HistoryBuffer state {_short(keys)}: it has '
                    f'{list(_HISTORY_BUFFER_FIELDS)} and statistics_methods')
        max_length = state['max_length']
        if type(max_length) is not int or max_length < 1:
            _refuse(f'HistoryBuffer max_length={_short(max_length)}')
        histories = []
        for key, kinds in (('_log_history', 'iuf'), ('_count_history', 'iu')):
            array = state[key]
            if not isinstance(array, Array):
                _refuse(f'HistoryBuffer {key} of {_short(array)}')
            array = array.value()
            if array.ndim != 1 or array.dtype.kind not in kinds:
                _refuse(f'HistoryBuffer {key} of shape {array.shape} and '
                        f'dtype {array.dtype}')
            histories.append(array)
        if len(histories[0]) != len(histories[1]):
            _refuse('HistoryBuffer histories of different lengths')
        methods = state.get('statistics_methods', {})
        if not isinstance(methods, dict) or not all(
                isinstance(v, StatisticName) and v.name == k
                for k, v in methods.items()):
            _refuse('a HistoryBuffer statistics table other than '
                    f'{DEFAULT_STATISTICS}, each its own method')
        self.fields = dict(
            log_history=histories[0],
            count_history=histories[1],
            max_length=max_length)

    def value(self) -> dict:
        if not self._built:
            _refuse('a HistoryBuffer without its state')
        return {
            TYPE_KEY: HISTORY_BUFFER,
            'log_history': array_to_tensor(self.fields['log_history']),
            'count_history': array_to_tensor(self.fields['count_history']),
            'max_length': self.fields['max_length'],
        }


def _stand_ins() -> List[Tuple[Any, str]]:
    entries = [(Array, 'numpy.ndarray'), (Dtype, 'numpy.dtype'),
               (HistoryBuffer, HistoryBuffer._pickled_as),
               (_getattr, 'builtins.getattr')]
    # numpy 1.x writes numpy.core, numpy 2.x numpy._core.
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        entries += [(_reconstruct, f'{module}._reconstruct'),
                    (_scalar, f'{module}.scalar')]
    return entries


# (stand-in, the name pickles give the real object)
STAND_INS: Tuple[Tuple[Any, str], ...] = tuple(_stand_ins())
LEGACY_NAMES = tuple(name for _, name in STAND_INS)


@contextlib.contextmanager
def stand_ins() -> Iterator[None]:
    """Let ``torch.load(weights_only=True)`` read the names of
    :data:`LEGACY_NAMES`, as their stand-ins, inside the block only."""
    with torch.serialization.safe_globals(list(STAND_INS)):
        yield


def resolve(obj: Any) -> Any:
    """``obj``, loaded inside :func:`stand_ins`, with every stand-in
    replaced by plain data (:mod:`.plain`): arrays as tagged tensors,
    scalars as numbers, buffers as tagged dicts, dtypes by name.

    Raises:
        RefusedError: A stand-in never got its state, a container holds
            itself, or the nesting is deeper than a checkpoint's.
    """
    active: Dict[int, None] = {}

    def walk(value: Any, depth: int) -> Any:
        if depth > 200:
            _refuse('a checkpoint nested more than 200 levels deep')
        if isinstance(value, Array):
            return {TYPE_KEY: NDARRAY, 'data': array_to_tensor(value.value())}
        if isinstance(value, HistoryBuffer):
            return value.value()
        if isinstance(value, Dtype):
            return str(value.value())
        if isinstance(value, StatisticName):
            _refuse('getattr(HistoryBuffer, ...) outside a HistoryBuffer')
        if not isinstance(value, (dict, list, tuple, set)):
            return value
        if id(value) in active:
            _refuse('a container that holds itself')
        active[id(value)] = None
        try:
            if isinstance(value, dict):
                items = [(walk(k, depth + 1), walk(v, depth + 1))
                         for k, v in value.items()]
                if all(nk is k and nv is v
                       for (nk, nv), (k, v) in zip(items, value.items())):
                    return value
                new = type(value)(items)
                if hasattr(value, '_metadata'):
                    new._metadata = value._metadata
                return new
            values = [walk(v, depth + 1) for v in value]
            if all(n is v for n, v in zip(values, value)):
                return value
            return type(value)(values)
        finally:
            del active[id(value)]

    return walk(obj, 0)


# Kept for the numeric kinds the array stand-in accepts.
assert set(np.dtype(t).kind for t in _NUMERIC_TYPESTRS) <= set(NUMERIC_KINDS)
