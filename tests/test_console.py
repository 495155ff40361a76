"""What the console says: progress lines with ETA, and the CPU-budget warning."""
from sbir_jax.core import console


def test_progress_line_has_step_loss_rate_and_eta():
  line = console.progress_line(50, 1750, {'loss': 0.3123, 'grad_norm': 1.5,
                                          'hinge': 0.2}, 0.95)
  assert line.startswith('step 50/1750  grad_norm 1.5 loss 0.3123  0.95 steps/s')
  assert line.endswith('ETA 29m49s')  # 1700 steps / 0.95 steps/s.
  assert 'hinge' not in line  # Task metrics go to TensorBoard, not the screen.
  assert console.progress_line(1, 10, {'loss': 1.0}, 0.0).endswith('(compiled)')


def test_a_long_run_on_cpu_says_how_long_and_names_the_cpu_variant():
  # The paper's Handbag config: 20,000 steps at (say) 0.1 steps/s on this CPU.
  warning = console.cpu_budget_warning(20000, 0.1, 'configs/handbag.py')
  assert warning is not None
  assert 'about 55h33m' in warning and '--config=configs/handbag.py:cpu' in warning
  assert console.cpu_budget_warning(1750, 1.0, 'configs/handbag.py:cpu') is None
