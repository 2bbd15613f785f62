"""Fitting weights to a model: the one policy for whole-model checkpoints
and backbone weights, and the initialisation of a backbone from pretrained
(ImageNet) weights.

:func:`read_weights` reads any checkpoint this package knows (a training
checkpoint, a whole-model file, backbone weights in any public naming, a
safetensors file) into :class:`Weights`, the tensors under the model's
names. :func:`fit_weights` fits them to a detector or segmentor under one
rule (:func:`check_fit`):

- every tensor of the model is in the checkpoint, with its shape; for
  backbone weights, where the caller allows them, every backbone tensor but
  the output norms (which classification weights never have), and a warning
  says that the neck and heads are random;
- the checkpoint has no backbone block that the model lacks (a deeper
  arch); other tensors the model does not use are listed in a warning;
- anything else is a :class:`~poolformer_mm.errors.CheckpointError` that
  counts and names the missing, unexpected and mismatched tensors.

The one exception, ``partial=True``, is for a training's ``load_from``:
fine-tuning from a model with other heads (e.g. another number of classes)
loads what fits and warns about the rest, as mmengine does.
:class:`~poolformer_mm.engine.SafeRunner`, ``tools/test.py``,
``tools/infer.py``, the ONNX export and the feature pictures all load through
here.

:func:`load_pretrained` (``init_cfg=dict(type='Pretrained', ...)``) puts
classification weights into a backbone: what fits by name and shape loads,
a shape mismatch or nothing matching is an error, and the log lists what
was not loaded and what was ignored.
"""
import logging
import re
from collections import OrderedDict
from typing import Dict, List, NamedTuple, Optional

import torch
from mmengine.logging import MMLogger, print_log
from torch import Tensor

from ..errors import CheckpointError
from .files import read_checkpoint
from .naming import (convert_backbone_state_dict, detect_format,
                     unwrap_state_dict)
from .plain import from_plain

OUTPUT_NORM = re.compile(r'backbone\.norm\d+\.')
BACKBONE_BLOCKS = ('backbone.stem.', 'backbone.stages.')


class Weights(NamedTuple):
    """A checkpoint read by :func:`read_weights`."""
    filename: str
    tensors: Dict[str, Tensor]  # under the model's names
    backbone_only: bool
    meta: dict
    naming: str  # of the backbone weights (checkpoint.naming), or 'model'


def weights_from_checkpoint(checkpoint: dict, filename: str) -> Weights:
    """:class:`Weights` of a checkpoint already read as plain data.

    Backbone weights of any known naming are converted (also under
    ``backbone.`` in whole-model files); a checkpoint whose backbone is not
    this package's keeps its names (``naming='model'``).

    Args:
        checkpoint (dict): From
            :func:`~poolformer_mm.checkpoint.read_checkpoint`.
        filename (str): For the messages.

    Raises:
        CheckpointError: No state dict in it.
    """
    try:
        state_dict = unwrap_state_dict(checkpoint)
    except CheckpointError as exc:
        raise CheckpointError(f'checkpoint {filename!r}: {exc}') from None
    meta = checkpoint.get('meta') if isinstance(checkpoint.get('meta'),
                                                dict) else {}
    meta = from_plain(meta)  # e.g. a palette saved as a numpy array
    try:
        detect_format(state_dict)
    except CheckpointError:
        # Not PoolFormer / MetaFormer weights: a model with another
        # backbone, whose names are the model's.
        return Weights(filename, OrderedDict(state_dict), False, dict(meta),
                       'model')
    backbone, others, naming = convert_backbone_state_dict(state_dict)
    # mmpretrain's classifiers keep `head.` beside `backbone.`; anything
    # else beside `backbone.` is a neck or a head of a detector/segmentor.
    prefixed = any(k.startswith('backbone.') for k in state_dict)
    backbone_only = not prefixed or all(
        k.startswith(('backbone.', 'head.')) for k in state_dict)
    tensors = OrderedDict(('backbone.' + k, v) for k, v in backbone.items())
    if not backbone_only:
        tensors.update((k, state_dict[k]) for k in others)
    return Weights(filename, tensors, backbone_only, dict(meta), naming)


def read_weights(filename: str, map_location: str = 'cpu') -> Weights:
    """Read a checkpoint of any accepted kind into :class:`Weights`, before
    the model is built.

    Args:
        filename (str): The checkpoint (path or URL).
        map_location (str): Where tensors go. Defaults to 'cpu'.

    Raises:
        FileNotFoundError: No such file.
        CheckpointError: Not a readable checkpoint, not plain data, or no
            state dict in it.
    """
    return weights_from_checkpoint(
        read_checkpoint(filename, map_location), str(filename))


def _examples(items: List[str], count: int = 3) -> str:
    more = ', ...' if len(items) > count else ''
    return ', '.join(items[:count]) + more


