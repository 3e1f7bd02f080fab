"""MNIST as uint8 arrays from a folder of IDX files, downloaded once if need be.

  * `load_idx_dir(path, split)`: the four standard IDX files, `.gz` or raw, e.g. ../shared/mnist.
  * `download_mnist(url, download_dir)`: fetches them once (TFDS's download manager, TFDS's
    MNIST URL by default), checks their content against the published sha256 sums, and
    returns the cache folder, which `load_idx_dir` then reads.

Everything read is validated; any problem raises `DataError` with the file and what is wrong.
What happens to the images on the device (normalisation, augmentation) is augment.py.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import re
import shutil
import sys
import zlib
from typing import NamedTuple

import numpy as np
from absl import logging

from errors import DataError  # Raised for every unreadable, corrupt or inconsistent input.

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)

IDX_FILES = {
  'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
  'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
EXPECTED_COUNTS = {'train': 60_000, 'test': 10_000}
_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions.
_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension.


class Split(NamedTuple):
  images: np.ndarray  # uint8 [N, 28, 28]
  labels: np.ndarray  # int32 [N], values 0..9


# ----------------------------------------------------------------------------- IDX files


def _read_bytes(path: str) -> bytes:
  """Reads a file, transparently gunzipping `.gz`; corrupt gzip becomes a DataError."""
  try:
    with open(path, 'rb') as f:
      raw = f.read()
  except OSError as e:
    raise DataError(f'{path}: cannot read ({e.strerror or e}).') from e
  if not path.endswith('.gz'):
    return raw
  try:
    return gzip.decompress(raw)
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(f'{path}: corrupt or truncated gzip data ({e}).') from e


def parse_idx(data: bytes, *, name: str, magic: int, item_shape: tuple[int, ...]) -> np.ndarray:
  """Parses IDX bytes (uint8 payload) and checks magic, dimensions and length.

  Args:
    data: the uncompressed file contents.
    name: the file name, used in error messages.
    magic: expected magic number (2051 for images, 2049 for labels).
    item_shape: expected shape of one item, () for labels, (28, 28) for images.

  Returns:
    A uint8 array of shape [count, *item_shape], a view of `data`.
  """
  ndim = 1 + len(item_shape)
  header_len = 4 + 4 * ndim
  if len(data) < 4:
    raise DataError(f'{name}: file is {len(data)} bytes, too short for an IDX header.')
  found_magic = int.from_bytes(data[:4], 'big')
  if found_magic != magic:
    raise DataError(
      f'{name}: wrong IDX magic number {found_magic} (expected {magic}: '
      f'{"images" if magic == _IMAGES_MAGIC else "labels"}, uint8, {ndim} dimensions).'
    )
  if len(data) < header_len:
    raise DataError(f'{name}: truncated IDX header ({len(data)} of {header_len} bytes).')
  dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], 'big') for i in range(ndim))
  if dims[1:] != item_shape:
    raise DataError(f'{name}: item shape {dims[1:]} but MNIST needs {item_shape}.')
  expected = header_len + math.prod(dims)
  if len(data) != expected:
    raise DataError(
      f'{name}: header says {dims[0]} items ({expected} bytes) but the file has '
      f'{len(data)} bytes ({"truncated" if len(data) < expected else "trailing data"}).'
    )
  return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def _standard_size(stem: str) -> int:
  """Bytes of the published file `stem`: its IDX header and every item."""
  split = 'train' if stem.startswith('train') else 'test'
  is_images = stem == IDX_FILES[split][0]
  return (
    (16 + EXPECTED_COUNTS[split] * math.prod(IMAGE_SHAPE))
    if is_images
    else (8 + EXPECTED_COUNTS[split])
  )


_warned_unpublished: set[str] = set()  # Each differing file is named once per process.


def _warn_if_not_published(path: str, stem: str, data: bytes) -> None:
  """A file of MNIST's exact size whose content is not the published one is damaged or is
  another data set: training goes on (it may be on purpose), but not silently."""
  if len(data) != _standard_size(stem) or path in _warned_unpublished:
    return
  if hashlib.sha256(data).hexdigest() != SHA256[stem]:
    _warned_unpublished.add(path)
    logging.warning(
      '%s has the size of MNIST\'s %s but not its published content (sha256 differs): the '
      'file is damaged or is not MNIST. Training on it as it is.', path, stem,
    )  # fmt: skip


def _read_idx_file(folder: str, stem: str) -> tuple[str, bytes]:
  """(path, uncompressed bytes) of `stem` or `stem.gz` in `folder`. When both are there they
  must hold the same content, or exactly one the published one (then that one is used)."""
  paths = [p for p in (os.path.join(folder, stem), os.path.join(folder, stem + '.gz'))
           if os.path.lexists(p)]  # fmt: skip
  for path in paths:
    if os.path.isdir(path):
      raise DataError(
        f'{path} is a directory, not the MNIST file {os.path.basename(path)}: remove or '
        'rename it, and put the file there.'
      )
  if not paths:
    present = sorted(os.listdir(folder))
    raise DataError(
      f'{folder}: missing MNIST file {stem}[.gz]; the folder holds {present or "nothing"}. '
      f'It needs all four: {", ".join(s for pair in IDX_FILES.values() for s in pair)}.'
    )
  contents = {path: _read_bytes(path) for path in paths}
  if len(contents) == 2 and len(set(contents.values())) == 2:
    published = [p for p, d in contents.items() if hashlib.sha256(d).hexdigest() == SHA256[stem]]
    if len(published) != 1:
      raise DataError(
        f'{paths[0]} and {paths[1]} both hold {stem} but their contents differ (a stale copy '
        'beside a new one?), and neither or both match the published MNIST: remove the one '
        'that should not be used.'
      )
    logging.warning(
      '%s and %s differ; using %s, whose content matches the published MNIST (the other does '
      'not: remove it).', paths[0], paths[1], published[0],
    )  # fmt: skip
    paths = published
  _warn_if_not_published(paths[0], stem, contents[paths[0]])
  return paths[0], contents[paths[0]]


def load_idx_dir(folder: str, split: str) -> Split:
  """Reads one split ('train' or 'test') from a folder of the standard IDX files."""
  if split not in IDX_FILES:
    raise DataError(f'unknown split {split!r}; expected one of {sorted(IDX_FILES)}.')
  if not os.path.isdir(folder):
    raise DataError(
      f'data_dir {folder!r} is not a folder (set --config.data_dir to the IDX folder).'
    )
  images_stem, labels_stem = IDX_FILES[split]
  images_path, images_bytes = _read_idx_file(folder, images_stem)
  labels_path, labels_bytes = _read_idx_file(folder, labels_stem)
  images = parse_idx(images_bytes, name=images_path, magic=_IMAGES_MAGIC, item_shape=IMAGE_SHAPE)
  labels = parse_idx(labels_bytes, name=labels_path, magic=_LABELS_MAGIC, item_shape=())
  if len(images) != len(labels):
    raise DataError(
      f'{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels.'
    )
  if len(labels) and labels.max() >= NUM_CLASSES:
    bad = int(np.argmax(labels >= NUM_CLASSES))
    raise DataError(f'{labels_path}: label {labels[bad]} at index {bad} is outside 0-9.')
  return Split(images=images, labels=labels.astype(np.int32))


def write_idx(path: str, array: np.ndarray) -> None:
  """Writes a uint8 array as an IDX file (gzip-compressed if `path` ends in .gz)."""
  array = np.asarray(array, dtype=np.uint8)
  magic = _LABELS_MAGIC if array.ndim == 1 else _IMAGES_MAGIC
  header = magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in array.shape)
  data = header + array.tobytes()
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'wb') as f:
    f.write(data)


def write_idx_dir(folder: str, splits: dict[str, Split], gz: bool = True) -> str:
  """Writes {'train': Split, 'test': Split} as the four standard IDX files; returns `folder`."""
  os.makedirs(folder, exist_ok=True)
  suffix = '.gz' if gz else ''
  for split, data in splits.items():
    images_stem, labels_stem = IDX_FILES[split]
    write_idx(os.path.join(folder, images_stem + suffix), data.images)
    write_idx(os.path.join(folder, labels_stem + suffix), data.labels)
  return folder


def first(splits: dict[str, Split], **counts: int) -> dict[str, Split]:
  """The first `counts[split]` examples of each split, e.g. first(data, train=64, test=16)."""
  return {k: Split(v.images[: counts[k]], v.labels[: counts[k]]) for k, v in splits.items()}


# ----------------------------------------------------------------------------- download

# Where TFDS's MNIST builder downloads the four .gz files from.
MNIST_URL = 'https://storage.googleapis.com/cvdf-datasets/mnist/'
# sha256 of each file's *uncompressed* bytes, the published MNIST: a mirror may re-compress
# the files (so their .gz sums differ), but the content must not change.
SHA256 = {
  't10k-images-idx3-ubyte': '0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7',
  't10k-labels-idx1-ubyte': 'ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2',
  'train-images-idx3-ubyte': 'ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db',
  'train-labels-idx1-ubyte': '65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5',
}
CACHE_SUBDIR = 'mnist_idx'  # Under download_dir: the verified files, an IDX folder itself.
_PROBE_TIMEOUT_S = 20  # For the one request that checks the server answers at all.


def default_download_dir() -> str:
  """TFDS's download folder: $TFDS_DATA_DIR/downloads, else ~/tensorflow_datasets/downloads."""
  from tensorflow_datasets.core import constants  # Lazy: TFDS is slow to import.

  return os.path.join(os.path.expanduser(constants.DATA_DIR), 'downloads')


