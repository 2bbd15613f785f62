"""The package's error types, one per concern.

- :class:`InputError`: a value the user gave (a path, an option, a shape)
  that cannot be used; the message names the value and what would be
  accepted. The tools print it as one ``error:`` line.
- :class:`CheckpointError`: a checkpoint or weights file that cannot be
  used: unreadable, torn, unsafe to unpickle, or not fitting the model.
"""


class InputError(ValueError):
    """A value given by the user that cannot be used."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, unsafe, or not matching
    the model."""
