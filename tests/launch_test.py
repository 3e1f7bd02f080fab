"""scripts/tpu_pod.sh and scripts/slurm.sbatch, with no cloud and no cluster.

Each script runs in a bare environment whose PATH starts with fake `gcloud`, `srun` and
`sbatch`: each records its arguments (one file per call) and exits 0, or fails or hangs when
the test says so. A dry run must print every command and call none of them; a real run against
the fakes must call exactly the commands its dry run printed, and the TPU script must delete
the slice however the run ends.
"""

import os
import shlex
import signal
import subprocess
import tarfile
import time

from absl.testing import absltest

# The repo root, computed here: tests/testutil.py would import JAX, and these tests need none.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_POD = os.path.join(REPO, 'scripts', 'tpu_pod.sh')
SLURM = os.path.join(REPO, 'scripts', 'slurm.sbatch')
GS = 'gs://bucket/s6jax/run1'
# train.py flags that must reach train.py unchanged: a space, a quote, an empty value.
EXTRA = ['--config.seed=3', '--config.note=two words', "--config.tag=it's", '--config.empty=']

FAKE = r"""#!/bin/bash
# A stand-in: records its name and arguments, then fails, hangs or exits 0 as the test says.
n=$(ls "$FAKE_CALLS" | wc -l)
printf '%s\0' "$(basename "$0")" "$@" >"$FAKE_CALLS/$(printf %03d "$n")"
if [[ "$*" == "compute tpus tpu-vm scp "* ]]; then  # What the workers would receive.
  cp "$5" "$FAKE_CALLS/../sent.tgz"
fi
if [ -n "${FAKE_HANG_ON:-}" ] && [[ "$*" == *"$FAKE_HANG_ON"* ]]; then
  # A redirection, not `touch`: while bash waits for a child that exits 0, a Ctrl-C makes it
  # carry on (the child "handled" it), and this fake would then sleep its 30 s.
  : >"$FAKE_CALLS/../hanging"
  exec sleep 30
fi
if [ -n "${FAKE_FAIL_ON:-}" ] && [[ "$*" == *"$FAKE_FAIL_ON"* ]]; then exit 7; fi
exit 0
"""
# sbatch as Slurm runs a job: a copy of the script in a spool folder, started in --chdir.
FAKE_SBATCH = r"""
chdir=$PWD
for a in "$@"; do case $a in --chdir=*) chdir=${a#*=} ;; *) break ;; esac; shift; done
mkdir -p "$FAKE_CALLS/../spool" && cp "$1" "$FAKE_CALLS/../spool/slurm_script"
shift
cd "$chdir" && SLURM_JOB_ID=1 exec bash "$FAKE_CALLS/../spool/slurm_script" "$@"
"""


def _write(path: str, text: str, mode: int = 0o644) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(text)
  os.chmod(path, mode)


class _ScriptTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.tmp = self.create_tempdir().full_path
    self.calls_dir = os.path.join(self.tmp, 'calls')
    os.makedirs(self.calls_dir)
    for name in ('gcloud', 'srun'):
      _write(os.path.join(self.tmp, 'bin', name), FAKE, 0o755)
    _write(os.path.join(self.tmp, 'bin', 'sbatch'), FAKE.replace('exit 0\n', FAKE_SBATCH), 0o755)

  def env(self, **settings: str) -> dict[str, str]:
    """A bare environment (nothing from the caller's but PATH) with the fakes first on PATH."""
    return {
      'PATH': f'{self.tmp}/bin:{os.environ["PATH"]}',
      'HOME': self.tmp,
      'TMPDIR': self.tmp,
      'FAKE_CALLS': self.calls_dir,
      **settings,
    }

  def run_script(self, script: str, *args: str, **settings: str) -> subprocess.CompletedProcess:
    return subprocess.run(
      ['bash', script, *args],
      env=self.env(**settings),
      cwd=self.tmp,
      capture_output=True,
      text=True,
      timeout=30,
    )

  def calls(self) -> list[list[str]]:
    """Every call of a fake, in order: [program, arg, ...]."""
    out = []
    for name in sorted(os.listdir(self.calls_dir)):
      with open(os.path.join(self.calls_dir, name)) as f:
        out.append(f.read().split('\0')[:-1])
    return out

  def dry_run(self, script: str, *args: str, **settings: str) -> list[list[str]]:
    """The dry run's commands, each line split as a shell would; fails if anything ran."""
    proc = self.run_script(script, *args, **settings)
    self.assertEqual(proc.returncode, 0, proc.stderr)
    self.assertEqual(self.calls(), [], 'a dry run called gcloud, srun or sbatch')
    return [shlex.split(line) for line in proc.stdout.splitlines()]

  def assert_fails_in_one_line(self, proc: subprocess.CompletedProcess, prog: str, text: str):
    self.assertNotEqual(proc.returncode, 0)
    self.assertEqual(proc.stdout, '')
    lines = proc.stderr.splitlines()
    self.assertLen(lines, 1, proc.stderr)
    self.assertTrue(lines[0].startswith(f'{prog}: error: '), lines[0])
    self.assertIn(text, lines[0])
    self.assertEqual(self.calls(), [])


