"""Reading checkpoint files without running code from them.

:func:`read_checkpoint` is the one way this package reads a checkpoint or
weights file, whatever wrote it: a local path, an http(s) URL, a Hugging Face
hub name (``timm/convformer_s18.sail_in1k``, ``hf-hub:sail/dl/...``) or
another location mmengine reads (``open-mmlab://``, ``s3://``, ...);
``.safetensors`` through safetensors, everything else through
``torch.load(weights_only=True)`` with the validating stand-ins of
:mod:`.legacy` for the mmengine and numpy objects of older checkpoints, in
scope for that one load. What it returns is
plain data (:mod:`.plain`). Whatever goes wrong with the file itself, torn,
not a checkpoint, or needing code to unpickle, becomes a
:class:`~poolformer_mm.errors.CheckpointError` that names the file
(:func:`reading`).
"""
import contextlib
import os
import os.path as osp
import pickle
import re
import zipfile
from typing import Callable, Iterator, Optional, Union
from urllib.parse import urlparse

import torch
from mmengine.logging import print_log

from ..errors import CheckpointError
from . import legacy
from .plain import from_plain

# What torch.load raises for a file that is not a checkpoint: torn zip
# archives, and the weights-only unpickler's errors on arbitrary bytes (a
# text file gives KeyError or IndexError from its stack machine).
NOT_A_CHECKPOINT = (RuntimeError, EOFError, zipfile.BadZipFile, OSError,
                    ValueError, KeyError, IndexError, TypeError,
                    AttributeError)


def refused_global(exc: pickle.UnpicklingError) -> Optional[str]:
    """What a weights-only ``torch.load`` refused to unpickle: ``'the global
    module.name'``, ``'getattr(...)'``, or what a stand-in of
    :mod:`.legacy` refused; None when ``exc`` is about a file that is not a
    pickle at all."""
    message = str(exc)
    match = re.search(r'poolformer_mm refused (.*)', message)
    if match is not None:
        return match.group(1).strip()
    if 'Weights only load failed' not in message:
        return None
    match = re.search(r'GLOBAL (\S+)|(getattr\(.*?\)) is not allowed',
                      message)
    if match is None:
        return None
    return (f'the global {match.group(1)}'
            if match.group(1) else match.group(2))


@contextlib.contextmanager
def reading(filename: str) -> Iterator[None]:
    """Read ``filename`` inside: every error of the file itself becomes a
    :class:`CheckpointError` naming it. A missing file stays a
    ``FileNotFoundError``."""
    try:
        yield
    except (CheckpointError, FileNotFoundError):
        raise
    except pickle.UnpicklingError as exc:
        what = refused_global(exc)
        if what is None:
            raise CheckpointError(
                f'{filename!r} is not a readable checkpoint: {exc}') from None
        raise CheckpointError(
            f'Refusing to load {filename!r}: it is not plain data (tensors, '
            f'numbers, strings, lists, dicts): unpickling it needs {what}. '
            'Such a file could run code or read memory while it loads '
            '(docs/security.md). If you trust it, convert it in a trusted '
            'environment, e.g. keep only its state_dict.') from None
    except MemoryError:
        raise CheckpointError(
            f'Refusing to load {filename!r}: it asks for more memory than '
            'there is') from None
    except NOT_A_CHECKPOINT as exc:
        torn = isinstance(exc, (zipfile.BadZipFile, EOFError)) or (
            isinstance(exc, RuntimeError) and any(
                s in str(exc) for s in ('zip archive', 'central directory',
                                        'PytorchStreamReader')))
        why = ' (truncated or not a PyTorch file)' if torn else ''
        raise CheckpointError(
            f'{filename!r} is not a readable checkpoint{why}: '
            f'{type(exc).__name__}: {exc}') from None


def _is_url(filename: str) -> bool:
    return urlparse(filename).scheme in ('http', 'https')


def download(url: str) -> str:
    """Download ``url`` into torch's hub cache once; the local path.

    Raises:
        CheckpointError: The download failed; the message says what to do.
    """
    cache_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(cache_dir, exist_ok=True)
    path = osp.join(cache_dir, osp.basename(urlparse(url).path))
    if not osp.exists(path):
        print_log(f'Downloading {url} to {path}', logger='current')
        try:
            torch.hub.download_url_to_file(url, path, progress=False)
        except Exception as exc:  # network errors come in many classes
            raise CheckpointError(
                f'Could not download weights from {url}: {exc}. Download '
                'the file by hand and give its local path instead.') from exc
    return path


# timm's names of its hub weights: 'timm/<model>.<tag>'; and timm's prefix
# for any hub repository: 'hf-hub:<owner>/<repo>[/<file in the repo>]'.
_TIMM_HUB = re.compile(r'^timm/[A-Za-z0-9_.-]+$')
_HF_HUB = re.compile(r'^hf-hub:([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)(?:/(.+))?$')
# The weight files of a timm hub repository, in the order timm prefers them.
_HUB_WEIGHTS = ('model.safetensors', 'pytorch_model.bin')


def hub_location(name: str):
    """``(repo id, file or None)`` of a hub name (``timm/<model>.<tag>``,
    ``hf-hub:<owner>/<repo>[/<file>]``), None for anything else."""
    if _TIMM_HUB.match(name):
        return name, None
    match = _HF_HUB.match(name)
    return (match.group(1), match.group(2)) if match else None