def check_fit(model: torch.nn.Module,
              weights: Weights,
              partial: bool = False) -> List[str]:
    """Check :class:`Weights` against a model under the rule of the module
    docstring.

    Args:
        model (nn.Module): The detector or segmentor.
        weights (Weights): From :func:`read_weights`.
        partial (bool): Only warn about missing and mismatched tensors (a
            training's ``load_from``). Defaults to False.

    Returns:
        list[str]: Checkpoint tensors the model does not use.

    Raises:
        CheckpointError: With how many tensors are missing, unexpected and
            of other shapes, and examples of each.
    """
    own = model.state_dict()
    loaded = weights.tensors
    needed = [
        k for k in own if not weights.backbone_only or (
            k.startswith('backbone.') and not OUTPUT_NORM.match(k))
    ]
    missing = [k for k in needed if k not in loaded]
    mismatched = [
        f'{k}: {tuple(v.shape)} in the checkpoint vs {tuple(own[k].shape)} '
        'in the model' for k, v in loaded.items()
        if k in own and v.shape != own[k].shape
    ]
    unexpected = [k for k in loaded if k not in own]
    foreign_blocks = [k for k in unexpected if k.startswith(BACKBONE_BLOCKS)]
    if missing or mismatched or foreign_blocks:
        problems = []
        if missing:
            part = 'backbone' if weights.backbone_only else 'model'
            problems.append(
                f'{len(missing)} of the {len(needed)} {part} tensors are '
                f'missing (e.g. {_examples(missing)})')
        if mismatched:
            problems.append(f'{len(mismatched)} have other shapes (e.g. '
                            f'{_examples(mismatched, 1)})')
        if unexpected:
            problems.append(f'{len(unexpected)} are not in the model (e.g. '
                            f'{_examples(foreign_blocks or unexpected)})')
        message = (f'checkpoint {weights.filename!r} does not fit the '
                   "config's model: " + '; '.join(problems))
        if not partial:
            raise CheckpointError(
                message + '. Is it a checkpoint of another config?')
        print_log(
            message + '. Loading what fits; the rest keeps its '
            'initialisation.',
            logger='current',
            level=logging.WARNING)
    return unexpected


def fit_weights(model: torch.nn.Module,
                weights: Weights,
                allow_backbone_only: bool = False,
                partial: bool = False,
                uses_heads: bool = True) -> 'OrderedDict[str, Tensor]':
    """The state dict to load into ``model`` from ``weights``: the
    checkpoint's tensors where they fit, the model's own elsewhere (output
    norms, random neck and heads of backbone weights), exactly the model's
    keys.

    Args:
        model (nn.Module): The detector or segmentor, freshly built.
        weights (Weights): From :func:`read_weights`.
        allow_backbone_only (bool): Accept backbone weights alone, with a
            warning that the neck and heads are random. Defaults to False.
        partial (bool): See :func:`check_fit`. Defaults to False.
        uses_heads (bool): Whether the caller runs the neck and heads; when
            not (e.g. an export of the backbone alone) backbone weights are
            complete and get no warning. Defaults to True.

    Raises:
        CheckpointError: The weights do not fit (:func:`check_fit`), or are
            backbone weights where they are not allowed.
    """
    filename = weights.filename
    if weights.backbone_only and not (allow_backbone_only or partial):
        raise CheckpointError(
            f'{filename!r} holds backbone weights only ({weights.naming} '
            'naming): the neck and heads would be random. Give a checkpoint '
            'of the whole model (tools/train.py, or tools/convert_weights.py '
            '--whole-model), or initialise the backbone with '
            "init_cfg=dict(type='Pretrained', checkpoint=...).")
    unused = check_fit(model, weights, partial)
    if unused:
        print_log(
            f'{len(unused)} tensors of {filename} are not used by the '
            f'model: {_examples(unused, 6)}',
            logger='current',
            level=logging.WARNING)
    if weights.backbone_only and uses_heads:
        print_log(
            f'{filename} holds backbone weights only '
            f'({len(weights.tensors)} tensors, {weights.naming} naming): '
            'the neck and heads are randomly initialised, so the '
            'predictions are meaningless. Give a checkpoint of the whole '
            'model (tools/train.py, or tools/convert_weights.py '
            '--whole-model) for real predictions.',
            logger='current',
            level=logging.WARNING)
    own = model.state_dict()
    return OrderedDict(
        (k, weights.tensors[k] if k in weights.tensors
         and weights.tensors[k].shape == v.shape else v)
        for k, v in own.items())


def load_weights(model: torch.nn.Module,
                 weights: Weights,
                 allow_backbone_only: bool = False,
                 partial: bool = False,
                 uses_heads: bool = True) -> None:
    """:func:`fit_weights`, then load the result into ``model`` (all its
    keys, no more)."""
    model.load_state_dict(
        fit_weights(model, weights, allow_backbone_only, partial, uses_heads))


