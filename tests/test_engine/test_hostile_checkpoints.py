"""Hostile checkpoint files are refused everywhere, with a clear error, no
crash and no hang, and they leave nothing behind in the process.

Each file is written here with raw pickle opcodes (:class:`Op` trees and
:func:`pickle_bytes`), in torch's zip format and its legacy format. Each
kind attacks what an allowlist that trusted numpy's and mmengine's
constructors for the whole process let through (docs/security.md): object
arrays made from the file's bytes (forged object pointers), an
``__array_interface__`` planted through BUILD (numpy reading the process's
memory), ``HistoryBuffer``'s class-level statistics table rewritten through
BUILD, structured dtypes rewritten through BUILD, stride-0 and huge views,
and the classic payloads. One fresh interpreter, limited in time and
memory, loads every file with plain ``torch.load`` after ``import
poolformer_mm``, mmengine's loader, MMDetection's ``init_detector``, this
package's loaders and the inference that ``tools/infer.py`` runs
(:func:`poolformer_mm.apis.inference.infer`, its errors as the tool's one
``error:`` line), then checks that a new
``HistoryBuffer`` still computes its mean and that ``getattr(HistoryBuffer,
'__init__')`` is still refused.
"""
import io
import json
import os.path as osp
import pickle
import resource
import struct
import subprocess
import sys
import zipfile
from typing import Any, NamedTuple, Tuple

import numpy as np
import pytest
import torch

from helpers.commands import ROOT

FIXTURE = osp.join(ROOT, 'tests', 'test_engine', 'resume_fixture')
HB = ('mmengine.logging.history_buffer', 'HistoryBuffer')
GETATTR = ('builtins', 'getattr')
RECONSTRUCT = ('numpy.core.multiarray', '_reconstruct')
NDARRAY = ('numpy', 'ndarray')
DTYPE = ('numpy', 'dtype')


class Op(NamedTuple):
    """A pickle instruction tree: ``kind`` one of 'global' (args: module,
    name), 'call' (REDUCE: callable, args tuple), 'build' (BUILD: object,
    state), 'newobj' (NEWOBJ: class, args tuple)."""
    kind: str
    args: Tuple


def G(module: str, name: str) -> Op:
    return Op('global', (module, name))


def call(func: Op, *args: Any) -> Op:
    return Op('call', (func, args))


def build(obj: Op, state: Any) -> Op:
    return Op('build', (obj, state))


def newobj(cls: Op, *args: Any) -> Op:
    return Op('newobj', (cls, args))


def _emit(value: Any, out: bytearray) -> None:
    if isinstance(value, Op):
        if value.kind == 'global':
            module, name = value.args
            out += b'c' + module.encode() + b'\n' + name.encode() + b'\n'
        elif value.kind in ('call', 'newobj'):
            func, args = value.args
            _emit(func, out)
            _emit(tuple(args), out)
            out += b'R' if value.kind == 'call' else b'\x81'
        else:
            obj, state = value.args
            _emit(obj, out)
            _emit(state, out)
            out += b'b'
    elif value is None:
        out += b'N'
    elif value is True or value is False:
        out += b'\x88' if value else b'\x89'
    elif isinstance(value, int):
        if -2**31 <= value < 2**31:
            out += b'J' + struct.pack('<i', value)
        else:
            data = value.to_bytes((value.bit_length() + 8) // 8, 'little',
                                  signed=True)
            out += b'\x8a' + bytes([len(data)]) + data
    elif isinstance(value, float):
        out += b'G' + struct.pack('>d', value)
    elif isinstance(value, str):
        data = value.encode('utf-8', 'surrogatepass')
        out += b'X' + struct.pack('<I', len(data)) + data
    elif isinstance(value, bytes):
        # Protocol 2 writes bytes as _codecs.encode(latin-1 text).
        _emit(call(G('_codecs', 'encode'), value.decode('latin1'), 'latin1'),
              out)
    elif isinstance(value, tuple):
        out += b'('
        for item in value:
            _emit(item, out)
        out += b't'
    elif isinstance(value, list):
        out += b']('
        for item in value:
            _emit(item, out)
        out += b'e'
    elif isinstance(value, dict):
        out += b'}('
        for key, item in value.items():
            _emit(key, out)
            _emit(item, out)
        out += b'u'
    else:
        raise TypeError(f'cannot write {value!r}')


