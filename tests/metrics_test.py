"""metrics.py: the atomic writer, the metrics log, the first epoch at the target, the summary."""

import json
import os
import time

from absl.testing import absltest

import metrics


class WriteAtomicallyTest(absltest.TestCase):
  def test_replaces_the_file_whole(self):
    path = os.path.join(self.create_tempdir().full_path, 'out.json')
    metrics.write_json(path, {'a': 1})
    metrics.write_json(path, {'a': 2})
    with open(path) as f:
      self.assertEqual(json.load(f), {'a': 2})
    self.assertEqual(os.listdir(os.path.dirname(path)), ['out.json'])
    self.assertEqual(os.stat(path).st_mode & 0o777, 0o644)

  def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(self):
    folder = self.create_tempdir().full_path
    path = os.path.join(folder, 'out.txt')
    metrics.write_text(path, 'good')

    def disk_full(tmp):
      with open(tmp, 'w') as f:
        f.write('half')
      raise OSError(28, 'No space left on device')

    def killed(tmp):
      with open(tmp, 'w') as f:
        f.write('half')
      raise KeyboardInterrupt

    for failing_write, error in ((disk_full, OSError), (killed, KeyboardInterrupt)):
      with self.assertRaises(error):
        metrics.write_atomically(path, failing_write)
      with open(path) as f:
        self.assertEqual(f.read(), 'good')
      self.assertEqual(os.listdir(folder), ['out.txt'])

  def test_two_writers_never_share_a_temp_file(self):
    folder = self.create_tempdir().full_path
    path = os.path.join(folder, 'out.txt')
    seen = []
    metrics.write_atomically(path, seen.append)
    metrics.write_atomically(path, seen.append)
    self.assertLen(set(seen), 2)


class MetricsLogTest(absltest.TestCase):
  def test_resume_drops_the_epochs_after_the_checkpoint(self):
    workdir = self.create_tempdir().full_path
    log = metrics.MetricsLog(workdir, 0)
    for epoch in (1, 2, 3):
      log.write({'epoch': epoch, 'test_accuracy': 0.9})
    log.close()
    resumed = metrics.MetricsLog(workdir, 2)
    resumed.close()
    self.assertEqual([r['epoch'] for r in resumed.history], [1, 2])
    self.assertEqual(metrics.read_history(resumed.path), resumed.history)


class FirstAtTargetTest(absltest.TestCase):
  def test_first_epoch_and_training_time_up_to_it(self):
    history = [
      {'epoch': 1, 'train_seconds': 2.0, 'test_accuracy': 0.990},
      {'epoch': 2, 'train_seconds': 3.0, 'test_accuracy': 0.995},
      {'epoch': 3, 'train_seconds': 4.0, 'test_accuracy': 0.991},
      {'epoch': 4, 'train_seconds': 5.0, 'test_accuracy': 0.996},
    ]
    self.assertEqual(metrics.first_at_target(history, 0.994), (2, 5.0))
    self.assertEqual(metrics.first_at_target(history, 0.996), (4, 14.0))
    self.assertEqual(metrics.first_at_target(history, 0.999), (None, None))


class SummarizeTest(absltest.TestCase):
  def test_accuracy_over_the_epochs_and_the_run_fields(self):
    history = [
      {'epoch': e, 'train_seconds': 1.5, 'test_accuracy': a}
      for e, a in enumerate([0.990, 0.996, 0.993, 0.995], start=1)
    ]
    s = metrics.summarize(history, 0.995, params=7, arch='x', seed=3, compile_seconds=2.0)
    self.assertEqual(s['epochs'], 4)
    self.assertEqual((s['best_test_accuracy'], s['best_epoch']), (0.996, 2))
    self.assertAlmostEqual(s['mean_last3_test_accuracy'], (0.996 + 0.993 + 0.995) / 3)
    self.assertEqual(s['min_last3_test_accuracy'], 0.993)
    self.assertEqual((s['first_epoch_at_target'], s['train_seconds_to_target']), (2, 3.0))
    self.assertEqual(s['train_seconds'], 6.0)
    self.assertEqual((s['params'], s['arch'], s['seed'], s['compile_seconds']), (7, 'x', 3, 2.0))
    self.assertEqual(s['target_accuracy'], metrics.TARGET_ACCURACY)

  def test_no_epoch_yet(self):
    s = metrics.summarize([], 0.1, params=1, arch='x', seed=0)
    self.assertIsNone(s['best_test_accuracy'])
    self.assertIsNone(s['first_epoch_at_target'])
    self.assertIsNone(s['seconds_to_target'])

  def test_seconds_to_target_is_the_wall_clock_of_the_first_epoch_at_it(self):
    history = [
      {'epoch': e, 'train_seconds': 1.5, 'test_accuracy': a, 'wall_seconds': w}
      for e, a, w in ((1, 0.990, 30.0), (2, 0.996, 34.5), (3, 0.997, 39.0))
    ]
    s = metrics.summarize(history, 0.997, params=1, arch='x', seed=0)
    self.assertEqual((s['seconds_to_target'], s['train_seconds_to_target']), (34.5, 3.0))
    never = metrics.summarize(history[:1], 0.99, params=1, arch='x', seed=0)
    self.assertIsNone(never['seconds_to_target'])
    older = [{k: v for k, v in r.items() if k != 'wall_seconds'} for r in history]
    self.assertIsNone(
      metrics.summarize(older, 0.997, params=1, arch='x', seed=0)['seconds_to_target']
    )