def _offline_hint(url: str) -> str:
  return (
    f'Without network access to {url}, point --config.data_dir at a folder holding the four '
    'MNIST IDX files (.gz or raw), or --config.data_url at a mirror that serves them.'
  )


def _check_server(url: str) -> None:
  """One quick request, so that an unreachable server fails in seconds: TFDS's downloader
  retries a refused connection 10 times with exponential back-off (~3.5 minutes)."""
  import requests  # A TFDS dependency; lazy like TFDS.

  try:
    requests.head(url, timeout=_PROBE_TIMEOUT_S, allow_redirects=True)
  except requests.RequestException as e:
    raise DataError(f'cannot reach {url} ({type(e).__name__}). ' + _offline_hint(url)) from e


def download_mnist(url: str = MNIST_URL, download_dir: str = '') -> str:
  """Downloads the four MNIST files once and returns the folder of verified IDX .gz files.

  Files already in download_dir/mnist_idx are used as they are (no request is made). Missing
  ones are fetched from `url` with TFDS's `DownloadManager` (no TensorFlow needed), their
  uncompressed bytes checked against `SHA256`, then moved into that folder. A file that fails
  the check is deleted and raises DataError; so does an unreachable server.
  """
  download_dir = download_dir or default_download_dir()
  folder = os.path.join(download_dir, CACHE_SUBDIR)
  missing = [s for s in SHA256 if not os.path.isfile(os.path.join(folder, s + '.gz'))]
  if not missing:
    return folder
  base = url if url.endswith('/') else url + '/'
  urls = {stem: base + stem + '.gz' for stem in missing}
  _check_server(urls[missing[0]])
  import tensorflow_datasets as tfds  # Lazy: slow to import, and unused for IDX folders.

  if not sys.stderr.isatty():  # Its bars, written to a log file, are lines of escape codes.
    tfds.disable_progress_bar()
  manager = tfds.download.DownloadManager(download_dir=download_dir)
  os.makedirs(folder, exist_ok=True)
  try:
    # One file at a time, each verified and moved into the cache before the next starts: a
    # download that fails part-way leaves only verified files, and none still running in the
    # background to recreate a temp folder after the clean-up below.
    for stem, file_url in urls.items():
      try:
        path = str(manager.download(file_url))
      except Exception as e:  # requests, TFDS's DownloadError, ...: all mean the same here.
        raise _download_error(e, file_url, base) from e
      _verify_and_keep(stem, path, file_url, folder)
  finally:
    _remove_partial_downloads(download_dir)
  return folder


