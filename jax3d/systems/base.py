"""The system contract, the population state, and the population step every method shares.

A *system* is one text-to-3D method (SDS, SJC, ...). The runner, the benchmarks and the CLI
use only what `System` states; `systems.registry` maps a method's name to its system and its
default config. Adding a method is one system file, one config file and one registry line.

Every system trains a population of P particles (P = 1 is the plain method). One step is
  1. per particle, `vmap`ped (the P axis split over the mesh's `particles` axis): the
     particle's loss and its gradient, an optimizer update, and outputs for step 2;
  2. once for the population: the shared part (e.g. VSD's LoRA network), whose loss sees every
     particle's outputs (leading axis P); its gradient, a mean over particles, is reduced
     across the `particles` axis by XLA.
Particle k's randomness is `fold_in(step_key, particle_id_k)` and its init key
`fold_in(init_key, particle_id_k)`, so particle k of a P-run equals a 1-particle run with
particle id k; the shared part draws from `fold_in(step_key, SHARED_STREAM)`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, ClassVar, NamedTuple, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jax3d import cameras
from jax3d.priors.base import Prior
from jax3d.systems import settings
from jax3d.train import sharding

# The shared part's key: fold_in(step_key, SHARED_STREAM) (particle ids are small, >= 0).
SHARED_STREAM = 2**31 - 1


@flax.struct.dataclass
class State:
  """A population's training state, a pytree that checkpoints and shards as a whole.

  particles: {"params", "opt_state", "particle_id"}, every leaf with a leading axis P, split
    over the mesh's `particles` axis.
  shared: {"params", "opt_state"} of the population's shared trainable part, replicated; {}
    for methods without one (SDS, SJC).
  step: the number of steps taken (int32 scalar, replicated).
  """
  particles: Any
  shared: Any
  step: jax.Array


class StepParts(NamedTuple):
  """A step's two costly parts as pure functions, for `jax3d bench step`.

  render(params, key) -> images: the training render of the step's views (one particle);
  guidance(prior_params, x0, key) -> g: the prior's guidance call on x0 (V,) + latent_shape,
  the prior's variable (after `Prior.encode`);
  extras: more parts a method has, (label, fn, args) each, timed as fn(*args).
  """
  render: Callable[[Any, jax.Array], jax.Array]
  guidance: Callable[[Any, jax.Array, jax.Array], jax.Array]
  extras: tuple[tuple[str, Callable[..., Any], tuple[Any, ...]], ...] = ()


class System(Protocol):
  """What a method provides. Everything impure (the loop, logging, files) is the runner's."""

  config: settings.RunConfig  # the method's typed config (at least the run settings)
  prior: Prior
  mesh: Mesh
  # (label, config key, values) that `jax3d bench step` sweeps, e.g. SJC's K; None: none.
  step_sweep: ClassVar[tuple[str, str, tuple[Any, ...]] | None]

  def init(self, key: jax.Array) -> State:
    """The initial population, placed on the mesh."""

  def train_step(self, state: State, key: jax.Array) -> tuple[State, dict[str, jax.Array]]:
    """One step of every particle and the shared part: pure in (state, key), jitted; the
    metrics are scalars (population means)."""

  def compile_step(self) -> int | None:
    """Compiles `train_step` ahead of time; the bytes per device it needs (None: unknown)."""

  def render(self, state: State, particle: int, camera: cameras.Camera,
             step: int) -> dict[str, jax.Array]:
    """A deterministic view of one particle from one camera (previews, turntables): 'rgb'
    (H, W, 3) in [0, 1], 'normal' (H, W, 3) and 'opacity' (H, W)."""

  def export_mesh(self, state: State, particle: int, step: int, level: float | None = None):
    """One particle as an `export.mesh.MeshData` (world coordinates, vertex colours);
    `level` overrides the representation's own surface rule where it has one."""

  def step_parts(self, state: State, key: jax.Array) -> StepParts:
    """The step's render and guidance call, for `jax3d bench step`."""


