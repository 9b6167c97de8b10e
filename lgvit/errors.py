"""The errors lgvit reports to its users.

Every error that a wrong input can cause (an unknown model name, an image size the architecture
cannot take, a missing dataset, a bad config value, an unreadable checkpoint, a diverging run)
derives from :class:`LgvitError`, and its message says what to do about it. The command-line tools
catch this one type and print it as ``error: <message>`` with exit status 2; anything else is a bug
and keeps its traceback. Each class also derives from the built-in exception it refines, so code
that catches ``ValueError`` or ``FileNotFoundError`` keeps working.
"""


class LgvitError(Exception):
  """A problem with what the user asked for; the message says how to fix it."""


class UnknownModelError(LgvitError, ValueError):
  """A model name that is not registered."""


class InvalidInputSizeError(LgvitError, ValueError):
  """The image size cannot pass through the architecture; the message names valid sizes."""


class ConfigError(LgvitError, ValueError):
  """A config value that cannot work (batch not divisible by the devices, wrong class count, ...)."""


class DatasetNotFoundError(LgvitError, FileNotFoundError):
  """An unknown or unprepared TFDS dataset, or a missing split."""


class CheckpointError(LgvitError, RuntimeError):
  """A checkpoint that is missing, unreadable, or does not fit the model."""


class WorkdirError(LgvitError, FileNotFoundError):
  """A directory that is not what the command needs (no config.json, no checkpoint, ...)."""


class NonFiniteLossError(LgvitError, FloatingPointError):
  """The training loss became NaN or infinite; the run stops without saving."""


def first_line(error: BaseException, limit: int = 200) -> str:
  """The first line of ``error``'s message, shortened: what a one-line error quotes of its cause."""
  text = str(error)
  return text.splitlines()[0][:limit] if text else ''
