"""Shared helpers for the tests: where the real MNIST lies, small IDX folders, tiny configs."""

import functools
import gzip
import hashlib
import http.server
import os
import tempfile
import threading

import numpy as np
import pytest
from absl.testing import absltest

import input_pipeline
from configs import gap

# For tests that restore damaged checkpoints: a failed orbax read can leave tensorstore a
# callback on orbax's closed event loop. train.py keeps that traceback off the terminal
# (checkpointing.ignore_failed_read_noise); pytest would report it as a warning against
# whichever test the callback lands in.
IGNORE_CLOSED_EVENT_LOOP = pytest.mark.filterwarnings(
  r'ignore:Exception ignored in[\s\S]*Event loop is closed:pytest.PytestUnraisableExceptionWarning'
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The real MNIST IDX files: ../shared/mnist beside the checkout (CI lays it there too).
MNIST_DIR = os.environ.get('S6JAX_MNIST_DIR', os.path.join(REPO_ROOT, '..', 'shared', 'mnist'))


def real_mnist_available() -> bool:
  return os.path.isfile(os.path.join(MNIST_DIR, 'train-images-idx3-ubyte.gz'))


def require_real_mnist(test: absltest.TestCase) -> None:
  """Skips `test` without ../shared/mnist, except under CI=true, where its absence fails."""
  if real_mnist_available():
    return
  if os.environ.get('CI') == 'true':
    test.fail(f'real MNIST missing at {MNIST_DIR}: this test must run in CI')
  test.skipTest('real MNIST not present')


def write_idx_dir(folder: str, num_train: int, num_test: int, gz: bool = True) -> str:
  """Writes a small IDX folder: the first examples of real MNIST, or random digits if absent."""
  if real_mnist_available():
    splits = input_pipeline.first(
      input_pipeline.get_datasets(MNIST_DIR), train=num_train, test=num_test
    )
  else:
    rng = np.random.default_rng(0)
    splits = {
      s: input_pipeline.Split(
        rng.integers(0, 256, (n, 28, 28), np.uint8), rng.integers(0, 10, n).astype(np.int32)
      )
      for s, n in (('train', num_train), ('test', num_test))
    }
  return input_pipeline.write_idx_dir(folder, splits, gz)


def tiny_config(data_dir: str, **overrides):
  """configs/gap.py shrunk for tests: batch 8, 1 epoch, 2 steps per call, no plots.

  The GAP base, not the default: no weight average and no dropout unless a test asks for them.
  """
  config = gap.get_config()
  config.data_dir = data_dir
  config.batch_size = 8
  config.eval_batch_size = 8
  config.num_epochs = 1
  config.steps_per_call = 2
  config.plots = False
  config.update(overrides)
  return config


def fresh_dir(prefix: str) -> str:
  """A new empty folder for a setUpClass. absltest's default tmpdir outlives a pytest session,
  so a fixed name there would hand the next session an old run to resume."""
  return tempfile.mkdtemp(prefix=prefix, dir=absltest.get_default_test_tmpdir())


@functools.cache
def _reference_run():
  import train  # Lazy: most users of this module need no trainer.

  data_dir = write_idx_dir(fresh_dir('idx_small'), 48, 20)
  config = tiny_config(data_dir, num_epochs=2)
  workdir = fresh_dir('reference_run')
  return config, workdir, train.train_and_evaluate(config, workdir)


def reference_run():
  """(config, workdir, summary) of one 2-epoch run on 48 train / 20 test images, batch 8.

  Run once per process and shared by the tests that compare against it: treat the workdir as
  read-only (copy it to damage it). The config is a fresh copy each call.
  """
  config, workdir, summary = _reference_run()
  return config.copy_and_resolve_references(), workdir, summary


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
  """Serves one folder, counting the requests (the test server's log)."""

  requests: list[str]

  def do_GET(self):
    self.requests.append(f'GET {self.path}')
    super().do_GET()

  def do_HEAD(self):
    self.requests.append(f'HEAD {self.path}')
    super().do_HEAD()

  def log_message(self, *args):
    del args  # Quiet: the test output stays readable.


def serve(folder: str):
  """Starts a stdlib HTTP server on a free loopback port; returns (base URL, request log, stop)."""
  handler = type('Handler', (_CountingHandler,), {'requests': []})
  server = http.server.ThreadingHTTPServer(
    ('127.0.0.1', 0), functools.partial(handler, directory=folder)
  )
  threading.Thread(target=server.serve_forever, daemon=True).start()

  def stop():
    server.shutdown()
    server.server_close()

  return f'http://127.0.0.1:{server.server_address[1]}/', handler.requests, stop


def content_sums(folder: str) -> dict[str, str]:
  """sha256 of each IDX file's uncompressed bytes, as input_pipeline.SHA256 holds them."""
  sums = {}
  for stem in input_pipeline.SHA256:
    with gzip.open(os.path.join(folder, stem + '.gz')) as f:
      sums[stem] = hashlib.sha256(f.read()).hexdigest()
  return sums


def array_data_files(checkpoint_dir: str) -> list[str]:
  """The files of the checkpoint's array store (OCDBT `d/` folders: b-tree nodes and values).

  Which of them hold live data varies: orbax's writes split the arrays over a different number
  of files from run to run, and a file can hold superseded nodes that no read touches.
  """
  paths = [
    os.path.join(folder, name)
    for folder, _, names in os.walk(checkpoint_dir)
    if os.path.basename(folder) == 'd'
    for name in names
  ]
  assert paths, f'no array data files under {checkpoint_dir}'
  return paths


def invert_array_data(checkpoint_dir: str) -> None:
  """Inverts every byte of every array data file: whatever a restore reads is damaged."""
  for path in array_data_files(checkpoint_dir):
    with open(path, 'rb') as f:
      data = f.read()
    with open(path, 'wb') as f:
      f.write(bytes(b ^ 0xFF for b in data))


def rounded_to(digits: int):
  """`v` -> `v` as a sheet shows it with `digits` significant digits."""
  return lambda v: float(f'{v:.{digits}g}')
