"""What the tools do, as functions a script can call after ``pip install``.

- :mod:`.runs`: :func:`train` and :func:`test` from a config (what
  ``tools/train.py`` and ``tools/test.py`` run), and the config and model
  helpers the other tools share.
"""
from .runs import build_model, load_config, test, train

__all__ = ['build_model', 'load_config', 'test', 'train']
