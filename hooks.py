"""Test hooks the crash and preemption tests drive through environment variables; unset (the
default), each costs one comparison.

- S6JAX_PHASE_MARKERS=1: the trainer writes 'S6JAX_PHASE <phase> <epoch>' to stderr as each
  phase of an epoch begins, so that scripts/crash_resume.py can SIGKILL it inside that phase.
- S6JAX_SIGTERM_AT_STEP=N: the process sends itself SIGTERM when its training reaches global
  step N, as a cloud scheduler would.
"""

import os
import signal
import time

import multihost

_PHASE_MARKERS = os.environ.get('S6JAX_PHASE_MARKERS') == '1'
_SIGTERM_AT_STEP = int(os.environ.get('S6JAX_SIGTERM_AT_STEP', '-1'))


def phase_marker(phase: str, epoch: int) -> None:
  """Announces `phase` of `epoch` on stderr when S6JAX_PHASE_MARKERS=1; otherwise nothing."""
  if _PHASE_MARKERS:
    os.write(2, f'S6JAX_PHASE {phase} {epoch}\n'.encode())


def stop_requested(step: int) -> bool:
  """Whether to stop at `step` (multihost.preempted), after the preemption-test hook."""
  if step == _SIGTERM_AT_STEP:
    os.kill(os.getpid(), signal.SIGTERM)
    # A real step gives JAX's preemption notice time to reach every process before the run
    # ends; the tests' steps take milliseconds, and their whole run can end first.
    time.sleep(2)
  return multihost.preempted()