def _step(argv: list[str]) -> str:
  """Which step a tpu_pod.sh command is: pack, create, scp, ssh, delete or rm."""
  if argv[:4] == ['gcloud', 'compute', 'tpus', 'tpu-vm']:
    return argv[4]
  return {'git': 'pack', 'rm': 'rm'}[argv[0]]


def _option(argv: list[str], name: str) -> str:
  (value,) = [a.split('=', 1)[1] for a in argv if a.startswith(f'--{name}=')]
  return value


def _remote_train(ssh: list[str]) -> list[str]:
  """train.py's command line inside an ssh --command, after its `cd s6jax &&`."""
  remote = shlex.split(_option(ssh, 'command'))
  assert remote[:3] == ['cd', 's6jax', '&&'], remote
  return remote[3:]


TPU_SETTINGS = dict(WORKDIR=GS, DATA_DIR='/data/mnist idx', TRAIN_ARGS='--config.num_epochs=2')
TRAIN = [
  '.venv/bin/python',
  'train.py',
  '--config=configs/mnist.py',
  f'--workdir={GS}',
  '--distributed=auto',
  '--config.data_dir=/data/mnist idx',
  '--config.num_epochs=2',
  *EXTRA,
]


class TpuPodDryRunTest(_ScriptTest):
  def test_pack_create_copy_install_train_delete_in_order(self):
    cmds = self.dry_run(TPU_POD, '--dry-run', '--name=pod-a', '--zone=europe-west4-a', WORKDIR=GS)
    self.assertEqual(
      [_step(c) for c in cmds], ['pack', 'create', 'scp', 'ssh', 'ssh', 'delete', 'rm']
    )
    pack, create, scp, setup, train, delete, rm = cmds
    for c in (create, scp, setup, train, delete):
      self.assertEqual(_option(c, 'zone'), 'europe-west4-a')
    for c in (create, setup, train, delete):
      self.assertEqual(c[5], 'pod-a')
    self.assertEqual(_option(create, 'accelerator-type'), 'v4-16')
    self.assertEqual(_option(create, 'version'), 'tpu-ubuntu2204-base')
    for c in (scp, setup, train):
      self.assertEqual(_option(c, 'worker'), 'all')
    tarball = pack[pack.index('-czf') + 1]
    self.assertEqual(scp[5:7], [tarball, 'pod-a:s6jax.tgz'])
    self.assertEqual(rm, ['rm', '-f', tarball])
    self.assertIn('--quiet', delete)  # No prompt: the delete runs unattended, also on failure.

  def test_train_gets_the_gs_workdir_distributed_auto_and_extra_flags_intact(self):
    cmds = self.dry_run(TPU_POD, '--', *EXTRA, DRY_RUN='1', **TPU_SETTINGS)
    ssh = [c for c in cmds if _step(c) == 'ssh']
    self.assertEqual(_remote_train(ssh[1]), TRAIN)

  def test_setup_makes_a_venv_and_installs_the_package_with_gcs_and_jax_tpu(self):
    cmds = self.dry_run(TPU_POD, '--dry-run', WORKDIR=GS)
    setup = shlex.split(_option(cmds[3], 'command'))
    self.assertIn('python3 -m venv .venv', ' '.join(setup))
    pip = ['.venv/bin/python', '-m', 'pip', 'install', '-q', '.[gcs]', 'jax[tpu]']
    self.assertEqual(setup[-len(pip) :], pip)

  def test_flags_win_over_the_environment(self):
    cmds = self.dry_run(
      TPU_POD,
      '--dry-run',
      '--accelerator=v5litepod-16',
      f'--workdir={GS}/b',
      '--config=configs/tiny.py',
      WORKDIR=GS,
      ACCELERATOR='v4-32',
      PROJECT='my-project',
    )
    self.assertEqual(_option(cmds[1], 'accelerator-type'), 'v5litepod-16')
    self.assertEqual(_option(cmds[1], 'version'), 'v2-alpha-tpuv5-lite')
    self.assertEqual(_option(cmds[1], 'project'), 'my-project')
    self.assertEqual(_remote_train(cmds[4])[2:4], ['--config=configs/tiny.py', f'--workdir={GS}/b'])

  def test_keep_prints_no_delete_and_says_how(self):
    proc = self.run_script(TPU_POD, '--dry-run', '--keep', WORKDIR=GS)
    self.assertEqual(proc.returncode, 0, proc.stderr)
    steps = [_step(shlex.split(line)) for line in proc.stdout.splitlines()]
    self.assertEqual(steps, ['pack', 'create', 'scp', 'ssh', 'ssh', 'rm'])
    self.assertIn('gcloud compute tpus tpu-vm delete s6jax-pod --zone=us-central2-b', proc.stderr)
    self.assertEqual(self.calls(), [])

  def test_missing_or_bad_settings_fail_in_one_line(self):
    cases = [
      ({}, 'set WORKDIR'),
      ({'WORKDIR': '/tmp/run'}, "not '/tmp/run'"),
      ({'WORKDIR': 'gs://'}, 'gs:// folder'),
      ({'WORKDIR': GS, 'TPU_NAME': 'My_TPU'}, "TPU name 'My_TPU'"),
      ({'WORKDIR': GS, 'ACCELERATOR': 'x-8'}, 'set RUNTIME'),
      ({'WORKDIR': GS, 'CONFIG': 'configs/nope.py'}, 'configs/nope.py'),
    ]
    for settings, text in cases:
      with self.subTest(settings=settings):
        proc = self.run_script(TPU_POD, '--dry-run', **settings)
        self.assert_fails_in_one_line(proc, 'tpu_pod.sh', text)
    proc = self.run_script(TPU_POD, '--dry-run', '--config.seed=3', WORKDIR=GS)
    self.assert_fails_in_one_line(proc, 'tpu_pod.sh', "unknown option '--config.seed=3'")

  def test_help(self):
    proc = self.run_script(TPU_POD, '--help')
    self.assertEqual(proc.returncode, 0)
    self.assertTrue(proc.stdout.startswith('usage: bash scripts/tpu_pod.sh'))
    self.assertIn('--dry-run', proc.stdout)
    self.assertEqual(self.calls(), [])


