"""The train state: what is trained, what is carried, and the optimizer's memory.

`params` are the variables the optimizer moves. `model_state` holds every
other variable collection of the model (BatchNorm statistics, frozen
ImageNet constants): the loss may return a new one (running averages), but
it is never differentiated, decayed or optimised.
"""
from typing import Any, Callable

import flax.struct
import jax
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, params: Any, model_state: Any,
             tx: optax.GradientTransformation) -> 'TrainState':
    return cls(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
               model_state=model_state, opt_state=tx.init(params), tx=tx)

  def apply_gradients(self, grads: Any, model_state: Any) -> 'TrainState':
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1,
                        params=optax.apply_updates(self.params, updates),
                        model_state=model_state, opt_state=opt_state)

  @property
  def variables(self) -> dict:
    """Flax variables for `model.apply`: {'params': ..., **model_state}."""
    return variables_of(self.params, self.model_state)


def variables_of(params: Any, model_state: Any) -> dict:
  return {'params': params, **(model_state or {})}


# A task's loss: (params, model_state, batch, rng) -> (loss, (metrics, model_state)).
LossFn = Callable[[Any, Any, dict, jax.Array], tuple[jax.Array, tuple[dict, Any]]]
