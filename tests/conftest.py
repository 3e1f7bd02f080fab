"""pytest glue: absl flags marked parsed, and the test tiers.

absltest helpers (create_tempdir, ...) read absl flags, so they are marked parsed here. Test
files that train, start subprocesses or regenerate the docs are marked `slow`: `make quick`
(pytest -m 'not slow') runs the rest, the unit tier (170 tests, 24 s on two workers on the
quiet 2-core Intel Xeon); `make test` and CI run everything.

`make test` and `make quick` run the tests on pytest-xdist workers (`-n auto`, one per core up
to 4, below); a plain `pytest` runs them in one process.

The session shares one persistent XLA compilation cache, a fresh temporary folder, with every
process it starts (through the JAX_* variables, which subprocesses and xdist workers inherit):
many tests compile the same small programs, and a cache hit skips most of XLA's compile.
S6JAX_TEST_COMPILE_CACHE=0 turns it off.
"""

import atexit
import os
import shutil
import tempfile

import pytest
from absl import flags

flags.FLAGS.mark_as_parsed()


def _share_compilation_cache() -> None:
  if os.environ.get('S6JAX_TEST_COMPILE_CACHE', '1') == '0':
    return
  folder = os.environ.get('S6JAX_TEST_COMPILE_CACHE_DIR')
  if not (os.environ.get('PYTEST_XDIST_WORKER') and folder and os.path.isdir(folder)):
    # The session's first process (pytest, or xdist's controller) owns the folder; its
    # xdist workers inherit the variables and share it.
    folder = tempfile.mkdtemp(prefix='s6jax_test_xla_cache_')
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ['S6JAX_TEST_COMPILE_CACHE_DIR'] = folder
  os.environ['JAX_COMPILATION_CACHE_DIR'] = folder
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'  # Cache every program.
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'


_share_compilation_cache()  # Before any test module imports jax, which reads the variables.

SLOW_FILES = {
  'analysis_test.py',
  'conv_layers_test.py',
  'docs_test.py',
  'gpu_check_test.py',
  'launch_test.py',
  'multiprocess_test.py',
  'reliability_test.py',
  'seeds_test.py',
  'torch_cnn_test.py',
  'train_test.py',
}
# Classes in otherwise quick files that start subprocesses, LibreOffice or a download server,
# compile every probe net, or write real orbax checkpoints.
SLOW_CLASSES = {
  'ScriptTest', 'LibreOfficeTest', 'CheckWorkbookCommandTest', 'SheetCommandTest', 'DownloadTest',
  'CheckpointIntegrityTest', 'EveryNetCompilesTest', 'RandomShapesTest', 'WheelTest',
  'CnnCheckCommandTest',
}  # fmt: skip


def pytest_collection_modifyitems(items):
  for item in items:
    in_slow_class = getattr(item.cls, '__name__', None) in SLOW_CLASSES
    if os.path.basename(str(item.fspath)) in SLOW_FILES or in_slow_class:
      item.add_marker(pytest.mark.slow)


@pytest.hookimpl(optionalhook=True)  # Defined by pytest-xdist (the test extra).
def pytest_xdist_auto_num_workers(config):
  """`-n auto` (make test, make quick): a worker per usable core, at most 4. Each worker
  imports JAX, and the multi-process tests start up to 4 training processes of their own."""
  del config
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  return max(1, min(4, cores or 1))
