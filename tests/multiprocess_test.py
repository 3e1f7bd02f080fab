"""train.py as several local processes (JAX's multi-controller model over gloo on the CPU).

A job of N processes x M devices must train exactly what one process with N*M devices trains;
a failed or killed process must end the others within seconds; SIGTERM must stop every process
at one step with a checkpoint that a rerun resumes to the same numbers.
"""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

from absl.testing import absltest, parameterized

import metrics
from tests import testutil

EPOCHS = 3  # 64 images in batches of 16: 4 steps an epoch, one step per call.
# A tenth of the recipe's peak learning rate. At 0.1 these 12 steps on 64 random images are
# chaotic: the 1e-7 rounding of a cross-process all-reduce (another summation order than one
# process's) grew to 1e-4 in the epoch-3 loss on an Intel Xeon, where an AMD EPYC had stayed
# under 1e-5. At 0.01 the layouts stay within 1e-7 on the Xeon: the 1e-5 tolerance then tests
# the sharding, not the CPU's rounding.
LEARNING_RATE = 0.01
TIMING = metrics.TIMING_FIELDS


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def read_lines(workdir: str) -> list[dict]:
  """metrics.jsonl without its timings."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


class Job:
  """train.py started as `processes` local processes of `devices` CPU devices each."""

  def __init__(self, workdir, data_dir, processes, devices, env_of=None, args_of=None):
    port = free_port()
    self.logs = [os.path.join(workdir + '.logs', f'process{i}.txt') for i in range(processes)]
    os.makedirs(workdir + '.logs', exist_ok=True)
    self.procs = []
    for i in range(processes):
      cmd = [
        sys.executable, os.path.join(testutil.REPO_ROOT, 'train.py'), '--config=configs/gap.py',
        f'--workdir={workdir}', f'--config.data_dir={data_dir}', f'--config.num_epochs={EPOCHS}',
        '--config.batch_size=16', '--config.eval_batch_size=16', '--config.steps_per_call=1',
        '--config.plots=false', f'--cpu_devices={devices}',
        f'--config.learning_rate={LEARNING_RATE}',
      ]  # fmt: skip
      if processes > 1:
        cmd += [f'--coordinator_address=localhost:{port}', f'--num_processes={processes}']
        cmd += [f'--process_id={i}']
      cmd += (args_of or {}).get(i, [])
      env = {**os.environ, 'S6JAX_PHASE_MARKERS': '1', **(env_of or {}).get(i, {})}
      with open(self.logs[i], 'w') as log:
        self.procs.append(
          subprocess.Popen(cmd, stdout=log, stderr=log, env=env, cwd=testutil.REPO_ROOT)
        )

  def wait(self, timeout=300) -> list[int]:
    return [p.wait(timeout) for p in self.procs]

  def log(self, i) -> str:
    with open(self.logs[i]) as f:
      return f.read()

  def errors(self, i) -> list[str]:
    """The lines of process i's output that are not logging, markers or the model table.

    Blank lines are left out too: gloo logs from its own C++ threads into the same file, and a
    line written between one of its messages and that message's newline leaves the newline
    alone on a line.
    """
    skip = ('I1', 'W1', 'E1', 'F1', 'S6JAX_PHASE', '|', '[Gloo]')
    lines = self.log(i).splitlines()
    return [line for line in lines if line.strip() and not line.startswith(skip)]

  def wait_for(self, i, text, timeout=300):
    deadline = time.time() + timeout
    while text not in self.log(i):
      if time.time() > deadline or self.procs[i].poll() is not None:
        raise AssertionError(f'process {i} never printed {text!r}:\n{self.log(i)[-3000:]}')
      time.sleep(0.05)


class MultiProcessTest(parameterized.TestCase):
  runs: dict = {}

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = testutil.fresh_dir('multiprocess')
    cls.data_dir = testutil.write_idx_dir(os.path.join(cls.root, 'idx'), 64, 16)

  def run_job(self, name, processes, devices, **kwargs) -> tuple[str, Job]:
    workdir = os.path.join(self.root, name)
    job = Job(workdir, self.data_dir, processes, devices, **kwargs)
    codes = job.wait()
    for i, code in enumerate(codes):
      self.assertEqual(code, 0, f'process {i} of {name}:\n{job.log(i)[-3000:]}')
    return workdir, job

  def reference(self, processes, devices) -> list[dict]:
    """metrics.jsonl of an uninterrupted run of this layout (run once per class)."""
    key = (processes, devices)
    if key not in self.runs:
      self.runs[key] = read_lines(self.run_job(f'ref{processes}x{devices}', *key)[0])
    return self.runs[key]

  def assert_same_training(self, lines, expected):
    """One line per epoch; every loss to 1e-5 relative; the same accuracies and steps."""
    self.assertLen(lines, EPOCHS)
    worst = 0.0
    for line, want in zip(lines, expected, strict=True):
      self.assertEqual(line.keys(), want.keys())
      for k, v in want.items():
        if 'loss' in k or k == 'learning_rate':
          self.assertAlmostEqual(line[k] / v, 1.0, delta=1e-5, msg=f'epoch {want["epoch"]} {k}')
          worst = max(worst, abs(line[k] / v - 1))
        else:
          self.assertEqual(line[k], v, f'epoch {want["epoch"]} {k}')
    print(f'{self.id().split(".")[-1]}: largest relative loss difference {worst:.2e}')

  @parameterized.named_parameters(
    ('2_processes_x_1_device', 2, 1),
    ('2_processes_x_2_devices', 2, 2),
    ('4_processes_x_1_device', 4, 1),
  )
  def test_a_job_trains_what_one_process_with_its_devices_trains(self, processes, devices):
    workdir, job = self.run_job(f'{processes}x{devices}', processes, devices)
    self.assert_same_training(read_lines(workdir), self.reference(1, processes * devices))
    self.assertEqual(json.loads(open(os.path.join(workdir, 'summary.json')).read())['epochs'], 3)
    for i in range(processes):
      self.assertEqual(job.errors(i), [], f'process {i} printed more than logs')

  def test_a_killed_process_ends_the_others_and_a_rerun_resumes(self):
    workdir = os.path.join(self.root, 'killed')
    job = Job(workdir, self.data_dir, 2, 1)
    job.wait_for(1, 'S6JAX_PHASE train 2')
    job.procs[1].send_signal(signal.SIGKILL)
    start = time.time()
    code = job.procs[0].wait(120)
    seconds = time.time() - start
    self.assertNotEqual(code, 0)
    self.assertLess(seconds, 30, 'the survivor took too long to exit')
    errors = job.errors(0)
    self.assertLen(errors, 1, errors)
    self.assertRegex(errors[0], r'^error: process 0 of 2: .*Rerun every process')
    print(f'survivor exited {seconds:.1f} s after its peer was killed: {errors[0][:200]}')
    rerun, job = self.run_job('killed', 2, 1)
    self.assertIn('Resuming from the checkpoint of epoch 1', job.log(0))
    self.assert_same_training(read_lines(rerun), self.reference(2, 1))

  def test_an_error_on_one_process_ends_them_all_with_its_message(self):
    workdir = os.path.join(self.root, 'bad_data')
    missing = os.path.join(self.root, 'no_such_folder')
    job = Job(workdir, self.data_dir, 2, 1, args_of={1: [f'--config.data_dir={missing}']})
    start = time.time()
    codes = job.wait(120)
    self.assertLess(time.time() - start, 60)
    self.assertEqual(codes, [1, 1], [job.log(0)[-2000:], job.log(1)[-2000:]])
    self.assertEqual(
      job.errors(1), [f"error: config.data_dir='{missing}' is not an existing folder."]
    )
    self.assertEqual(
      job.errors(0),
      [f"error: process 0 stops: process 1 failed: config.data_dir='{missing}' is not an "
       'existing folder.'],
    )  # fmt: skip

  def test_sigterm_one_process_saves_and_a_rerun_finishes_identically(self):
    workdir = os.path.join(self.root, 'sigterm2')
    step = random.Random().randint(1, 4)  # The first epoch: the stop comes a few steps later.
    job = Job(workdir, self.data_dir, 2, 1, env_of={1: {'S6JAX_SIGTERM_AT_STEP': str(step)}})
    self.assertEqual(job.wait(), [75, 75], f'SIGTERM at step {step}: {job.log(0)[-2000:]}')
    self.assertIn('stopped by SIGTERM', job.errors(0)[-1])
    rerun, _ = self.run_job('sigterm2', 2, 1)
    self.assert_same_training(read_lines(rerun), self.reference(2, 1))

  def test_sigterm_mid_epoch_then_rerun_is_bit_identical_in_one_process(self):
    workdir = os.path.join(self.root, 'sigterm1')
    step = random.Random().choice([5, 6, 7, 9, 10, 11])  # Inside epoch 2 or 3.
    job = Job(workdir, self.data_dir, 1, 2, env_of={0: {'S6JAX_SIGTERM_AT_STEP': str(step)}})
    self.assertEqual(job.wait(), [75], f'SIGTERM at step {step}: {job.log(0)[-2000:]}')
    epoch, done = (step - 1) // 4 + 1, (step - 1) % 4 + 1
    self.assertEqual(
      job.errors(0)[-1],
      f'stopped by SIGTERM after step {done} of 4 in epoch {epoch}, and saved there '
      f'({workdir}/preempted); rerun the same command to resume from that step.',
    )
    rerun, job = self.run_job('sigterm1', 1, 2)
    self.assertIn(f'Resuming epoch {epoch} after its step {done}', job.log(0))
    self.assertEqual(read_lines(rerun), self.reference(1, 2))  # Exactly: bit for bit.
    self.assertEqual(os.listdir(os.path.join(rerun, 'preempted')), [])


if __name__ == '__main__':
  absltest.main()
