"""What a person reads while a run goes: a few lines on the screen, the rest in a file.

The console (stdout, process 0) shows the config, the data sizes, one
progress line per log period (step, loss, steps/s, ETA) and the evaluation
results. Everything else that logs (Orbax, TFDS, our own detail) goes to
`<workdir>/log.txt` through absl; only warnings and errors also reach stderr.
"""
import logging as std_logging
import os
import sys
from typing import Optional

import jax
from absl import logging

_LOG_NAME = 'log.txt'
# Above this, a CPU run says how long it will take and points at a CPU variant.
CPU_WARNING_SECONDS = 2 * 3600


def log_to_file(workdir: str) -> str:
  """Sends every log record to <workdir>/log.txt; the screen keeps warnings."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, _LOG_NAME)
  root = std_logging.getLogger()
  if not any(getattr(h, '_sbir_jax_file', None) == path for h in root.handlers):
    handler = std_logging.FileHandler(path)
    handler._sbir_jax_file = path
    handler.setFormatter(std_logging.Formatter(
        '%(asctime)s %(levelname).1s %(name)s %(filename)s:%(lineno)d] %(message)s'))
    root.addHandler(handler)
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().setLevel(std_logging.WARNING)
  return path


def say(message: str) -> None:
  """A line for the person at the screen (process 0), also in the log file."""
  logging.info(message)
  if jax.process_index() == 0:
    print(message, file=sys.stdout, flush=True)


def duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'
  if seconds >= 60:
    return f'{seconds // 60}m{seconds % 60:02d}s'
  return f'{seconds}s'


def progress_line(step: int, total: int, scalars: dict, steps_per_second: float) -> str:
  """`step 50/1750  grad_norm 1.2 loss 0.31  0.95 steps/s  ETA 29m49s`."""
  shown = ' '.join(f'{k} {v:.4g}' for k, v in sorted(scalars.items())
                   if k in ('loss', 'grad_norm') or k.endswith('acc'))
  if steps_per_second <= 0:  # The first step: compiled, not timed.
    return f'step {step}/{total}  {shown}  (compiled)'
  eta = (total - step) / steps_per_second
  return (f'step {step}/{total}  {shown}  {steps_per_second:.2f} steps/s  '
          f'ETA {duration(eta)}')


def metrics_line(title: str, metrics: dict) -> str:
  shown = ', '.join(f'{k} {v:.4g}' for k, v in sorted(metrics.items())
                    if not k.endswith(('_ci_low', '_ci_high')))
  return f'{title}: {shown}'


def cpu_budget_warning(total_steps: int, steps_per_second: float,
                       config_arg: Optional[str]) -> Optional[str]:
  """On a CPU backend, a line saying how long a long config will take there."""
  if jax.default_backend() != 'cpu' or steps_per_second <= 0:
    return None
  seconds = total_steps / steps_per_second
  if seconds < CPU_WARNING_SECONDS:
    return None
  path = (config_arg or 'configs/<file>.py').partition(':')[0]
  return (f'On this CPU backend the {total_steps} steps will take about '
          f'{duration(seconds)} (measured over the first steps). A variant sized '
          f'for a CPU: --config={path}:cpu (where the config has one; see README).')
