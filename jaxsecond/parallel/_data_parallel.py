"""Data-parallel training steps on a device mesh, with JAX's own sharding.

The global batch is split along its leading axis over one axis of a
:class:`jax.sharding.Mesh`; parameters, optimizer state and search state are
replicated. Each step is a ``jax.shard_map`` inside ``jax.jit``: every device works on
its shard, the per-device results are averaged with ``jax.lax.pmean``, and every device
then applies the same update, so the replicas never drift apart.

Two ways of combining the devices' work are used, each where it gives the right answer:

* AdaHessian (:func:`data_parallel_adahessian_step`): each device computes the loss,
  the gradient and a Hutchinson estimate of the Hessian diagonal *of its own shard's
  loss*, with its own probes (the step key folded with the device's index), and the
  three are averaged explicitly. Differentiating with respect to replicated parameters
  inside ``shard_map`` sums the cotangents over the mesh (the transpose of the implicit
  "replicated to per-device" cast is a ``psum``): a plain ``jax.grad`` of the shard's
  mean loss would come out ``num_devices`` times too large. The parameters are therefore
  cast to per-device values (``jax.lax.pcast(..., to="varying")``) before
  differentiating, so the derivatives are the shard's own, and then ``pmean``-ed.
* Architecture search (:func:`data_parallel_search`, :func:`data_parallel_rarts`):
  the search's step computes its gradients internally, so the losses it receives are
  wrapped to return the ``pmean`` of the shard losses, i.e. the loss of the global
  batch. Its derivatives with respect to the replicated weights and architecture are
  then those of the global loss (the ``pmean`` sends ``1/num_devices`` back to each
  device and the implicit cast sums them), to any order, and the whole Gauss-Seidel
  sweep equals the single-device one.

With ``B`` examples split into ``n`` equal shards and losses that are means over the
batch, the mean of the shard gradients is the full-batch gradient (up to the order of
floating-point summation). The averaged Hessian-diagonal estimate is
``(1/n) sum_i z_i * (H_i z_i)`` with ``H_i`` the Hessian of shard ``i``'s loss and
``z_i`` the probe drawn from ``fold_in(key, i)``: an unbiased estimate of the
full-batch diagonal, with ``n`` independent probes. A single-device run reproduces it
exactly by evaluating :func:`jaxsecond.value_grad_and_hessian_diagonal` on each shard
with ``fold_in(key, i)`` and averaging.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxsecond.nas._common import ArchitectureSearch
from jaxsecond.nas._rarts import rarts
from jaxsecond.optim._adahessian import ScaleByAdaHessianState, value_grad_and_hessian_diagonal


def _check_mesh(mesh, axis_name) -> int:
    """The number of devices along ``axis_name``, after checking the mesh has it."""
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"mesh must be a jax.sharding.Mesh (e.g. jax.make_mesh((jax.device_count(),), "
            f"('data',))), got {type(mesh).__name__}"
        )
    if axis_name not in mesh.axis_names:
        raise ValueError(
            f"mesh has no axis named {axis_name!r} (its axes are {mesh.axis_names}); pass "
            "axis_name= naming the axis to split the batch over"
        )
    return mesh.shape[axis_name]


def _check_batch(batch, num_devices: int, axis_name, name: str) -> None:
    """Every array of ``batch`` must share a leading axis divisible by the device count."""
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError(f"{name} must contain at least one array to split across devices")
    sizes = set()
    for leaf in leaves:
        shape = jnp.shape(leaf)
        if not shape:
            raise ValueError(
                f"{name} must hold arrays with a leading batch axis; got a scalar leaf"
            )
        sizes.add(shape[0])
    if len(sizes) > 1:
        raise ValueError(
            f"{name}'s arrays must share the leading (batch) axis, got sizes {sorted(sizes)}"
        )
    (size,) = sizes
    if size == 0:
        raise ValueError(
            f"{name} is empty (batch size 0): the mean loss over no examples is undefined"
        )
    if size % num_devices:
        raise ValueError(
            f"{name} has batch size {size}, not divisible by the {num_devices} devices of "
            f"mesh axis {axis_name!r}: each device must get an equal shard (pad or drop "
            "examples)"
        )


def _names_hessian_diagonal(optimizer) -> bool:
    try:
        return "hessian_diagonal" in inspect.signature(optimizer.update).parameters
    except (TypeError, ValueError):
        return False


def _check_uses_hessian(opt_state) -> None:
    # optax chains pass extra arguments only to the transformations that take them, so
    # an optimizer without scale_by_adahessian (e.g. optax.adam) would silently drop
    # the Hessian diagonal this step pays for. Accepted: AdaHessian somewhere in the
    # state (checked here), or an update function that names the argument itself
    # (checked once, when the step is built).
    is_state = lambda x: isinstance(x, ScaleByAdaHessianState)
    if not any(is_state(x) for x in jax.tree.leaves(opt_state, is_leaf=is_state)):
        raise TypeError(
            "optimizer: data_parallel_adahessian_step estimates a Hessian diagonal, but "
            "opt_state holds no AdaHessian state, so the optimizer would ignore it; use "
            "jaxsecond.adahessian(...) or chain jaxsecond.scale_by_adahessian(...), or a "
            "plain data-parallel gradient step for first-order optimizers"
        )


def _place(tree, mesh: Mesh, spec: P):
    """Constrain ``tree``'s sharding inside ``jit``, as ``shard_map`` expects it.

    ``jax.make_mesh`` gives Explicit axes (which need ``jax.reshard``), ``Mesh(...)``
    gives Auto axes (which need ``with_sharding_constraint``)."""
    explicit = any(t == AxisType.Explicit for t in mesh.axis_types)
    sharding = NamedSharding(mesh, spec)
    if explicit:
        return jax.tree.map(lambda x: jax.reshard(x, sharding), tree)
    return jax.lax.with_sharding_constraint(tree, sharding)


def _sharded(fun, mesh: Mesh, specs: tuple, out_specs):
    """``jax.jit`` of ``shard_map(fun)`` for pytrees that may hold non-arrays (equinox
    Modules): arrays go through ``shard_map``, everything else is closed over."""

    @eqx.filter_jit
    def run(*args):
        dynamic, static = eqx.partition(args, eqx.is_array)
        dynamic = tuple(_place(d, mesh, s) for d, s in zip(dynamic, specs, strict=True))
        out_static = []

        def body(*dyn):
            out = fun(*eqx.combine(dyn, static))
            out_dyn, out_st = eqx.partition(out, eqx.is_array)
            out_static.append(out_st)
            return out_dyn

        out = jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=out_specs)(*dynamic)
        return eqx.combine(out, out_static[0])

    def placed(*args):
        if jax.process_count() == 1:
            # Place the inputs where the step leaves its outputs, so that the first call
            # (arrays on one device) and the next ones (outputs of the step) compile once.
            # With several processes each holds only its part: see shard_batch.
            args = tuple(
                jax.tree.map(
                    lambda x, s=s: (
                        jax.device_put(x, NamedSharding(mesh, s)) if eqx.is_array(x) else x
                    ),
                    a,
                )
                for a, s in zip(args, specs, strict=True)
            )
        return run(*args)

    return placed


def data_parallel_adahessian_step(
    loss_fn: Callable,
    optimizer: optax.GradientTransformationExtraArgs,
    mesh: Mesh,
    *,
    axis_name: str = "data",
    num_samples: int = 1,
) -> Callable:
    """A jitted AdaHessian training step with the batch split across ``mesh``.

    Each device evaluates ``loss_fn`` on its shard of the batch, with its gradient and
    a Hutchinson estimate of its Hessian diagonal from one forward-over-reverse pass
    (:func:`jaxsecond.value_grad_and_hessian_diagonal`). Its probes come from
    ``fold_in(key, device_index)``, so devices draw independent probes. Loss, gradient
    and estimate are averaged across the devices of ``axis_name``, and every device
    applies the same ``optimizer.update(grads, state, params, hessian_diagonal=...)``:
    parameters and optimizer state stay replicated.

    The result equals a single-device step on the whole batch whose estimate is the
    average over shards ``i`` of ``value_grad_and_hessian_diagonal`` on shard ``i``
    with key ``fold_in(key, i)``; the gradient is the full-batch gradient.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``, the *mean* loss over the batch
            (a sum would make the average across devices a rescaled gradient).
        optimizer: an optax transformation accepting ``hessian_diagonal=`` in
            ``update``, e.g. :func:`jaxsecond.adahessian` (leave its ``axis_name`` unset:
            the estimate arrives already averaged).
        mesh: a :class:`jax.sharding.Mesh` with an axis named ``axis_name``; other axes,
            if any, hold copies of the same computation.
        axis_name: the mesh axis the batch is split over.
        num_samples: Hutchinson probes per device per step.

    Returns:
        ``step(params, opt_state, batch, key) -> (params, opt_state, metrics)``: the
        batch is a pytree of arrays with a common leading axis divisible by
        ``mesh.shape[axis_name]``; ``key`` a ``jax.random`` key (use a new one every
        step); ``metrics = {"loss": mean loss over the batch}`` at the old parameters.
        Params may be equinox Modules (only floating-point arrays are trained).

    Example:
        >>> import jax, jax.numpy as jnp, jaxsecond
        >>> from jaxsecond.parallel import data_parallel_adahessian_step
        >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
        >>> def loss(w, batch):
        ...     x, y = batch
        ...     return jnp.mean((x @ w - y) ** 2)
        >>> opt = jaxsecond.adahessian(learning_rate=0.5)
        >>> step = data_parallel_adahessian_step(loss, opt, mesh)
        >>> x = jax.random.normal(jax.random.key(0), (64, 3))
        >>> batch = (x, x @ jnp.array([1.0, -2.0, 0.5]))
        >>> w = jnp.zeros(3)
        >>> state = opt.init(w)
        >>> for i in range(200):
        ...     w, state, metrics = step(w, state, batch, jax.random.key(i))
        >>> print(jnp.round(w, 2))
        [ 1.  -2.   0.5]
    """
    num_devices = _check_mesh(mesh, axis_name)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(params, batch), got {loss_fn!r}")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            "optimizer must be an optax transformation accepting hessian_diagonal= (e.g. "
            f"jaxsecond.adahessian(...)), got {type(optimizer).__name__}"
        )

    def local_step(params, opt_state, batch, key):
        # Per-device view of the replicated params: without it, the derivatives taken
        # below would already be summed over the mesh (see the module docstring).
        arrays, static = eqx.partition(params, eqx.is_array)
        local_params = eqx.combine(jax.lax.pcast(arrays, axis_name, to="varying"), static)
        device_key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
        value, grads, diag = value_grad_and_hessian_diagonal(
            lambda p: loss_fn(p, batch), num_samples
        )(local_params, device_key)
        value, grads, diag = jax.lax.pmean((value, grads, diag), axis_name)
        updates, opt_state = optimizer.update(grads, opt_state, params, hessian_diagonal=diag)
        return eqx.apply_updates(params, updates), opt_state, {"loss": value}

    run = _sharded(local_step, mesh, (P(), P(), P(axis_name), P()), P())
    update_takes_hessian = _names_hessian_diagonal(optimizer)

    def step(params, opt_state, batch, key):
        _check_batch(batch, num_devices, axis_name, "batch")
        if not update_takes_hessian:
            _check_uses_hessian(opt_state)
        return run(params, opt_state, batch, key)

    return step


def data_parallel_search(
    method: Callable,
    train_loss: Callable,
    val_loss: Callable,
    mesh: Mesh,
    *,
    axis_name: str = "data",
    **method_kwargs,
) -> ArchitectureSearch:
    """An architecture search whose step splits its batches across ``mesh``.

    ``method`` is a search constructor with the signature of
    :func:`jaxsecond.nas.rarts` or :func:`jaxsecond.nas.darts`: ``method(train_loss,
    val_loss, **method_kwargs)``. It is given losses that return the mean of the
    devices' shard losses (``jax.lax.pmean``), i.e. the loss on the global batch, so
    every gradient the search takes (all of RARTS's blocks; DARTS's Hessian-vector
    products too) is the full-batch one, averaged across devices, and the step equals
    the single-device step on the whole batches.

    Args:
        method: e.g. :func:`jaxsecond.nas.rarts`.
        train_loss: ``loss(weights, arch, batch) -> scalar``, the *mean* loss over the
            batch.
        val_loss: the same for the validation batch.
        mesh: a :class:`jax.sharding.Mesh` with an axis named ``axis_name``.
        axis_name: the mesh axis the batches are split over.
        **method_kwargs: passed to ``method`` (optimizers, ``lam``, ``beta``, ...).

    Returns:
        An :class:`jaxsecond.nas.ArchitectureSearch`: ``init(weights, arch)`` as the
        method's; ``step(state, train_batch, val_batch) -> (state, metrics)`` jitted,
        with each batch a pytree of arrays whose leading axis is divisible by
        ``mesh.shape[axis_name]``. State and metrics are replicated.
    """
    num_devices = _check_mesh(mesh, axis_name)
    for name, fun in (("train_loss", train_loss), ("val_loss", val_loss)):
        if not callable(fun):
            raise TypeError(f"{name} must be callable as {name}(weights, arch, batch)")

    def global_mean(loss):
        # pmean of the shard losses is the global batch's loss (equal shards): its
        # derivatives w.r.t. the replicated weights and arch are the full-batch ones.
        return lambda weights, arch, batch: jax.lax.pmean(loss(weights, arch, batch), axis_name)

    search = method(global_mean(train_loss), global_mean(val_loss), **method_kwargs)
    run = _sharded(search.step, mesh, (P(), P(axis_name), P(axis_name)), P())

    def step(state, train_batch, val_batch):
        _check_batch(train_batch, num_devices, axis_name, "train_batch")
        _check_batch(val_batch, num_devices, axis_name, "val_batch")
        return run(state, train_batch, val_batch)

    return ArchitectureSearch(init=search.init, step=step)


def data_parallel_rarts(
    train_loss: Callable,
    val_loss: Callable,
    mesh: Mesh,
    *,
    axis_name: str = "data",
    **rarts_kwargs,
) -> ArchitectureSearch:
    """:func:`jaxsecond.nas.rarts` with its training and validation batches split across
    ``mesh``: :func:`data_parallel_search` with ``method=rarts``.

    All three gradient blocks (training weights ``w``, validation weights ``y``,
    architecture ``alpha``) are the full-batch gradients, averaged across devices, and
    the sweep equals the single-device RARTS step on the whole batches.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from jaxsecond.parallel import data_parallel_rarts
        >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
        >>> def loss(w, a, batch):  # a gates two features
        ...     x, y = batch
        ...     return jnp.mean((x @ (jax.nn.sigmoid(a) * w) - y) ** 2)
        >>> search = data_parallel_rarts(loss, loss, mesh, weight_optimizer=optax.sgd(0.1),
        ...                              arch_optimizer=optax.sgd(0.1), lam=1.0, beta=1.0)
        >>> x = jax.random.normal(jax.random.key(0), (32, 2))
        >>> batch = (x, x @ jnp.array([1.0, 0.0]))
        >>> state = search.init(jnp.zeros(2), jnp.zeros(2))
        >>> for _ in range(300):
        ...     state, metrics = search.step(state, batch, batch)
        >>> print(float(metrics["val_loss"]) < 1e-6)
        True
    """
    return data_parallel_search(
        rarts, train_loss, val_loss, mesh, axis_name=axis_name, **rarts_kwargs
    )


def shard_batch(batch, mesh: Mesh, *, axis_name: str = "data"):
    """Place a batch on ``mesh``, split along its leading axis over ``axis_name``.

    Each process passes the examples it loaded itself (``jax.process_count() > 1``:
    ``jax.make_array_from_process_local_data`` assembles the global batch from the
    processes' parts; with one process the part is the whole batch). Optional: the steps
    above reshard whatever they get, but placing the data once avoids a copy per step.
    """
    _check_mesh(mesh, axis_name)
    sharding = NamedSharding(mesh, P(axis_name))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def replicate(tree, mesh: Mesh):
    """Place every array of ``tree`` (parameters, optimizer or search state) on every
    device of ``mesh``. In a multi-process run every process must pass the same values
    (initialise from the same seed)."""
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(
        lambda x: jax.device_put(x, sharding) if eqx.is_array(x) else x,
        tree,
    )