class WallSecondsTest(absltest.TestCase):
  def test_the_process_start_is_before_its_imports(self):
    import time

    import psutil

    start = metrics.process_start_time()
    self.assertLess(start, metrics._IMPORTED)
    self.assertAlmostEqual(start, psutil.Process().create_time(), delta=1.5)
    self.assertLess(time.time() - start, 24 * 3600)

  def test_a_resumed_run_adds_the_seconds_of_its_earlier_processes(self):
    workdir = self.create_tempdir().full_path
    log = metrics.MetricsLog(workdir, 0)
    first = {'epoch': 1, 'test_accuracy': 0.9}
    log.stamp(first)
    log.write(first)
    log.close()
    self.assertGreater(first['wall_seconds'], 0)
    resumed = metrics.MetricsLog(workdir, 1)
    resumed.started = time.time() - 50.0  # A later process, started 50 s ago.
    second = {'epoch': 2}
    resumed.stamp(second)
    resumed.close()
    # Its own 50 s plus epoch 1's wall seconds, not the seconds since this process started.
    self.assertBetween(
      second['wall_seconds'], first['wall_seconds'] + 50, first['wall_seconds'] + 60
    )


class RowTest(absltest.TestCase):
  """A seed-table row names the hardware, and for CPU devices the CPU model and its cores."""

  SUMMARY = {
    'seed': 3, 'params': 7_786, 'best_test_accuracy': 0.9957, 'final_test_accuracy': 0.9954,
    'mean_last3_test_accuracy': 0.9953, 'min_last3_test_accuracy': 0.9951,
    'first_epoch_at_target': 5, 'epochs': 15, 'train_seconds': 1185.2, 'compile_seconds': 17.7,
    'device_count': 1, 'device_kind': 'cpu',
  }  # fmt: skip

  def test_cpu_runs_name_the_cpu(self):
    s = {**self.SUMMARY, 'cpu_model': 'Intel(R) Xeon(R) Processor', 'cpu_cores': 2}
    self.assertEqual(
      metrics.row(s),
      '| 3 | 7,786 | 99.57 | 99.54 | 99.53 | 99.51 | 5 | 15 | 1185 | 18 '
      '| 1× cpu (Intel(R) Xeon(R) Processor, 2 cores) |',
    )

  def test_the_wall_column_shows_seconds_to_target_or_a_dash(self):
    s = {**self.SUMMARY, 'seconds_to_target': 212.4}
    self.assertTrue(metrics.has_wall_seconds([self.SUMMARY, s]))
    self.assertFalse(metrics.has_wall_seconds([self.SUMMARY]))
    self.assertEqual(metrics.table_row(s, wall=True), metrics.row(s) + ' 212 |')
    self.assertEqual(metrics.table_row(self.SUMMARY, wall=True), metrics.row(self.SUMMARY) + ' — |')
    self.assertEqual(metrics.table_row(s, wall=False), metrics.row(s))
    columns = [line.count('|') for line in metrics.WALL_HEADER.splitlines()]
    self.assertEqual(columns, [metrics.table_row(s, wall=True).count('|')] * 2)

  def test_accelerator_runs_and_older_summaries_name_the_devices_only(self):
    gpu = {**self.SUMMARY, 'device_kind': 'NVIDIA H200', 'cpu_model': 'AMD EPYC', 'cpu_cores': 16}
    self.assertTrue(metrics.row(gpu).endswith('| 1× NVIDIA H200 |'))
    self.assertTrue(metrics.row(self.SUMMARY).endswith('| 1× cpu |'))


if __name__ == '__main__':
  absltest.main()