def pickle_bytes(value: Any) -> bytes:
    """``value`` (plain values and :class:`Op` trees) as a protocol-2
    pickle."""
    out = bytearray(b'\x80\x02')
    _emit(value, out)
    return bytes(out + b'.')


def write_zip(path, payload: bytes) -> None:
    """torch's zip format: archive/data.pkl, no tensors."""
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as archive:
        archive.writestr('archive/data.pkl', payload)
        archive.writestr('archive/byteorder', 'little')
        archive.writestr('archive/version', '3\n')


def write_legacy(path, payload: bytes) -> None:
    """torch's legacy format: magic number, protocol, system info, the
    object, the (empty) list of storages."""
    sys_info = dict(protocol_version=1001, little_endian=True,
                    type_sizes=dict(short=2, int=4, long=4))
    with open(path, 'wb') as f:
        for head in (0x1950a86a20f9469cfc6c, 1001, sys_info):
            f.write(pickle.dumps(head, protocol=2))
        f.write(payload)
        f.write(pickle.dumps([], protocol=2))


def dtype(typestr: str, state=None) -> Op:
    order = '|' if typestr in ('?', 'b1', 'i1', 'u1') else '<'
    state = state or (3, order, None, None, None, -1, -1, 0)
    return build(call(G(*DTYPE), typestr, False, True), state)


def array(values: np.ndarray, shape=None, raw=None) -> Op:
    """numpy's pickle of ``values``; ``shape`` / ``raw`` replace what it
    says."""
    typestr = values.dtype.str.lstrip('<>|=')
    state = (1, tuple(values.shape if shape is None else shape),
             dtype(typestr), False, values.tobytes() if raw is None else raw)
    return build(call(G(*RECONSTRUCT), G(*NDARRAY), (0, ), b'b'), state)


def statistic(name: str) -> Op:
    return call(G(*GETATTR), G(*HB), name)


def history_buffer(**changes) -> Op:
    """A HistoryBuffer as mmengine pickles it, with ``changes`` to its
    state."""
    state = dict(
        max_length=10,
        _log_history=array(np.array([1., 2.])),
        _count_history=array(np.array([1, 1])),
        statistics_methods={n: statistic(n)
                            for n in ('min', 'max', 'current', 'mean')})
    state.update(changes)
    return build(newobj(G(*HB)), state)


INTERFACE = dict(data=(4096, False), shape=(8192, ), typestr='<f8', version=3)
HOSTILE = {
    'object_array_from_bytes':
    call(G(*NDARRAY), (2, ), 'O', b'\x00' * 16),
    'object_array_reconstructed':
    build(
        call(G(*RECONSTRUCT), G(*NDARRAY), (0, ), b'b'),
        (1, (2, ), dtype('O', (3, '|', None, None, None, -1, -1, 63)), False,
         b'\x00' * 16)),
    'array_interface_planted':
    history_buffer(__array_interface__=INTERFACE),
    'array_interface_in_history':
    history_buffer(_log_history=build(newobj(G(*HB)),
                                      dict(__array_interface__=INTERFACE))),
    'statistics_repointed':
    history_buffer(statistics_methods=dict(mean=statistic('current'))),
    'statistics_widened':
    history_buffer(statistics_methods=dict(
        __init__=statistic('__init__'))),
    'class_state_via_rebuild_from_type':
    call(G('torch._tensor', '_rebuild_from_type_v2'), G(*GETATTR),
         G('torch', 'Tensor'), (G(*HB), 'mean'), dict(planted=1)),
    'structured_dtype_state':
    dtype('f8', (3, '|', None, ('a', ), dict(a=(dtype('f8'), 0)), 8, 1, 16)),
    'void_dtype':
    dtype('V8'),
    'numpy_dtypes_class':
    call(G('numpy.dtypes', 'VoidDType'), 8),
    'stride_zero_view':
    call(G(*NDARRAY), (10**15, ), dtype('f8'), b'\x00' * 8, 0, (0, )),
    'huge_array':
    array(np.zeros(1), shape=(10**15, )),
    'huge_allocation':
    call(G(*NDARRAY), (10**12, ), 'f8'),
    'array_built_twice':
    build(array(np.zeros(2)), (1, (2, ), dtype('f8'), False, b'\x00' * 16)),
    'os_system':
    call(G('os', 'system'), 'echo pwned'),
    'eval':
    call(G('builtins', 'eval'), 'print("pwned")'),
    'getattr_other_method':
    statistic('update'),
    'getattr_init':
    statistic('__init__'),
    'getattr_of_tensor':
    call(G(*GETATTR), G('torch', 'Tensor'), '__init__'),
    'chained_getattr':
    call(G(*GETATTR), statistic('mean'), '__globals__'),
}

