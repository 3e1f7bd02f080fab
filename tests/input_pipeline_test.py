"""Tests for input_pipeline: IDX files, the download, validation, fuzzing."""

import gzip
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from unittest import mock

import numpy as np
from absl.testing import absltest, parameterized
from hypothesis import given, settings
from hypothesis import strategies as st

import input_pipeline
from tests import testutil

IMAGES, LABELS = input_pipeline.IDX_FILES['train']


class RealMnistTest(absltest.TestCase):
  def test_real_files_match_published_counts(self):
    testutil.require_real_mnist(self)
    data = input_pipeline.get_datasets(testutil.MNIST_DIR)
    self.assertEqual(data['train'].images.shape, (60_000, 28, 28))
    self.assertEqual(data['test'].images.shape, (10_000, 28, 28))
    self.assertEqual(data['train'].images.dtype, np.uint8)
    # Label counts from ../shared/mnist/README.md.
    np.testing.assert_array_equal(
      np.bincount(data['train'].labels),
      [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    )
    np.testing.assert_array_equal(
      np.bincount(data['test'].labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    )


class IdxTest(parameterized.TestCase):
  def setUp(self):
    super().setUp()
    self.dir = testutil.write_idx_dir(self.create_tempdir().full_path, 40, 12)

  def test_gz_and_raw_give_identical_arrays(self):
    raw_dir = self.create_tempdir().full_path
    for name in os.listdir(self.dir):
      with gzip.open(os.path.join(self.dir, name)) as f:
        with open(os.path.join(raw_dir, name[: -len('.gz')]), 'wb') as g:
          g.write(f.read())
    for split in ('train', 'test'):
      a = input_pipeline.load_idx_dir(self.dir, split)
      b = input_pipeline.load_idx_dir(raw_dir, split)
      np.testing.assert_array_equal(a.images, b.images)
      np.testing.assert_array_equal(a.labels, b.labels)
      self.assertEqual(a.labels.dtype, np.int32)

  def _rewrite(self, stem, transform):
    """Replaces `stem`.gz by gzip(transform(raw bytes)) and returns its path."""
    path = os.path.join(self.dir, stem + '.gz')
    with gzip.open(path) as f:
      data = f.read()
    with gzip.open(path, 'wb') as f:
      f.write(transform(data))
    return path

  @parameterized.named_parameters(
    ('wrong_magic', IMAGES, lambda d: (1234).to_bytes(4, 'big') + d[4:], 'wrong IDX magic'),
    ('labels_magic_in_images', IMAGES, lambda d: (2049).to_bytes(4, 'big') + d[4:], 'magic'),
    ('wrong_dims', IMAGES, lambda d: d[:8] + (27).to_bytes(4, 'big') + d[12:], 'item shape'),
    ('truncated', IMAGES, lambda d: d[:-100], 'truncated'),
    ('trailing', LABELS, lambda d: d + b'\0', 'trailing data'),
    ('header_cut', LABELS, lambda d: d[:6], 'truncated IDX header'),
    ('empty', LABELS, lambda d: b'', 'too short'),
    ('label_out_of_range', LABELS, lambda d: d[:-1] + bytes([10]), 'outside 0-9'),
  )
  def test_bad_file_names_file_and_problem(self, stem, transform, message):
    path = self._rewrite(stem, transform)
    with self.assertRaisesRegex(input_pipeline.DataError, message) as cm:
      input_pipeline.load_idx_dir(self.dir, 'train')
    self.assertIn(path, str(cm.exception))

  def test_count_mismatch(self):
    def drop_one_label(d):
      n = int.from_bytes(d[4:8], 'big')
      return d[:4] + (n - 1).to_bytes(4, 'big') + d[8:-1]

    self._rewrite(LABELS, drop_one_label)
    with self.assertRaisesRegex(input_pipeline.DataError, '40 images but .*39 labels'):
      input_pipeline.load_idx_dir(self.dir, 'train')

  def test_corrupt_gzip(self):
    path = os.path.join(self.dir, IMAGES + '.gz')
    with open(path, 'rb') as f:
      data = f.read()
    with open(path, 'wb') as f:
      f.write(data[: len(data) // 2])
    with self.assertRaisesRegex(input_pipeline.DataError, f'{path}: corrupt or truncated gzip'):
      input_pipeline.load_idx_dir(self.dir, 'train')

  def test_missing_file_and_empty_folder(self):
    os.remove(os.path.join(self.dir, LABELS + '.gz'))
    with self.assertRaisesRegex(input_pipeline.DataError, f'missing MNIST file {LABELS}'):
      input_pipeline.load_idx_dir(self.dir, 'train')
    empty = self.create_tempdir().full_path
    with self.assertRaisesRegex(input_pipeline.DataError, 'holds nothing'):
      input_pipeline.get_datasets(empty)

  def _raw_beside_gz(self, stem: str, change: bool) -> tuple[str, str, bytes]:
    """Writes `stem` uncompressed beside its .gz, one label changed if `change`."""
    gz = os.path.join(self.dir, stem + '.gz')
    with gzip.open(gz) as f:
      data = bytearray(f.read())
    if change:
      data[-1] = (data[-1] + 1) % 10
    raw = os.path.join(self.dir, stem)
    with open(raw, 'wb') as f:
      f.write(bytes(data))
    return raw, gz, bytes(data)

  def test_raw_and_gz_that_differ_are_refused_naming_both(self):
    raw, gz, _ = self._raw_beside_gz(LABELS, change=True)
    with self.assertRaises(input_pipeline.DataError) as cm:
      input_pipeline.load_idx_dir(self.dir, 'train')
    self.assertIn(f'{raw} and {gz} both hold {LABELS} but their contents differ', str(cm.exception))

  def test_raw_and_gz_that_agree_are_read(self):
    self._raw_beside_gz(LABELS, change=False)
    self.assertLen(input_pipeline.load_idx_dir(self.dir, 'train').labels, 40)

  def test_of_two_that_differ_the_published_one_is_used_and_named(self):
    raw, gz, _ = self._raw_beside_gz(LABELS, change=True)
    sums = testutil.content_sums(self.dir)  # The .gz is "the published" one here.
    with mock.patch.dict(input_pipeline.SHA256, sums), self.assertLogs(level='WARNING') as logs:
      labels = input_pipeline.load_idx_dir(self.dir, 'train').labels
    with gzip.open(gz) as f:
      expected = np.frombuffer(f.read(), np.uint8, offset=8)
    np.testing.assert_array_equal(labels, expected)
    self.assertIn(f'{raw} and {gz} differ; using {gz}', '\n'.join(logs.output))

  def test_a_directory_where_a_file_should_be_is_named_as_such(self):
    path = os.path.join(self.dir, IMAGES + '.gz')
    os.remove(path)
    os.mkdir(path)
    with self.assertRaisesRegex(input_pipeline.DataError, f'{path} is a directory, not the'):
      input_pipeline.load_idx_dir(self.dir, 'train')

  def test_standard_size_without_the_published_content_warns_once(self):
    folder = self.create_tempdir().full_path
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 10_000).astype(np.int32)  # MNIST's test size, other labels.
    images = np.zeros((10_000, 28, 28), np.uint8)
    input_pipeline.write_idx_dir(folder, {'test': input_pipeline.Split(images, labels)})
    path = os.path.join(folder, input_pipeline.IDX_FILES['test'][1] + '.gz')
    with self.assertLogs(level='WARNING') as logs:
      input_pipeline.load_idx_dir(folder, 'test')
      input_pipeline.load_idx_dir(folder, 'test')
    named = [line for line in logs.output if path in line]
    self.assertLen(named, 1, logs.output)
    self.assertIn('not its published content', named[0])

  def test_the_published_files_raise_no_warning(self):
    if not testutil.real_mnist_available():
      self.skipTest('needs ../shared/mnist')
    with mock.patch.object(input_pipeline.logging, 'warning') as warning:
      input_pipeline.get_datasets(testutil.MNIST_DIR)
    warning.assert_not_called()

  def test_not_a_folder(self):
    with self.assertRaisesRegex(input_pipeline.DataError, 'is not a folder'):
      input_pipeline.get_datasets('/nonexistent/mnist')


class IdxFuzzTest(absltest.TestCase):
  """No input makes the IDX reader raise anything but DataError (or hang)."""

  @settings(max_examples=300, deadline=None)
  @given(st.binary(max_size=64), st.sampled_from([(2051, (28, 28)), (2049, ())]))
  def test_random_bytes(self, data, kind):
    magic, shape = kind
    try:
      out = input_pipeline.parse_idx(data, name='fuzz', magic=magic, item_shape=shape)
    except input_pipeline.DataError:
      return
    self.assertEqual(out.shape[1:], shape)

  @settings(max_examples=300, deadline=None)
  @given(st.integers(0, 19), st.integers(0, 255), st.integers(0, 30))
  def test_mutated_valid_labels(self, pos, value, cut):
    valid = (2049).to_bytes(4, 'big') + (8).to_bytes(4, 'big') + bytes(range(8))
    data = bytearray(valid[: len(valid) - cut] if cut < len(valid) else b'')
    if pos < len(data):
      data[pos] = value
    try:
      out = input_pipeline.parse_idx(bytes(data), name='fuzz', magic=2049, item_shape=())
    except input_pipeline.DataError:
      return
    self.assertEqual(out.ndim, 1)

  @settings(max_examples=100, deadline=None)
  @given(st.binary(max_size=200))
  def test_random_gzip_files(self, data):
    folder = tempfile.mkdtemp()
    try:
      for stem in input_pipeline.IDX_FILES['test']:
        with open(os.path.join(folder, stem + '.gz'), 'wb') as f:
          f.write(data)
      with self.assertRaises(input_pipeline.DataError):
        input_pipeline.load_idx_dir(folder, 'test')
    finally:
      shutil.rmtree(folder)


def cached_files(folder: str) -> list[str]:
  return sorted(
    os.path.relpath(os.path.join(root, name), folder)
    for root, _, names in os.walk(folder)
    for name in names
  )


class DownloadTest(parameterized.TestCase):
  """download_mnist against a local server: small IDX files, with their own sums patched in."""

  def setUp(self):
    super().setUp()
    self.served = testutil.write_idx_dir(self.create_tempdir().full_path, 40, 12)
    self.url, self.requests, stop = testutil.serve(self.served)
    self.addCleanup(stop)
    self.cache = self.create_tempdir().full_path
    self.enter_context(mock.patch.dict(input_pipeline.SHA256, testutil.content_sums(self.served)))

  def test_downloads_once_then_reads_the_cache(self):
    data = input_pipeline.get_datasets('', self.url, self.cache)
    first = list(self.requests)
    self.assertLen([r for r in first if r.startswith('GET')], 4, first)
    expected = input_pipeline.get_datasets(self.served)
    for split in ('train', 'test'):
      np.testing.assert_array_equal(data[split].images, expected[split].images)
      np.testing.assert_array_equal(data[split].labels, expected[split].labels)
    folder = os.path.join(self.cache, input_pipeline.CACHE_SUBDIR)
    self.assertEqual(cached_files(folder), sorted(s + '.gz' for s in input_pipeline.SHA256))
    again = input_pipeline.get_datasets('', self.url, self.cache)
    self.assertEqual(self.requests, first, 'the second run made requests')
    np.testing.assert_array_equal(again['test'].images, expected['test'].images)

  def test_no_progress_bars_off_a_terminal(self):
    from tensorflow_datasets.core.utils import tqdm_utils

    self.addCleanup(tqdm_utils.display_progress_bar, tqdm_utils._active)
    tqdm_utils.enable_progress_bar()
    with mock.patch.object(sys.stderr, 'isatty', return_value=False):
      input_pipeline.get_datasets('', self.url, self.cache)
    self.assertFalse(tqdm_utils._active)  # TFDS's bars would be escape codes in a log file.

  def test_a_recompressed_mirror_passes(self):
    # The sums are of the content, so a mirror that gzips at another level is accepted.
    for name in os.listdir(self.served):
      path = os.path.join(self.served, name)
      with gzip.open(path) as f:
        raw = f.read()
      with open(path, 'wb') as f:
        f.write(gzip.compress(raw, compresslevel=1, mtime=0))
    data = input_pipeline.get_datasets('', self.url, self.cache)
    self.assertEqual(data['train'].images.shape, (40, 28, 28))

  def test_wrong_content_is_refused_and_deleted(self):
    stem = 'train-labels-idx1-ubyte'
    path = os.path.join(self.served, stem + '.gz')
    with gzip.open(path) as f:
      raw = bytearray(f.read())
    raw[-1] = (raw[-1] + 1) % 10  # Still a valid IDX file: one label changed.
    with open(path, 'wb') as f:
      f.write(gzip.compress(bytes(raw)))
    actual = hashlib.sha256(bytes(raw)).hexdigest()
    with self.assertRaises(input_pipeline.DataError) as cm:
      input_pipeline.download_mnist(self.url, self.cache)
    message = str(cm.exception)
    self.assertIn(stem, message)
    self.assertIn(actual, message)
    self.assertIn(input_pipeline.SHA256[stem], message)
    self.assertLen(message.splitlines(), 1)
    leftovers = cached_files(self.cache)
    self.assertFalse([f for f in leftovers if 'train-labels' in f or '.tmp.' in f], leftovers)

  def test_unreachable_server_fails_fast_and_names_the_way_out(self):
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
    sock.close()  # Nothing listens there now.
    url = f'http://127.0.0.1:{port}/'
    start = time.monotonic()
    with self.assertRaisesRegex(input_pipeline.DataError, r'--config\.data_dir') as cm:
      input_pipeline.get_datasets('', url, self.cache)
    self.assertLess(time.monotonic() - start, 30)
    self.assertIn(url, str(cm.exception))
    self.assertEqual(cached_files(self.cache), [])

  @parameterized.parameters('t10k-images-idx3-ubyte', 'train-labels-idx1-ubyte')
  def test_missing_file_on_the_server(self, stem):
    # The first file asked for, and the last (after the other three downloaded).
    os.remove(os.path.join(self.served, stem + '.gz'))
    with self.assertRaises(input_pipeline.DataError) as cm:
      input_pipeline.download_mnist(self.url, self.cache)
    message = str(cm.exception)
    # The network worked: the sentence names the file and the server's answer, not the network.
    self.assertIn(f'{self.url}{stem}.gz: the server answered HTTP 404', message)
    self.assertIn('--config.data_dir', message)  # The offline way stays the alternative.
    self.assertNotIn('Without network access to', message.split('.')[0])
    self.assertLen(message.splitlines(), 1)
    # What stays in the cache is verified: only whole files with the published content.
    folder = os.path.join(self.cache, input_pipeline.CACHE_SUBDIR)
    kept = cached_files(self.cache)
    self.assertFalse([f for f in kept if not f.startswith(input_pipeline.CACHE_SUBDIR)], kept)
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
      with gzip.open(os.path.join(folder, name)) as f:
        digest = hashlib.sha256(f.read()).hexdigest()
      self.assertEqual(digest, input_pipeline.SHA256[name.removesuffix('.gz')], name)
    # The files fetched before the failing one were kept; once the server has it, the next
    # run fetches only what is missing.
    self.assertLen(os.listdir(folder), list(input_pipeline.SHA256).index(stem))
    testutil.write_idx_dir(self.served, 40, 12)
    before = len([r for r in self.requests if r.startswith('GET')])
    input_pipeline.download_mnist(self.url, self.cache)
    fetched = [r for r in self.requests if r.startswith('GET')][before:]
    self.assertLen(fetched, 4 - list(input_pipeline.SHA256).index(stem), fetched)
    self.assertIn(stem, fetched[0])
    self.assertEqual(sorted(os.listdir(folder)), sorted(s + '.gz' for s in input_pipeline.SHA256))

  def test_progress_output_does_not_break_a_non_tty_run(self):
    script = (
      'import sys, input_pipeline\n'
      'input_pipeline.SHA256.update(dict(a.split("=") for a in sys.argv[3:]))\n'
      'print(input_pipeline.download_mnist(sys.argv[1], sys.argv[2]))\n'
    )
    sums = [f'{k}={v}' for k, v in input_pipeline.SHA256.items()]
    out = subprocess.run(
      [sys.executable, '-c', script, self.url, self.cache, *sums],
      cwd=testutil.REPO_ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL,
      timeout=300, check=False,
    )  # fmt: skip
    self.assertEqual(out.returncode, 0, out.stderr[-2000:])
    self.assertEqual(out.stdout.strip(), os.path.join(self.cache, input_pipeline.CACHE_SUBDIR))


class PublishedSumsTest(absltest.TestCase):
  def test_sums_are_the_published_ones(self):
    testutil.require_real_mnist(self)
    with open(os.path.join(testutil.MNIST_DIR, 'SHA256SUMS.uncompressed')) as f:
      published = {name: digest for digest, name in (line.split() for line in f if line.strip())}
    self.assertEqual(input_pipeline.SHA256, published)

  def test_the_url_is_tfds_own(self):
    from tensorflow_datasets.image_classification import mnist as tfds_mnist

    self.assertEqual(input_pipeline.MNIST_URL, tfds_mnist._MNIST_URL)

  def test_real_files_download_and_verify(self):
    testutil.require_real_mnist(self)
    url, _, stop = testutil.serve(testutil.MNIST_DIR)
    self.addCleanup(stop)
    cache = self.create_tempdir().full_path
    data = input_pipeline.get_datasets('', url, cache)
    self.assertEqual(data['train'].images.shape, (60_000, 28, 28))
    self.assertEqual(data['test'].labels.shape, (10_000,))


if __name__ == '__main__':
  absltest.main()