class TpuPodRunTest(_ScriptTest):
  """Real runs, against the fake gcloud."""

  def gcloud_calls(self) -> list[list[str]]:
    return [c for c in self.calls() if c[0] == 'gcloud']

  def test_runs_what_the_dry_run_printed_sends_the_checkout_and_deletes_the_slice(self):
    printed = self.dry_run(TPU_POD, '--dry-run', '--', *EXTRA, **TPU_SETTINGS)
    proc = self.run_script(TPU_POD, '--', *EXTRA, **TPU_SETTINGS)
    self.assertEqual(proc.returncode, 0, proc.stderr)
    self.assertEqual(self.gcloud_calls(), [c for c in printed if c[0] == 'gcloud'])
    self.assertFalse(os.path.exists(f'{self.tmp}/tpu_pod-s6jax-pod.tgz'), 'archive left behind')
    with tarfile.open(f'{self.tmp}/sent.tgz') as tar:  # What the workers got.
      names = tar.getnames()
    for name in ('train.py', 'setup.cfg', 'configs/mnist.py', 'scripts/tpu_pod.sh'):
      self.assertIn(name, names)
    self.assertFalse([n for n in names if n.startswith(('.venv/', '.git/', 'workdirs/'))])

  def test_remote_command_gives_train_py_the_flags_intact(self):
    proc = self.run_script(TPU_POD, '--', *EXTRA, **TPU_SETTINGS)
    self.assertEqual(proc.returncode, 0, proc.stderr)
    command = _option(self.gcloud_calls()[3], 'command')
    # The worker's shell, played by bash here, with a python that records its arguments.
    _write(f'{self.tmp}/home/s6jax/.venv/bin/python', '#!/bin/bash\nprintf "%s\\0" "$@"\n', 0o755)
    out = subprocess.run(
      ['bash', '-c', command], cwd=f'{self.tmp}/home', capture_output=True, text=True, check=True
    ).stdout
    self.assertEqual(out.split('\0')[:-1], TRAIN[1:])

  def test_a_failing_step_still_deletes_the_slice(self):
    for step in ('scp', 'python3 -m venv', 'train.py'):
      with self.subTest(step=step):
        for name in os.listdir(self.calls_dir):
          os.remove(os.path.join(self.calls_dir, name))
        proc = self.run_script(TPU_POD, WORKDIR=GS, FAKE_FAIL_ON=step)
        self.assertEqual(proc.returncode, 7, proc.stderr)
        calls = self.gcloud_calls()
        self.assertEqual(_step(calls[-1]), 'delete')
        self.assertLen([c for c in calls if _step(c) == 'delete'], 1)

  def test_ctrl_c_during_training_deletes_the_slice(self):
    def as_from_a_terminal():
      # Its own process group, with SIGINT at its default: a suite started in the background
      # by a shell without job control inherits SIGINT ignored, and bash cannot trap a signal
      # that was ignored when it started. A terminal's Ctrl-C reaches neither case.
      os.setsid()
      signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(
      ['bash', TPU_POD],
      env=self.env(WORKDIR=GS, FAKE_HANG_ON='train.py'),
      cwd=self.tmp,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      preexec_fn=as_from_a_terminal,
    )
    deadline = time.monotonic() + 60  # Generous: a loaded 2-core CI machine is slow to start.
    while not os.path.exists(f'{self.tmp}/hanging') and time.monotonic() < deadline:
      time.sleep(0.01)
    self.assertTrue(os.path.exists(f'{self.tmp}/hanging'), 'training never started')
    os.killpg(proc.pid, signal.SIGINT)  # As Ctrl-C: the whole foreground process group.
    _, err = proc.communicate(timeout=60)
    self.assertEqual(proc.returncode, 130, err)
    self.assertEqual([_step(c) for c in self.gcloud_calls()][-2:], ['ssh', 'delete'])

  def test_a_failed_create_deletes_nothing_and_says_how(self):
    # The name may be another run's slice: only one this run created is deleted.
    proc = self.run_script(TPU_POD, WORKDIR=GS, FAKE_FAIL_ON='create')
    self.assertEqual(proc.returncode, 7)
    self.assertEqual([_step(c) for c in self.gcloud_calls()], ['create'])
    self.assertIn('gcloud compute tpus tpu-vm delete s6jax-pod', proc.stderr)

  def test_keep_leaves_the_slice(self):
    proc = self.run_script(TPU_POD, '--keep', WORKDIR=GS)
    self.assertEqual(proc.returncode, 0, proc.stderr)
    self.assertNotIn('delete', [_step(c) for c in self.gcloud_calls()])