CHECK = r'''
import json, os, pickle, sys, traceback
import torch
import poolformer_mm
from mmengine.logging import HistoryBuffer
from mmengine.runner import load_checkpoint
from mmdet.apis import init_detector
from poolformer_mm.checkpoint import load_training_checkpoint, read_checkpoint
from poolformer_mm.apis.inference import infer
from poolformer_mm.errors import CheckpointError, InputError

config, image, out_dir = sys.argv[1:4]
files = json.loads(sys.argv[4])
model = init_detector(config, device='cpu')
tensor_attrs = set(dir(torch.Tensor))


def tool(path):
    # What tools/infer.py's main does: the errors it reports as its one
    # `error:` line become that line; anything else escapes as it would.
    try:
        infer(config, path, image, out_dir=out_dir)
    except (InputError, CheckpointError) as exc:
        message = 'error: ' + str(exc).replace('\n', ' ')
        raise RuntimeError(message) from None


loaders = dict(
    torch_load=lambda p: torch.load(p),
    mmengine_load_checkpoint=lambda p: load_checkpoint(model, p),
    init_detector=lambda p: init_detector(config, p, device='cpu'),
    read_checkpoint=read_checkpoint,
    load_training_checkpoint=load_training_checkpoint,
    infer_tool=tool)
# The two loaders that build the model for every file take the zip files
# (torch's format since 1.6); both formats go through all the others, and
# mmengine's load_checkpoint is init_detector's loader.
BUILD_PER_FILE = ('init_detector', 'infer_tool')
report = {}
for path in files:
    for name, load in loaders.items():
        if name in BUILD_PER_FILE and path.endswith('.legacy.pth'):
            continue
        try:
            load(path)
            result = 'loaded'
        except Exception as exc:
            result = f'{type(exc).__name__}: {exc}'
        report[f'{os.path.basename(path)} {name}'] = result
report['history_buffer_mean'] = HistoryBuffer([1., 2.], [1, 1]).mean()
report['tensor_attributes_added'] = sorted(set(dir(torch.Tensor)) -
                                           tensor_attrs)
print(json.dumps(report))
'''


def limit_memory():
    # torch maps a lot of address space for its CUDA libraries; 16 GB of it
    # still stops a real allocation of 10^12 doubles.
    resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))


@pytest.fixture(scope='module')
def hostile_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp('hostile')
    paths = []
    for name, tree in HOSTILE.items():
        payload = pickle_bytes(dict(meta=dict(x=tree), state_dict={}))
        for fmt, write in (('zip', write_zip), ('legacy', write_legacy)):
            path = folder / f'{name}.{fmt}.pth'
            write(path, payload)
            paths.append(str(path))
    return paths


def test_the_writer_writes_what_torch_reads(tmp_path):
    """A control: plain data through the opcode writer loads in both
    formats, and a HistoryBuffer as mmengine pickles it loads through the
    package's stand-ins only."""
    from poolformer_mm.checkpoint import load_training_checkpoint
    value = dict(a=[1, 2.5, 'x', b'\x00\xff', None, True], b=(3, -2**40))
    buffer = dict(meta=dict(hub=history_buffer()))
    for write in (write_zip, write_legacy):
        write(tmp_path / 'plain.pth', pickle_bytes(value))
        assert torch.load(tmp_path / 'plain.pth') == value
        write(tmp_path / 'buffer.pth', pickle_bytes(buffer))
        loaded = load_training_checkpoint(tmp_path / 'buffer.pth')
        assert loaded['meta']['hub'].mean() == 1.5
        with pytest.raises(pickle.UnpicklingError):
            torch.load(tmp_path / 'buffer.pth')
    # The legacy writer's numbers are torch's own.
    buf = io.BytesIO()
    torch.save(value, buf, _use_new_zipfile_serialization=False)
    assert buf.getvalue().startswith(pickle.dumps(0x1950a86a20f9469cfc6c, 2))


