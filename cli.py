"""train.py's command line: its flags, and every error a user can cause as one `error:` line.

`run(train_fn)` loads --config, splits a CPU into devices, turns the persistent compilation
cache on (startup.py; --compile_cache moves or disables it), joins a multi-process job if
asked, calls `train_fn(config, workdir)` and maps its exceptions to exit statuses: 1 for a
user's error (errors.UserError, a full disk), 75 for a preemption, 130 for Ctrl-C; a bug keeps
its traceback.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

import jax
import ml_collections
from absl import flags
from ml_collections import config_flags

import checkpointing
import multihost
import startup
from errors import ConfigError, Preempted, UserError

FLAGS = flags.FLAGS


def define_flags() -> None:
  """--config (a configs/*.py file, any field overridable), --workdir, --compile_cache, and
  the multi-host and CPU-device settings."""
  try:  # Without --config, the --config.<field> overrides are applied here.
    config_flags.DEFINE_config_file(
      'config', 'configs/mnist.py', 'Training config file (see configs/).', lock_config=True
    )
  except (KeyError, AttributeError) as e:
    sys.exit(config_error(e, sys.argv))
  flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and plots are written.')
  flags.DEFINE_enum(
    'distributed',
    'off',
    ['off', 'auto'],
    'auto: one process of a multi-process job whose cluster JAX detects (Cloud TPU VMs, SLURM, '
    'Kubernetes); off: a single process unless --coordinator_address is given.',
  )
  flags.DEFINE_string('coordinator_address', None, 'Multi-process: host:port of process 0.')
  flags.DEFINE_integer('num_processes', None, 'Multi-process: number of processes.')
  flags.DEFINE_integer('process_id', None, 'Multi-process: index of this process.')
  flags.DEFINE_integer(
    'cpu_devices',
    0,
    'CPU only: split the host into this many JAX devices, the batch sharded over them as over '
    'GPUs. 0: one per core (at most 8, dividing the batch); 1 in a multi-process job.',
    lower_bound=0,
  )
  startup.define_flag()
  flags.mark_flags_as_required(['workdir'])


def run(train_fn: Callable[[ml_collections.ConfigDict, str], object]) -> None:
  """Runs `train_fn(config, workdir)` from the parsed flags; never returns on an error."""
  signal.signal(signal.SIGINT, exit_on_interrupt)
  checkpointing.ignore_failed_read_noise()
  startup.quiet_start()
  try:
    config = load_config(FLAGS)
    several = FLAGS.coordinator_address or FLAGS.distributed == 'auto'
    auto = 1 if several else multihost.default_cpu_devices(config.batch_size)
    # Before anything starts a JAX backend; unused when an accelerator is the default.
    jax.config.update('jax_num_cpu_devices', FLAGS.cpu_devices or auto)
    startup.enable_compile_cache(FLAGS.compile_cache)
    multihost.start(
      FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    )
    train_fn(config, FLAGS.workdir)
  except Preempted as e:
    multihost.end(str(e), multihost.EXIT_PREEMPTED)
  except UserError as e:
    multihost.end(f'error: {e}', 1)
  except OSError as e:  # A full disk, a folder gone: every write is atomic, nothing is lost.
    where = f' ({e.filename})' if e.filename else ''
    multihost.end(f'error: {e.strerror or e}{where}; fix it and rerun to resume.', 1)
  except Exception as e:
    if jax.process_count() == 1:
      raise  # A bug: its traceback.
    multihost.end(multihost.describe(e), 1)


def exit_on_interrupt(signum, frame) -> None:
  """Ctrl-C ends the run at once, as a kill would (every write is atomic, so a rerun resumes
  from the last checkpoint). A KeyboardInterrupt raised inside compilation can be lost, and
  the interpreter's teardown with XLA's threads still running can crash."""
  del signum, frame
  os.write(2, b'error: interrupted; rerun the same command to resume.\n')
  os._exit(130)


def config_error(e: BaseException, argv: list[str]) -> str:
  """One line for an error config_flags raised: an unknown field or a broken config file."""
  chain = [e]
  while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
    chain.append(chain[-1].__cause__ or chain[-1].__context__)
  root = chain[-1]
  if isinstance(root, KeyError | AttributeError) and 'get_config' not in str(root):
    overrides = ' '.join(a for a in argv[1:] if a.startswith('--config.'))
    detail = max((str(x) for x in chain if isinstance(x, KeyError)), key=len)
    detail = detail[1:-1] if detail[:1] == detail[-1:] == '"' else detail
    return f'error: unknown config field in {overrides}: {detail}'
  return f'error: --config: {type(root).__name__}: {(str(root) or "?").splitlines()[0]}'


def parse_flags(argv: list[str], flag_values: flags.FlagValues = FLAGS) -> list[str]:
  """absl's parsing, with a bad --config file or --config.<field> reported in one line."""
  try:
    return flag_values(argv)
  except flags.Error as e:  # A config file that raised: its message holds the traceback.
    lines = [line for line in str(e).splitlines() if line.strip()]
    sys.exit(f'error: {lines[0]} {lines[-1]}' if 'Traceback' in str(e) else f'error: {e}')
  except Exception as e:  # config_flags raises the config file's own errors while parsing.
    sys.exit(config_error(e, argv))


def load_config(flag_values: flags.FlagValues = FLAGS) -> ml_collections.ConfigDict:
  """flag_values.config; a --config file that does not exist is only found out here."""
  try:
    flag_values.config.get('seed')  # The first access raises the deferred load error.
    return flag_values.config
  except OSError as e:
    detail = str(e).strip().splitlines()[-1].strip()
    raise ConfigError(f'the --config file could not be loaded ({detail}).') from None
