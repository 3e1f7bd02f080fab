"""pytest glue: absl flags marked parsed, and the test tiers.

absltest helpers (create_tempdir, ...) read absl flags, so they are marked parsed here. Test
files that train, start subprocesses or regenerate the docs are marked `slow`: `make quick`
(pytest -m 'not slow') runs the rest, the unit tier (170 tests, 52 s on the quiet 2-core
machine); `make test` and CI run everything.
"""

import os

import pytest
from absl import flags

flags.FLAGS.mark_as_parsed()

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
  'ScriptTest', 'LibreOfficeTest', 'CheckWorkbookCommandTest', 'DownloadTest',
  'CheckpointIntegrityTest', 'EveryNetCompilesTest', 'RandomShapesTest',
}  # fmt: skip


def pytest_collection_modifyitems(items):
  for item in items:
    in_slow_class = getattr(item.cls, '__name__', None) in SLOW_CLASSES
    if os.path.basename(str(item.fspath)) in SLOW_FILES or in_slow_class:
      item.add_marker(pytest.mark.slow)