def hub_download(name: str) -> str:
    """The local path of hub weights, through huggingface_hub's download and
    cache (``HF_HOME``, ``HF_HUB_OFFLINE`` honoured).

    Without a file name the repository's ``model.safetensors`` is taken, or
    its ``pytorch_model.bin`` (timm's repositories hold one of them).

    Raises:
        CheckpointError: Unknown repository or file, or (offline) not in the
            cache; the message says how to download it.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError,
                                        LocalEntryNotFoundError,
                                        RepositoryNotFoundError)
    repo, filename = hub_location(name)
    last = None
    for candidate in ([filename] if filename else _HUB_WEIGHTS):
        try:
            return hf_hub_download(repo, candidate)
        except LocalEntryNotFoundError as exc:
            last = exc
            offline = os.environ.get('HF_HUB_OFFLINE', '') not in ('', '0')
            how = ('HF_HUB_OFFLINE is set and the cache ('
                   f'{os.environ.get("HF_HOME", "~/.cache/huggingface")}) has '
                   'no copy' if offline else 'the hub could not be reached')
        except EntryNotFoundError as exc:
            last, how = exc, f'the repository has no {candidate}'
        except RepositoryNotFoundError:
            raise CheckpointError(
                f'{name!r}: no hub repository {repo!r} (timm names its '
                "weights 'timm/<model>.<tag>', e.g. "
                "'timm/convformer_s18.sail_in1k'; other repositories as "
                "'hf-hub:<owner>/<repo>/<file>')") from None
    files = filename or ' or '.join(_HUB_WEIGHTS)
    raise CheckpointError(
        f'Cannot get {name!r} ({files} of {repo}): {how}. Download it where '
        f'the hub can be reached: `huggingface-cli download {repo} '
        f'{filename or _HUB_WEIGHTS[0]}` (then it loads offline from the '
        'cache), or give the local path of the file.') from last


def _torch_load(path: str, map_location) -> object:
    with legacy.stand_ins():
        loaded = torch.load(
            path, map_location=map_location, weights_only=True)
    return legacy.resolve(loaded)


def _mmengine_load(filename: str, map_location) -> object:
    """Locations only mmengine's loaders read (``open-mmlab://``, ``s3://``,
    ...); they call the weights-only ``torch.load`` themselves."""
    from mmengine.runner.checkpoint import CheckpointLoader
    with legacy.stand_ins():
        loaded = CheckpointLoader.load_checkpoint(filename, map_location)
    return legacy.resolve(loaded)


def read_checkpoint(filename: Union[str, os.PathLike],
                    map_location: Union[str, Callable] = 'cpu') -> dict:
    """Read a checkpoint file as plain data, without running code from it.

    Args:
        filename (str | PathLike): A local path, an http(s) URL (downloaded
            once into torch's hub cache), a Hugging Face hub name
            (``timm/<model>.<tag>`` as timm names its weights, or
            ``hf-hub:<owner>/<repo>[/<file>]``; downloaded through
            huggingface_hub's cache) or any location mmengine's
            ``CheckpointLoader`` reads.
        map_location (str | callable): Where tensors go. Defaults to 'cpu'.

    Returns:
        dict: What the file holds (a state dict, or a training checkpoint
        with ``meta``, ``state_dict``, ...), objects written as by
        :func:`~poolformer_mm.checkpoint.plain.to_plain`.

    Raises:
        FileNotFoundError: No such local file.
        CheckpointError: The file is torn, not a checkpoint, or not plain
            data (see :mod:`.legacy` for what older checkpoints may hold).
    """
    filename = os.fspath(filename)
    with reading(filename):
        if not osp.exists(filename) and hub_location(filename):
            path = hub_download(filename)
        elif '://' in filename and not _is_url(filename):
            return _mmengine_load(filename, map_location)
        else:
            path = download(filename) if _is_url(filename) else filename
        if not osp.isfile(path):
            raise FileNotFoundError(
                f'checkpoint not found: {filename!r}; give an existing local '
                'file or a URL')
        if path.endswith('.safetensors'):
            from safetensors import SafetensorError
            from safetensors.torch import load_file
            device = map_location if isinstance(map_location, str) else 'cpu'
            try:
                return load_file(path, device=device)
            except (SafetensorError, OSError, ValueError) as exc:
                raise CheckpointError(
                    f'{filename!r} is not a readable safetensors file: {exc}'
                ) from None
        return _torch_load(path, map_location)


def load_training_checkpoint(
        filename: Union[str, os.PathLike],
        map_location: Union[str, Callable] = 'cpu') -> dict:
    """Read a training checkpoint the way mmengine's runner uses it: as
    :func:`read_checkpoint`, with the message hub's buffers and the numpy
    arrays built again (:func:`~poolformer_mm.checkpoint.plain.from_plain`).

    Args:
        filename (str | PathLike): As for :func:`read_checkpoint`.
        map_location (str | callable): Where tensors go. Defaults to 'cpu'.

    Raises:
        FileNotFoundError: No such local file.
        CheckpointError: As :func:`read_checkpoint`, or encoded objects
            whose fields do not fit their type.
    """
    checkpoint = read_checkpoint(filename, map_location)
    with reading(os.fspath(filename)):
        return from_plain(checkpoint)
