"""The trainer's own files in an object store: a fake gs:// bucket (fsspec's in-memory file
system put where etils.epath looks for gs://) receives what a local workdir would."""

import json
import os

import fsspec
from absl.testing import absltest
from etils import epath
from fsspec.implementations.memory import MemoryFileSystem

import metrics
import plots
import preflight

RUN = 'gs://fake-bucket/runs/one'


class FakeBucketTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    for protocol in ('gs', 'gcs'):  # epath asks fsspec for 'gcs'.
      fsspec.register_implementation(protocol, MemoryFileSystem, clobber=True)
    MemoryFileSystem.store.clear()
    MemoryFileSystem.pseudo_dirs[:] = ['']
    self.cwd = self.create_tempdir().full_path
    self.enter_context(_chdir(self.cwd))  # Nothing may land on the local disk instead.

  def tearDown(self):
    self.assertEqual(os.listdir(self.cwd), [])
    super().tearDown()

  def bucket_files(self) -> list[str]:
    return sorted(MemoryFileSystem.store)  # Full gs:// names: the memory FS keeps them.

  def test_workdir_is_created_and_kept_as_given(self):
    self.assertEqual(preflight.prepare_workdir(RUN), RUN)
    self.assertTrue(epath.Path(RUN).is_dir())
    self.assertEqual(self.bucket_files(), [])  # The write test was removed again.
    with preflight.workdir_lock(RUN):  # No lock in an object store; nothing written.
      pass
    self.assertEqual(self.bucket_files(), [])

  def test_json_and_text_files(self):
    metrics.write_json(f'{RUN}/summary.json', {'final_test_accuracy': 0.995})
    self.assertEqual(json.loads(epath.Path(RUN, 'summary.json').read_text()), {
      'final_test_accuracy': 0.995
    })  # fmt: skip
    self.assertEqual(self.bucket_files(), [f'{RUN}/summary.json'])

  def test_metrics_log_writes_resumes_and_cuts_back(self):
    log = metrics.MetricsLog(RUN, 0)
    for epoch in (1, 2, 3):
      log.write({'epoch': epoch, 'test_accuracy': 0.9 + epoch / 100})
    log.close()
    self.assertLen(metrics.read_history(f'{RUN}/metrics.jsonl'), 3)
    resumed = metrics.MetricsLog(RUN, 2)
    self.assertEqual([r['epoch'] for r in resumed.history], [1, 2])
    self.assertEqual(epath.Path(RUN, 'metrics.jsonl').read_text().count('\n'), 2)
    self.assertEqual(self.bucket_files(), [f'{RUN}/metrics.jsonl'])  # No TB.

  def test_a_damaged_tail_is_dropped_as_locally(self):
    epath.Path(RUN).mkdir(parents=True)
    epath.Path(RUN, 'metrics.jsonl').write_text('{"epoch": 1}\n{"epoch": 2, "test_acc')
    self.assertEqual(metrics.read_history(f'{RUN}/metrics.jsonl'), [{'epoch': 1}])

  def test_plots(self):
    history = [
      {'epoch': e, 'train_loss': 1 / e, 'test_loss': 1 / e, 'train_accuracy': 0.9,
       'test_accuracy': 0.99, 'learning_rate': 0.1}
      for e in (1, 2)
    ]  # fmt: skip
    plots.plot_curves(history, f'{RUN}/curves.png')
    self.assertTrue(epath.Path(RUN, 'curves.png').read_bytes().startswith(b'\x89PNG'))


class _chdir:  # contextlib.chdir needs Python 3.11; setup.cfg allows older.
  def __init__(self, path):
    self.path, self.old = path, os.getcwd()

  def __enter__(self):
    os.chdir(self.path)

  def __exit__(self, *exc):
    os.chdir(self.old)


if __name__ == '__main__':
  absltest.main()
