"""Switching a built detector or segmentor to its inference fast path
(``tools/test.py --deploy``).

The switch has to come after the runner has loaded the checkpoint: the
runner loads it in ``Runner.test()`` (``load_or_resume``), right before the
test loop calls the ``before_test`` hooks, so :class:`SwitchToDeployHook`
switches there. (PoolFormer's fast path would also pick up weights loaded
after the switch, but other modules with a ``switch_to_deploy`` method, e.g.
re-parameterised blocks, need the weights first.)
"""
from typing import List

import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.logging import print_log


def switch_model_to_deploy(model: nn.Module) -> List[str]:
    """Call ``switch_to_deploy()`` on every outermost submodule of ``model``
    (``model`` included) that has it.

    Returns:
        list[str]: Names of the switched modules ('' for ``model``).

    Raises:
        RuntimeError: No module has ``switch_to_deploy``.
    """
    switched: List[str] = []
    for name, module in model.named_modules():
        if any(name == s or name.startswith(s + '.') for s in switched if s):
            continue
        if '' in switched:
            break
        if callable(getattr(module, 'switch_to_deploy', None)):
            module.switch_to_deploy()
            switched.append(name)
    if not switched:
        raise RuntimeError(
            f'No module of {type(model).__name__} has switch_to_deploy(); '
            '--deploy needs a backbone with an inference fast path, such as '
            'PoolFormer')
    return switched


class SwitchToDeployHook(Hook):
    """Switch the model to its inference fast path before testing, after
    the runner loaded the checkpoint."""

    priority = 'LOWEST'

    def before_test(self, runner) -> None:
        names = switch_model_to_deploy(runner.model)
        print_log(
            'Switched to the deploy (inference) path: ' +
            ', '.join(n or type(runner.model).__name__ for n in names),
            logger='current')
