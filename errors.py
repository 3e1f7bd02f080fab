"""The errors a user can cause and fix. `train.py`'s command line prints any of them as one
`error:` line (no traceback); everything else is a bug and keeps its traceback."""


class UserError(Exception):
  """Base: a bad setting, bad data, an unusable workdir, or a diverged run."""


class ConfigError(UserError, ValueError):
  """A config field, flag or workdir that training cannot use."""


class DataError(UserError, ValueError):
  """Unreadable, corrupt, inconsistent or unreachable data."""


class CheckpointError(UserError):
  """workdir/checkpoints holds checkpoints, but none of them passes its checks."""


class NonFiniteError(UserError, FloatingPointError):
  """The loss or a gradient became NaN/Inf; the last good checkpoint is kept."""


class Preempted(Exception):  # noqa: N818 (a request, not an error)
  """SIGTERM stopped the run at a step boundary, after saving a checkpoint of that step."""