SLURM_SETTINGS = dict(WORKDIR='/shared/runs/mnist1', DATA_DIR='/shared/mnist', TRAIN_ARGS='--x=1')


class SlurmTest(_ScriptTest):
  def srun_expected(self, python: str) -> list[str]:
    return [
      'srun',
      f'--chdir={REPO}',
      '--kill-on-bad-exit=1',
      'env',
      'JAX_LOCAL_DEVICE_IDS=0',
      python,
      'train.py',
      '--config=configs/mnist.py',
      '--workdir=/shared/runs/mnist1',
      '--distributed=auto',
      '--config.data_dir=/shared/mnist',
      '--x=1',
      *EXTRA,
    ]

  def test_dry_run_prints_the_sbatch_line_then_the_srun_line(self):
    sbatch, srun = self.dry_run(SLURM, *EXTRA, DRY_RUN='1', **SLURM_SETTINGS)
    self.assertEqual(srun, self.srun_expected(f'{REPO}/.venv/bin/python'))
    i = sbatch.index('sbatch')
    self.assertEqual(sbatch[i:], ['sbatch', f'--chdir={REPO}', SLURM, *EXTRA])
    settings = dict(a.split('=', 1) for a in sbatch[:i])
    self.assertLessEqual(SLURM_SETTINGS.items(), settings.items())

  def test_the_printed_sbatch_line_submits_a_job_that_runs_the_printed_srun(self):
    python = f'{self.tmp}/my env/bin/python'
    lines = self.run_script(SLURM, *EXTRA, DRY_RUN='1', PYTHON=python, **SLURM_SETTINGS)
    sbatch_line = lines.stdout.splitlines()[0]
    proc = subprocess.run(
      ['bash', '-c', sbatch_line], env=self.env(), cwd=self.tmp, capture_output=True, text=True
    )
    self.assertEqual(proc.returncode, 0, proc.stderr)
    calls = self.calls()
    self.assertEqual([c[0] for c in calls], ['sbatch', 'srun'])
    self.assertEqual(calls[1], self.srun_expected(python))

  def test_headers_ask_for_one_process_per_gpu(self):
    with open(SLURM) as f:
      lines = f.read().splitlines()
    first_command = next(i for i, line in enumerate(lines) if not line.startswith('#'))
    at = [i for i, line in enumerate(lines) if line.startswith('#SBATCH')]
    self.assertLess(max(at), first_command)  # sbatch reads #SBATCH lines only before it.
    headers = [lines[i].split(None, 1)[1] for i in at]
    for header in ('--nodes=2', '--ntasks-per-node=8', '--gpus-per-task=1'):
      self.assertIn(header, headers)

  def test_missing_or_bad_workdir_fails_in_one_line(self):
    for settings, text in (({}, 'set WORKDIR'), ({'WORKDIR': GS}, 'shared file system')):
      with self.subTest(settings=settings):
        proc = self.run_script(SLURM, DRY_RUN='1', **settings)
        self.assert_fails_in_one_line(proc, 'slurm.sbatch', text)

  def test_outside_a_job_it_runs_nothing(self):
    proc = self.run_script(SLURM, **SLURM_SETTINGS)
    self.assert_fails_in_one_line(proc, 'slurm.sbatch', 'not inside a Slurm job')

  def test_inside_a_job_it_runs_the_printed_srun(self):
    (_, printed) = self.dry_run(SLURM, *EXTRA, DRY_RUN='1', **SLURM_SETTINGS)
    proc = self.run_script(SLURM, *EXTRA, SLURM_JOB_ID='42', **SLURM_SETTINGS)
    self.assertEqual(proc.returncode, 0, proc.stderr)
    self.assertEqual(self.calls(), [printed])


class SyntaxTest(absltest.TestCase):
  def test_both_scripts_parse(self):
    for script in (TPU_POD, SLURM):
      with self.subTest(script=os.path.basename(script)):
        proc = subprocess.run(['bash', '-n', script], capture_output=True, text=True)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stderr, '')


if __name__ == '__main__':
  absltest.main()
