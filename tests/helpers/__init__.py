"""What the tests share: paths and subprocess runs (:mod:`.commands`), the
tiny demo trainings (:mod:`.tiny_demo`) and the hooks that the preemption
tests add to a training (:mod:`.stop_hooks`, imported by ``custom_imports``
in fresh processes with ``tests/`` on ``PYTHONPATH``)."""