class PopulationSystem:
  """The population half of `System`: state, placement and the jitted two-part step.

  A subclass provides `init_particle`, `particle_loss`, `particle_tx` and `step_inputs`; one
  with shared trainable state also provides `init_shared`, `shared_loss` and `shared_tx`.
  """

  step_sweep: ClassVar[tuple[str, str, tuple[Any, ...]] | None] = None
  shared_tx: optax.GradientTransformation | None = None
  particle_tx: optax.GradientTransformation

  def __init__(self, config: settings.RunConfig, prior: Prior, mesh: Mesh | None = None):
    self.config = config
    self.prior = prior
    self.mesh = mesh if mesh is not None else sharding.make_mesh(config.num_particles)
    self._compiled = None  # `compile_step`'s program, once it has run

  # ---- what a subclass provides ----
  def init_particle(self, key: jax.Array) -> Any:
    """One particle's params."""
    raise NotImplementedError

  def particle_loss(self, params, shared_params, key: jax.Array, step: jax.Array,
                    inputs) -> tuple[jax.Array, tuple[dict[str, jax.Array], Any]]:
    """(loss, (metrics, outputs)) of one particle at one step; `outputs` (a pytree, no
    gradient) goes to `shared_loss` with a leading particle axis."""
    raise NotImplementedError

  def step_inputs(self) -> Any:
    """The arrays the step reads besides the state (prior weights, embeddings); placed on
    every device once, then passed to every step as arguments."""
    raise NotImplementedError

  def init_shared(self, key: jax.Array) -> Any:
    """The shared trainable params, or None for a method without them."""
    del key
    return None

  def shared_loss(self, shared_params, outputs, key: jax.Array, step: jax.Array,
                  inputs) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, metrics) of the shared part given every particle's `outputs` (leading axis P);
    take the mean over particles so its gradient is the particles' average."""
    raise NotImplementedError

  # ---- the population ----
  @functools.cached_property
  def inputs(self) -> Any:
    """`step_inputs()`, replicated over the mesh (once per system)."""
    return sharding.replicate(self.step_inputs(), self.mesh)

  def _init_one(self, key: jax.Array, particle_id) -> dict[str, Any]:
    params = self.init_particle(jax.random.fold_in(key, particle_id))
    return {"params": params, "opt_state": self.particle_tx.init(params)}

  def init(self, key: jax.Array, particle_ids=None) -> State:
    """The initial population (particle ids 0..P-1 unless given), placed on the mesh."""
    n = self.config.num_particles
    ids = jnp.arange(n) if particle_ids is None else jnp.asarray(particle_ids)
    if ids.shape != (n,):
      raise ValueError(f"particle_ids must have shape ({n},)")
    particles = jax.jit(jax.vmap(self._init_one, in_axes=(None, 0)))(key, ids)
    particles["particle_id"] = ids.astype(jnp.int32)
    shared = {}
    params = self.init_shared(jax.random.fold_in(key, SHARED_STREAM))
    if params is not None:
      shared = {"params": params, "opt_state": jax.jit(self.shared_tx.init)(params)}
    return sharding.place(State(particles=particles, shared=shared,
                                step=jnp.zeros((), jnp.int32)), self.mesh)

  @functools.cached_property
  def render_device(self) -> jax.Device:
    """Where one particle is rendered and meshed (previews, export): the mesh's first device.
    Left on the mesh, a particle's params are replicated over the `views` axis and every
    device would render the whole image."""
    return self.mesh.devices.flat[0]

  def particle_params(self, state: State, k: int) -> Any:
    """Particle k's params, on `render_device`."""
    return jax.device_put(jax.tree.map(lambda x: x[k], state.particles["params"]),
                          self.render_device)

  def _particle_step(self, particle, shared_params, key, step, inputs):
    key = jax.random.fold_in(key, particle["particle_id"])
    grads, (metrics, outputs) = jax.grad(self.particle_loss, has_aux=True)(
        particle["params"], shared_params, key, step, inputs)
    updates, opt_state = self.particle_tx.update(grads, particle["opt_state"],
                                                 particle["params"])
    params = optax.apply_updates(particle["params"], updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return dict(particle, params=params, opt_state=opt_state), metrics, outputs

  def _shared_step(self, shared, outputs, key, step, inputs):
    grads, metrics = jax.grad(self.shared_loss, has_aux=True)(
        shared["params"], outputs, jax.random.fold_in(key, SHARED_STREAM), step, inputs)
    updates, opt_state = self.shared_tx.update(grads, shared["opt_state"], shared["params"])
    metrics["shared_grad_norm"] = optax.tree.norm(grads)
    return {"params": optax.apply_updates(shared["params"], updates),
            "opt_state": opt_state}, metrics

  def _step(self, state: State, key: jax.Array, inputs) -> tuple[State, dict[str, jax.Array]]:
    shared_params = state.shared.get("params")
    if self.config.num_particles == 1:
      # One particle needs no batching: vmap over a size-1 axis turns the hash grid's
      # gathers and scatter-adds into batched ones, ~1.6x the step time on CPU.
      one = jax.tree.map(lambda x: x[0], state.particles)
      particles, metrics, outputs = self._particle_step(one, shared_params, key, state.step,
                                                        inputs)
      particles, outputs = jax.tree.map(lambda x: x[None], (particles, outputs))
    else:
      particles, metrics, outputs = jax.vmap(
          self._particle_step, in_axes=(0, None, None, None, None),
          spmd_axis_name=sharding.PARTICLES)(state.particles, shared_params, key, state.step,
                                              inputs)
    metrics = {k: jnp.mean(v) for k, v in metrics.items()}  # the population mean
    shared = state.shared
    if shared:
      shared, shared_metrics = self._shared_step(shared, outputs, key, state.step, inputs)
      metrics.update(shared_metrics)
    return State(particles=particles, shared=shared, step=state.step + 1), metrics

  @functools.cached_property
  def _jitted_step(self) -> Callable:
    return jax.jit(self._step, donate_argnums=(0,))

  def compile_step(self) -> int | None:
    """Compiles the step ahead of time (later `train_step` calls run this program) and
    returns the device memory it needs per device by XLA's analysis: arguments, outputs not
    aliased to donated arguments, and temporaries, in bytes (None where the backend does
    not say)."""
    shapes = jax.eval_shape(self.init, jax.random.key(0))
    like = jax.tree.map(lambda s, where: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=where),
                        shapes, sharding.state_shardings(shapes, self.mesh))
    self._compiled = self._jitted_step.lower(like, jax.random.key(0), self.inputs).compile()
    stats = self._compiled.memory_analysis()
    if stats is None:
      return None
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes -
               stats.alias_size_in_bytes + stats.temp_size_in_bytes)

  def train_step(self, state: State, key: jax.Array) -> tuple[State, dict[str, jax.Array]]:
    """One step for every particle, then the shared part; pure in (state, key)."""
    return (self._compiled or self._jitted_step)(state, key, self.inputs)


__all__ = ["State", "StepParts", "System", "PopulationSystem", "SHARED_STREAM"]
