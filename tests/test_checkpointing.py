"""Checkpoint selection and layout errors, on toy states (no training)."""
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from etils import epath

from sbir_jax.core import checkpointing
from sbir_jax.core import warm_start
from sbir_jax.core.state import TrainState


def _state(value: float) -> TrainState:
  params = {'dense': {'kernel': jnp.full((2, 3), value)}}
  return TrainState.create(params, {'batch_stats': {'mean': jnp.zeros(3)}}, optax.sgd(0.1))


def _save(workdir, step, value, metrics, selection_metric):
  state = _state(value).replace(step=jnp.asarray(step, jnp.int32))
  manager = checkpointing.make_manager(str(workdir), keep_latest=1)
  checkpointing.save(manager, state, metrics, selection_metric)
  manager.wait_until_finished()


@pytest.mark.parametrize('metric', ['val_recall@1', 'val_mAP@all', 'val_acc@1'])
def test_warm_start_picks_the_best_step_of_any_task(tmp_path, metric):
  # A composed or zero-shot run selects on its own metric: init_from reads the
  # selection value saved with each checkpoint (it used to assume val_acc@1).
  for step, value, score in ((1, 1.0, 50.0), (2, 2.0, 70.0), (3, 3.0, 60.0)):
    _save(tmp_path, step, value, {metric: score}, metric)
  params = warm_start.load_params(str(tmp_path))
  np.testing.assert_array_equal(params['dense']['kernel'], np.full((2, 3), 2.0))
  manager = checkpointing.make_manager(str(tmp_path), read_only=True)
  assert checkpointing.resolve_step(manager, 'best') == 2
  assert manager.metrics(2)[checkpointing.SELECTION_KEY] == 70.0


def test_a_checkpoint_of_the_older_state_layout_names_the_fix(tmp_path):
  # Before model_state: {'step', 'params', 'opt_state'} only.
  old = {'step': np.int32(4), 'params': {'dense': {'kernel': np.ones((2, 3), np.float32)}},
         'opt_state': [{}, {}]}
  manager = checkpointing.make_manager(str(tmp_path))
  manager.save(4, args=ocp.args.StandardSave(old), force=True)
  manager.wait_until_finished()
  with pytest.raises(checkpointing.CheckpointError, match='older layout of the train state'):
    checkpointing.restore(manager, 4, _state(0.0))
  assert (epath.Path(manager.directory) / '4').exists()  # Nothing deleted.