def _download_error(e: Exception, file_url: str, base: str) -> DataError:
  """One sentence for a failed download: the server's HTTP status when it answered one (the
  network worked, the server lacks the file), else the error; the offline way in both."""
  status = re.search(r'HTTP code: (\d+)|(\d{3}) (?:Client|Server) Error', str(e))
  if status:
    code = status.group(1) or status.group(2)
    return DataError(
      f'{file_url}: the server answered HTTP {code}: it does not serve that file (check '
      '--config.data_url). ' + _offline_hint(base)
    )
  first_line = str(e).splitlines()[0][:200] if str(e) else ''
  return DataError(
    f'downloading {file_url} failed ({type(e).__name__}: {first_line}). ' + _offline_hint(base)
  )


def _verify_and_keep(stem: str, path: str, file_url: str, folder: str) -> None:
  """Moves a downloaded file into the cache if its content is the published one; deletes it
  and raises DataError if not."""
  info = path + '.INFO'
  try:
    digest = hashlib.sha256(_read_bytes(path)).hexdigest()
  except DataError:
    digest = 'unreadable gzip'
  if digest != SHA256[stem]:
    for leftover in (path, info):
      if os.path.exists(leftover):
        os.remove(leftover)
    raise DataError(
      f"{file_url}: the downloaded file is not MNIST's {stem}: sha256 of its content "
      f'{digest}, expected {SHA256[stem]}. It was deleted; check --config.data_url.'
    )
  os.replace(path, os.path.join(folder, stem + '.gz'))
  if os.path.exists(info):
    os.remove(info)


def _remove_partial_downloads(download_dir: str) -> None:
  """Deletes the temp folders TFDS leaves behind when a download fails midway."""
  for name in os.listdir(download_dir):
    if '.tmp.' in name:
      shutil.rmtree(os.path.join(download_dir, name), ignore_errors=True)


def get_datasets(data_dir: str = '', data_url: str = MNIST_URL, download_dir: str = '') -> dict:
  """{'train': Split, 'test': Split} from the IDX folder `data_dir`; if it is empty, from the
  files `download_mnist` fetches (once) from `data_url` into `download_dir`."""
  folder = data_dir or download_mnist(data_url, download_dir)
  return {split: load_idx_dir(folder, split) for split in ('train', 'test')}
