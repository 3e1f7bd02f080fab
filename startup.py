"""What every entry point does before JAX starts a backend: the persistent compilation cache,
on by default, and a start without noise.

* `enable_compile_cache(folder)`: JAX's persistent compilation cache in $XDG_CACHE_HOME/s6jax
  (else ~/.cache/s6jax), so a second run reads its compiled programs instead of compiling them
  again. JAX_COMPILATION_CACHE_DIR, when set, names the folder instead; `--compile_cache=DIR`
  wins over both, and `--compile_cache=off` (or JAX_ENABLE_COMPILATION_CACHE=false) turns it
  off. A folder that cannot be written is a warning: the run compiles without the cache.
* `cache_counts()`: (programs read from the cache, programs looked up) so far, for the log.
* `quiet_start()`: JAX's failed TPU probe on a machine without libtpu and orbax's temp-folder
  clean-up line are dropped (every other line, warnings and errors included, stays).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
import threading

import jax
from absl import flags
from absl import logging as absl_logging
from jax.experimental.compilation_cache import compilation_cache

OFF = 'off'
_HIT_EVENT = '/jax/compilation_cache/cache_hits'
_REQUEST_EVENT = '/jax/compilation_cache/compile_requests_use_cache'
_counts = {_HIT_EVENT: 0, _REQUEST_EVENT: 0}  # Since the listener was registered.
_lock = threading.Lock()
_listening = threading.Event()


def default_cache_dir() -> str:
  """$XDG_CACHE_HOME/s6jax, else ~/.cache/s6jax."""
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 's6jax')


def define_flag(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  flags.DEFINE_string(
    'compile_cache',
    None,
    'Folder of the persistent XLA compilation cache, or "off". Default: '
    'JAX_COMPILATION_CACHE_DIR if set, else $XDG_CACHE_HOME/s6jax or ~/.cache/s6jax.',
    flag_values=flag_values,
  )


def _unwritable(folder: str) -> str | None:
  """Why `folder` cannot hold the cache (None if it can): made if missing, then written to."""
  try:
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix='.probe'):
      pass
  except OSError as e:
    return e.strerror or str(e)
  return None


def enable_compile_cache(folder: str | None = None) -> str | None:
  """Turns the persistent compilation cache on in `folder` (None: the default, module
  docstring; 'off' or '': off); returns the folder used, or None when the cache is off."""
  if folder in (OFF, '') or not jax.config.jax_enable_compilation_cache:
    jax.config.update('jax_enable_compilation_cache', False)
    return None
  folder = os.path.expanduser(folder or jax.config.jax_compilation_cache_dir or default_cache_dir())
  if problem := _unwritable(folder):
    absl_logging.warning(
      'The compilation cache folder %s cannot be written (%s); compiling without it '
      '(--compile_cache=DIR moves it, --compile_cache=off turns it off).',
      folder, problem,
    )  # fmt: skip
    jax.config.update('jax_enable_compilation_cache', False)
    return None
  jax.config.update('jax_compilation_cache_dir', folder)
  _reopen_cache()
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
    # JAX caches only programs that took a second or more; a run's small programs (the
    # permutation, the evaluation, the replication) add up, and reading each is milliseconds.
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  _count_cache_events()
  return folder


def _reopen_cache() -> None:
  """Makes JAX open its cache from the folder now set (it opens it once, at the first compile,
  and keeps that folder), without its INFO line about it."""
  logger = logging.getLogger('jax._src.compilation_cache')
  level = logger.level
  logger.setLevel(logging.WARNING)
  try:
    compilation_cache.reset_cache()
  finally:
    logger.setLevel(level)


def _count_cache_events() -> None:
  """Counts JAX's cache lookups and hits (jax.monitoring events), once per process."""
  if _listening.is_set():
    return
  _listening.set()

  def listen(event: str, **kwargs) -> None:
    del kwargs
    if event in _counts:
      with _lock:
        _counts[event] += 1

  jax.monitoring.register_event_listener(listen)


def cache_counts() -> tuple[int, int]:
  """(programs read from the persistent cache, programs looked up in it) in this process."""
  with _lock:
    return _counts[_HIT_EVENT], _counts[_REQUEST_EVENT]


def describe_cache(hits: tuple[int, int]) -> str:
  """Words for the compile log line: how many programs came from the cache."""
  found, looked_up = hits
  if not jax.config.jax_enable_compilation_cache or not jax.config.jax_compilation_cache_dir:
    return 'compilation cache off'
  return f'{found} of {looked_up} from the compilation cache'


class _Drop(logging.Filter):
  """Drops the INFO (and lower) records that start with `prefix`."""

  def __init__(self, prefix: str):
    super().__init__()
    self.prefix = prefix

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno > logging.INFO or not record.getMessage().startswith(self.prefix)


def quiet_start() -> None:
  """Drops two INFO lines a newcomer reads as something broken: JAX's failed TPU probe where no
  libtpu is installed (no TPU to miss), and orbax's 'Cleaning up existing temporary
  directories', which it logs from a thread of its own, outside checkpointing.quiet_orbax."""
  if importlib.util.find_spec('libtpu') is None:
    logging.getLogger('jax._src.xla_bridge').addFilter(_Drop("Unable to initialize backend 'tpu'"))
  logging.getLogger('absl').addFilter(_Drop('Cleaning up existing temporary directories'))