def test_hostile_files_are_refused_everywhere(hostile_files, demo_data,
                                              tmp_path):
    config = osp.join(FIXTURE, 'retinanet_tiny.py')
    image = sorted((demo_data / 'coco' / 'val').glob('*.png'))[0]
    result = subprocess.run(
        [sys.executable, '-c', CHECK, config,
         str(image), str(tmp_path / 'out'), json.dumps(hostile_files)],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
        preexec_fn=limit_memory)
    # A crash (SIGSEGV), a hang (the timeout) or a MemoryError outside the
    # loaders fails here.
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report.pop('history_buffer_mean') == 1.5
    assert report.pop('tensor_attributes_added') == []
    assert 'pwned' not in result.stdout + result.stderr
    assert len(report) == len(hostile_files) * 6 - len(
        [p for p in hostile_files if p.endswith('.legacy.pth')]) * 2
    ours = ('read_checkpoint', 'load_training_checkpoint')
    for key, outcome in report.items():
        name, loader = key.split(' ')
        if loader in ('torch_load', 'mmengine_load_checkpoint',
                      'init_detector'):
            # torch's weights-only unpickler, with nothing widened.
            assert outcome.startswith('UnpicklingError: Weights only load '
                                      'failed'), (key, outcome)
        elif loader in ours:
            assert outcome.startswith('CheckpointError: ') and (
                name in outcome), (key, outcome)
        else:
            assert outcome.startswith('RuntimeError: error: ') and (
                name in outcome), (key, outcome)
    # Our loaders say why: refused constructs are named, not reported as
    # torn files.
    refused = [o for k, o in report.items() if k.endswith('read_checkpoint')]
    assert all('Refusing to load' in o or 'not a readable checkpoint' in o
               for o in refused)
    assert sum('Refusing to load' in o for o in refused) >= len(refused) - 2


def test_getattr_init_stays_refused_after_the_hostile_files(hostile_files):
    """In this process too: after every hostile file went through the
    package's loader, the same getattr file is refused and a new buffer's
    statistics are mmengine's."""
    from mmengine.logging import HistoryBuffer

    from poolformer_mm.checkpoint import read_checkpoint
    from poolformer_mm.errors import CheckpointError
    before = dict(HistoryBuffer._statistics_methods)
    for path in hostile_files:
        with pytest.raises(CheckpointError):
            read_checkpoint(path)
    assert HistoryBuffer._statistics_methods == before
    assert HistoryBuffer([1., 2.], [1, 1]).mean() == 1.5
    init_file = [p for p in hostile_files if 'getattr_init.zip' in p][0]
    with pytest.raises(CheckpointError, match=r"getattr\(mmengine.logging."
                       r"history_buffer.HistoryBuffer, '__init__'\)"):
        read_checkpoint(init_file)
    assert len(torch.serialization.get_safe_globals()) == len(
        set(map(str, torch.serialization.get_safe_globals())))


@pytest.mark.integration
def test_import_widens_no_allowlist():
    """In a fresh process: what torch's own modules register once the
    frameworks import them, and nothing more after ``import
    poolformer_mm``."""
    script = ('import torch, mmengine.runner, mmdet.models, mmseg.models\n'
              'before = list(map(str, torch.serialization.'
              'get_safe_globals()))\n'
              'import poolformer_mm\n'
              'after = list(map(str, torch.serialization.'
              'get_safe_globals()))\n'
              'assert before == after, sorted(set(after) - set(before))\n'
              'assert not any("numpy" in g or "mmengine" in g or "getattr" in'
              ' g for g in after), after\n')
    result = subprocess.run([sys.executable, '-c', script],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_mmengine_has_no_unsafe_fallback():
    """The fork's mmengine falls back to ``weights_only=False``; importing
    the package replaces that loader (upstream mmengine has none)."""
    import poolformer_mm  # noqa: F401
    from mmengine.runner import checkpoint

    from poolformer_mm.engine import strict_loading
    loader = getattr(checkpoint, '_safe_torch_load', None)
    assert loader in (None, strict_loading._weights_only_load)