def load_pretrained(model: torch.nn.Module,
                    filename: str,
                    prefix: Optional[str] = None,
                    map_location: str = 'cpu',
                    logger: Optional[MMLogger] = None) -> Dict[str, object]:
    """Load PoolFormer / MetaFormer weights of any known naming into
    ``model``.

    Args:
        model (nn.Module): The backbone.
        filename (str): Local path or URL of the checkpoint.
        prefix (str, optional): Keep only the keys under this prefix (e.g.
            ``'backbone.'``) and strip it, as mmengine's ``Pretrained`` does.
            Defaults to None.
        map_location (str): Device for reading. Defaults to 'cpu'.
        logger (MMLogger, optional): Where the summary goes; the current
            logger when None.

    Returns:
        dict: ``format``, ``loaded`` (names), ``missing`` (backbone
        parameters not in the file) and ``ignored`` (file tensors not used).

    Raises:
        CheckpointError: Unreadable file, no PoolFormer weights in it, a
            shape mismatch (naming key and both shapes), or nothing matched.
    """
    state_dict = unwrap_state_dict(read_checkpoint(filename, map_location))
    ignored: List[str] = []
    if prefix:
        if not prefix.endswith('.'):
            prefix += '.'
        selected = OrderedDict((k[len(prefix):], v)
                               for k, v in state_dict.items()
                               if k.startswith(prefix))
        if not selected:
            raise CheckpointError(
                f'No key of {filename!r} starts with prefix {prefix!r}; '
                f'its keys start e.g. with {sorted(state_dict)[:3]}')
        # mmpretrain keeps its classifier outside the prefix; its presence
        # tells the final norm `backbone.norm6` from a dense output norm.
        classifier = any(k.startswith('head.fc.') for k in state_dict)
        ignored += [k for k in state_dict if not k.startswith(prefix)]
        state_dict = selected
        fmt = detect_format(state_dict)
        if fmt == 'original_dense' and classifier:
            fmt = 'mmpretrain'
    else:
        fmt = detect_format(state_dict)
    converted, not_backbone, fmt = convert_backbone_state_dict(
        state_dict, fmt)
    ignored += [(prefix or '') + k for k in not_backbone]

    own = model.state_dict()
    for key, value in converted.items():
        if key in own and own[key].shape != value.shape:
            raise CheckpointError(
                f'Shape mismatch loading {filename!r} ({fmt} naming) into '
                f'{type(model).__name__}: {key} is {tuple(value.shape)} in '
                f'the checkpoint but {tuple(own[key].shape)} in the model. '
                'Is the checkpoint of another arch?')
    loadable = OrderedDict((k, v) for k, v in converted.items() if k in own)
    ignored += [k for k in converted if k not in own]
    if not loadable:
        raise CheckpointError(
            f'Nothing in {filename!r} ({fmt} naming) matches '
            f'{type(model).__name__}; checkpoint keys start e.g. with '
            f'{sorted(state_dict)[:3]}')
    result = model.load_state_dict(loadable, strict=False)
    missing = list(result.missing_keys)
    logger = logger or MMLogger.get_current_instance()
    logger.info(
        f'Loaded pretrained {type(model).__name__} weights from {filename} '
        f'({fmt} naming): {len(loadable)} tensors loaded; '
        f'{len(missing)} model tensors not in the checkpoint'
        f'{": " + ", ".join(missing) if missing else ""}; '
        f'{len(ignored)} checkpoint tensors ignored'
        f'{": " + ", ".join(ignored) if ignored else ""}')
    return dict(format=fmt, loaded=list(loadable), missing=missing,
                ignored=ignored)


def init_weights(module: torch.nn.Module, init_others) -> None:
    """Apply a backbone's ``init_cfg``: ``Pretrained`` entries through
    :func:`load_pretrained`, the others through ``init_others`` (mmengine's
    ``BaseModule.init_weights`` of ``module``). Nothing happens without
    ``init_cfg``. ``module.pretrained_loads`` then lists ``(checkpoint,
    report)`` per ``Pretrained`` entry (:func:`load_pretrained`'s report),
    for tools that show what loaded.

    Args:
        module (BaseModule): The backbone, with ``init_cfg``.
        init_others (callable): Applies ``module.init_cfg`` the mmengine way.

    Raises:
        ValueError: A ``Pretrained`` entry without ``checkpoint`` or with
            keys other than ``checkpoint``, ``prefix``, ``map_location``.
    """
    module.pretrained_loads = []
    if module.init_cfg is None:
        return
    cfgs = (module.init_cfg
            if isinstance(module.init_cfg, list) else [module.init_cfg])
    pretrained = [c for c in cfgs if c.get('type') == 'Pretrained']
    others = [c for c in cfgs if c.get('type') != 'Pretrained']
    if others:
        init_cfg, module.init_cfg = module.init_cfg, others
        init_others()
        module.init_cfg = init_cfg
    for cfg in pretrained:
        unknown = set(cfg) - {'type', 'checkpoint', 'prefix', 'map_location'}
        if unknown or 'checkpoint' not in cfg:
            raise ValueError(
                f'Pretrained init_cfg {cfg} must have `checkpoint` and may '
                f'have `prefix`, `map_location`; unknown keys: '
                f'{sorted(unknown)}')
        report = load_pretrained(
            module,
            cfg['checkpoint'],
            prefix=cfg.get('prefix'),
            map_location=cfg.get('map_location', 'cpu'))
        module.pretrained_loads.append((str(cfg['checkpoint']), report))
    module._is_init = True
