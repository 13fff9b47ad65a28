"""AdaHessian as an optax transformation.

AdaHessian (Yao et al., 2021) is Adam with the squared gradient in the second moment
replaced by the square of a Hutchinson estimate of the Hessian's diagonal, ``D = |z *
(H z)|``, averaged over the spatial axes of convolution kernels:

    m_t = b1 m_{t-1} + (1 - b1) g_t
    v_t = b2 v_{t-1} + (1 - b2) D_t^2
    update = (m_t / (1 - b1^t)) / ((sqrt(v_t / (1 - b2^s)))^k + eps)

with ``s`` the number of Hessian estimates so far and ``k`` the Hessian power. This
follows the authors' implementation: the absolute value is taken per entry before the
spatial mean ("abs then mean"); ``average_abs=False`` takes the mean first.

Reference: Z. Yao, A. Gholami, S. Shen, M. Mustafa, K. Keutzer, M. W. Mahoney,
"ADAHESSIAN: An Adaptive Second Order Optimizer for Machine Learning", AAAI 2021.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from jaxsecond._checks import check_count, check_key
from jaxsecond._tree import describe_mismatch
from jaxsecond.curvature._hutchinson import probe, probe_product
from jaxsecond.curvature._products import scalar_function

LAYOUTS = ("oihw", "hwio", "none")


class ScaleByAdaHessianState(NamedTuple):
    count: jax.Array  # optimizer steps taken
    hessian_count: jax.Array  # Hessian estimates folded into nu
    mu: Any
    nu: Any
    key: jax.Array  # raw key bits (uint32), so optax wrappers can treat it as data


def value_grad_and_hessian_diagonal(fun: Callable, num_samples: int = 1):
    """One forward-over-reverse pass for the loss, its gradient and a Hutchinson
    estimate of the Hessian diagonal.

    Returns ``f(params, key) -> (value, grad, hessian_diagonal)``. The probes'
    Hessian-vector products are tangents of ``jax.value_and_grad(fun)``, so the value
    and gradient are its primal outputs: a training step pays for one pass, not a
    gradient plus a Hessian pass. Probes are those of :func:`jaxsecond.hutchinson_diagonal`
    with the same key (independent per leaf), so the estimate matches it.

    Example:
        >>> import jax, jax.numpy as jnp, jaxsecond
        >>> f = jaxsecond.value_grad_and_hessian_diagonal(lambda w: jnp.sum(w**4))
        >>> value, grad, diag = f(jnp.array([1.0, 2.0]), jax.random.key(0))
        >>> print(value, grad, diag)  # diagonal Hessian: exact with one probe
        17.0 [ 4. 32.] [12. 48.]
    """
    num_samples = check_count(num_samples, "num_samples")

    def evaluate(params, key):
        f, dynamic = scalar_function(fun, params)
        probes = jax.vmap(lambda i: probe(key, i, dynamic))(jnp.arange(num_samples))

        def one(z):
            (value, grad), (_, hz) = jax.jvp(jax.value_and_grad(f), (dynamic,), (z,))
            return value, grad, jax.tree.map(jnp.multiply, z, hz)

        # Only the tangents are batched: value and gradient are computed once.
        values, grads, diags = jax.vmap(one, out_axes=(None, None, 0))(probes)
        return values, grads, jax.tree.map(lambda d: jnp.mean(d, 0), diags)

    return evaluate


def _spatial_axes(leaf_ndim: int, layout) -> tuple[int, ...]:
    if isinstance(layout, tuple):
        return layout if leaf_ndim >= 3 else ()
    if layout == "none" or leaf_ndim != 4:
        return ()  # only 2-D convolution kernels by default: other leaves are left alone
    if layout == "oihw":  # equinox/PyTorch Conv2d: (out, in, h, w)
        return (2, 3)
    return (0, 1)  # hwio: (h, w, in, out)


def _average(d, axes, block_size, average_abs):
    if average_abs:
        d = jnp.abs(d)
    if axes:
        d = jnp.broadcast_to(jnp.mean(d, axis=axes, keepdims=True), d.shape)
    elif block_size is not None and d.ndim >= 1 and d.shape[-1] % block_size == 0:
        blocks = d.reshape(*d.shape[:-1], d.shape[-1] // block_size, block_size)
        d = jnp.repeat(jnp.mean(blocks, -1), block_size, axis=-1).reshape(d.shape)
    return d if average_abs else jnp.abs(d)


def _check_hyperparameters(
    b1, b2, eps, hessian_power, spatial_average, block_size, update_interval, num_samples, seed
):
    """Trace-time checks of :func:`scale_by_adahessian`'s arguments; returns
    ``(block_size, update_interval, num_samples, seed)`` as Python ints."""
    # Hyperparameters injected by optax.inject_hyperparams arrive as traced arrays:
    # only Python numbers can be checked here.
    if isinstance(hessian_power, int | float) and not 0 < hessian_power <= 1:
        raise ValueError(f"hessian_power must be in (0, 1], got {hessian_power!r}")
    hint = " (with optax.inject_hyperparams, list it in static_args)"
    try:  # NumPy integers are accepted and made Python ints
        update_interval = check_count(update_interval, "update_interval")
        num_samples = check_count(num_samples, "num_samples")
        block_size = None if block_size is None else check_count(block_size, "block_size")
        seed = check_count(seed, "seed", minimum=0)
    except ValueError as error:
        raise ValueError(f"{error}{hint}") from None
    if isinstance(eps, int | float) and not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    if not (isinstance(spatial_average, tuple) or spatial_average in LAYOUTS):
        raise ValueError(
            f"spatial_average must be one of {LAYOUTS} or a tuple of axes, got {spatial_average!r}"
        )
    for name, value in (("b1", b1), ("b2", b2)):
        if isinstance(value, int | float) and not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return block_size, update_interval, num_samples, seed


def _typed_key(seed: int, key):
    """The probes' base key as a typed key (a legacy ``uint32[2]`` key is wrapped)."""
    base_key = jax.random.key(seed) if key is None else check_key(key)
    if not jax.dtypes.issubdtype(base_key.dtype, jax.dtypes.prng_key):
        base_key = jax.random.wrap_key_data(base_key)
    return base_key


def _check_update_inputs(grads, state, params, obj_fn, hessian_diagonal, update_interval):
    """Trace-time checks of ``update``'s inputs; returns ``hessian_diagonal`` filtered to
    its floating-point arrays (or ``None``)."""
    if obj_fn is None and hessian_diagonal is None and update_interval == 1:
        raise ValueError(
            "AdaHessian needs obj_fn= (params -> loss; probes are drawn here) or "
            "hessian_diagonal= (an estimate, e.g. from value_grad_and_hessian_diagonal)"
        )
    if obj_fn is not None and hessian_diagonal is not None:
        raise ValueError("pass obj_fn= or hessian_diagonal=, not both")
    if obj_fn is not None and params is None:
        raise ValueError("obj_fn= needs params: call update(grads, state, params, obj_fn=...)")
    # Structure and shapes only: gradients may come in another precision.
    shapes = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, "f4"), tree)
    problem = describe_mismatch(shapes(state.mu), shapes(grads))
    if problem is not None:
        raise ValueError(
            "state does not match the gradients (was it built by init for other "
            f"params?): gradient {problem}"
        )
    if hessian_diagonal is not None:
        hessian_diagonal = eqx.filter(hessian_diagonal, eqx.is_inexact_array)
        problem = describe_mismatch(grads, hessian_diagonal)
        if problem is not None:
            raise ValueError(f"hessian_diagonal must be shaped like the gradients: {problem}")
    return hessian_diagonal


def _estimate(obj_fn, params, state, key_impl, num_samples: int):
    """Hutchinson estimate of the Hessian diagonal of ``obj_fn`` at ``params``: fresh
    probes for each estimate (the state's key folded with the estimates so far)."""
    f, dynamic = scalar_function(obj_fn, params, name="obj_fn")
    # The state holds raw key bits; rewrapped with the key's own implementation (a
    # threefry, rbg or unsafe_rbg key alike).
    key = jax.random.wrap_key_data(state.key, impl=key_impl)
    step_key = jax.random.fold_in(key, state.hessian_count)

    samples = jax.vmap(lambda i: probe_product(f, dynamic, step_key, i))(jnp.arange(num_samples))
    return jax.tree.map(lambda s: jnp.mean(s, 0), samples)


def _second_moment(nu, diag, b2, spatial_average, block_size, average_abs, axis_name):
    """``b2 nu + (1 - b2) D^2``, with ``D`` the estimate averaged over devices, then per
    leaf over its spatial axes (or blocks), made nonnegative."""
    if axis_name is not None:
        diag = jax.lax.pmean(diag, axis_name)
    d = jax.tree.map(
        lambda x: _average(x, _spatial_axes(x.ndim, spatial_average), block_size, average_abs),
        diag,
    )
    return jax.tree.map(lambda v, di: b2 * v + (1 - b2) * di**2, nu, d)


def _lazy_second_moment(new_nu, nu, refresh, update_interval, has_estimate):
    """``new_nu(None)`` on refresh steps, ``nu`` kept in between."""
    if update_interval == 1:
        return new_nu(None)
    if not has_estimate:
        # The caller skips the estimate between refreshes; it must supply one at
        # every refresh step (count % update_interval == 0).
        return eqx.error_if(
            nu,
            refresh,
            "AdaHessian: this step refreshes the Hessian estimate "
            "(count % update_interval == 0) but got no obj_fn= or hessian_diagonal=",
        )
    # Lazy Hessian: skip the Hessian-vector products between refreshes.
    return jax.lax.cond(refresh, new_nu, lambda _: nu, None)


def _precondition(mu, nu, count, hessian_count, b1, b2, eps, hessian_power):
    """The update ``m_hat / (sqrt(v_hat)^k + eps)`` from bias-corrected moments."""
    undamped = isinstance(eps, int | float) and eps == 0
    # Bias corrections in the working precision (float64 under x64).
    real = jnp.result_type(float)
    bc1 = 1 - b1 ** count.astype(real)
    bc2 = 1 - b2 ** hessian_count.astype(real)

    def scale(m, v):
        m_hat = m / bc1.astype(m.dtype)
        v_hat = v / jnp.maximum(bc2, jnp.finfo(real).tiny).astype(v.dtype)
        if undamped:
            # No gradient, no step, even where the estimate is zero too (0/0).
            denominator = jnp.sqrt(v_hat) ** hessian_power
            return jnp.where(m_hat == 0, 0, m_hat / jnp.where(m_hat == 0, 1, denominator))
        return m_hat / (jnp.sqrt(v_hat) ** hessian_power + eps)

    updates = jax.tree.map(scale, mu, nu)
    return _error_if_infinite(updates) if undamped else updates


def _error_if_infinite(updates):
    """Run-time error for an infinite undamped step (a gradient but zero curvature)."""
    infinite = jax.tree.map(lambda u: jnp.any(jnp.isinf(u)), updates)
    return eqx.error_if(
        updates,
        jnp.any(jnp.stack(jax.tree.leaves(infinite) or [jnp.bool_(False)])),
        "adahessian with eps=0: a parameter with a gradient has a zero curvature "
        "estimate, so its step is infinite; use eps > 0",
    )


def scale_by_adahessian(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-4,
    hessian_power: float = 1.0,
    spatial_average="oihw",
    block_size: int | None = None,
    update_interval: int = 1,
    num_samples: int = 1,
    average_abs: bool = True,
    axis_name: str | None = None,
    seed: int = 0,
    key: jax.Array | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Rescale updates by AdaHessian's Hessian-diagonal second moment.

    ``update(grads, state, params, obj_fn=...)`` draws Hutchinson probes itself
    (independent per leaf and per step); ``update(grads, state, params,
    hessian_diagonal=...)`` uses an estimate computed elsewhere, e.g. by
    :func:`value_grad_and_hessian_diagonal` together with the gradient. With
    ``update_interval > 1`` both may be omitted on the steps that do not refresh the
    estimate (``state.count % update_interval != 0``), so a training loop can skip the
    Hessian-vector products there; a refresh step without an estimate raises.

    Args:
        b1: decay rate of the first moment.
        b2: decay rate of the Hessian second moment.
        eps: added to the denominator, >= 0. With eps = 0 the update divides by the
            raw estimate (e.g. an exact Newton step on a strictly convex quadratic): a
            parameter without gradient does not move, and one with a gradient but a
            zero curvature estimate raises at run time instead of stepping to infinity.
        hessian_power: ``k`` in ``(sqrt(v))^k``, in (0, 1] (1 in the paper).
        spatial_average: how each leaf's estimate is averaged: ``"oihw"`` (default:
            4-D leaves are 2-D convolution kernels laid out ``(out, in, h, w)`` as
            equinox's ``Conv2d``, averaged over ``h, w``; other leaves untouched),
            ``"hwio"`` (4-D kernels with the kernel axes first), ``"none"``, or a tuple
            of axes applied to every leaf with 3+ dimensions (e.g. ``(2,)`` for
            ``Conv1d`` kernels).
        block_size: for leaves of at most 2 dimensions, average over consecutive
            blocks of this size along the last axis (the paper's transformer setting).
        update_interval: estimate the Hessian every this many steps (lazy Hessian);
            in between the second moment is kept, and its bias correction counts
            estimates, not steps.
        num_samples: Hutchinson probes per estimate (with ``obj_fn``).
        average_abs: take ``|.|`` before the spatial mean (the authors' choice) or
            after it.
        axis_name: average the estimate over this mapped axis when each device holds
            its own estimate (``pmap``, or per-device values in ``shard_map``), so all
            devices apply the same preconditioner. Under ``jax.shard_map``, derivatives
            with respect to replicated parameters are already combined over the mesh
            (scale each device's loss by ``1 / num_devices``); see the tests.
        seed: randomness of the probes, used when ``key`` is not given.
        key: randomness of the probes; overrides ``seed``.

    Example:
        >>> import jax, jax.numpy as jnp, jaxsecond
        >>> loss = lambda p: jnp.sum(jnp.array([1.0, 5.0]) * p**2)
        >>> opt = jaxsecond.scale_by_adahessian(b1=0.0, b2=0.0, eps=0.0)
        >>> p = jnp.array([1.0, 1.0])
        >>> u, _ = opt.update(jax.grad(loss)(p), opt.init(p), p, obj_fn=loss)
        >>> print(p - u)  # one exact Newton step on a diagonal quadratic
        [0. 0.]
    """
    block_size, update_interval, num_samples, seed = _check_hyperparameters(
        b1, b2, eps, hessian_power, spatial_average, block_size, update_interval, num_samples, seed
    )
    base_key = _typed_key(seed, key)
    key_impl = jax.random.key_impl(base_key)

    def init_fn(params):
        dynamic = eqx.filter(params, eqx.is_inexact_array)
        return ScaleByAdaHessianState(
            count=jnp.zeros([], jnp.int32),
            hessian_count=jnp.zeros([], jnp.int32),
            mu=jax.tree.map(jnp.zeros_like, dynamic),
            nu=jax.tree.map(jnp.zeros_like, dynamic),
            key=jax.random.key_data(base_key),
        )

    def update_fn(updates, state, params=None, *, obj_fn=None, hessian_diagonal=None, **extra):
        del extra
        grads = eqx.filter(updates, eqx.is_inexact_array)
        hessian_diagonal = _check_update_inputs(
            grads, state, params, obj_fn, hessian_diagonal, update_interval
        )
        refresh = state.count % update_interval == 0

        def new_nu(_):
            diag = hessian_diagonal
            if diag is None:
                diag = _estimate(obj_fn, params, state, key_impl, num_samples)
            return _second_moment(
                state.nu, diag, b2, spatial_average, block_size, average_abs, axis_name
            )

        has_estimate = obj_fn is not None or hessian_diagonal is not None
        nu = _lazy_second_moment(new_nu, state.nu, refresh, update_interval, has_estimate)
        hessian_count = state.hessian_count + refresh.astype(jnp.int32)
        count = state.count + 1
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
        new_updates = _precondition(mu, nu, count, hessian_count, b1, b2, eps, hessian_power)
        return new_updates, ScaleByAdaHessianState(count, hessian_count, mu, nu, state.key)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def adahessian(
    learning_rate: float | optax.Schedule = 0.15,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-4,
    weight_decay: float = 0.0,
    hessian_power: float = 1.0,
    spatial_average="oihw",
    block_size: int | None = None,
    update_interval: int = 1,
    num_samples: int = 1,
    average_abs: bool = True,
    axis_name: str | None = None,
    seed: int = 0,
    key: jax.Array | None = None,
) -> optax.GradientTransformationExtraArgs:
    """AdaHessian: :func:`scale_by_adahessian`, decoupled weight decay, learning rate.

    Arguments as in :func:`scale_by_adahessian`, plus ``learning_rate`` (a number or
    an optax schedule) and ``weight_decay`` (decoupled, as AdamW). Defaults follow the
    paper (learning rate 0.15, Hessian power 1).

    Example:
        >>> import jax, jax.numpy as jnp, optax, jaxsecond
        >>> loss = lambda p: jnp.sum((p - 3.0) ** 2)
        >>> opt = jaxsecond.adahessian(learning_rate=0.5)
        >>> p = jnp.zeros(2)
        >>> state = opt.init(p)
        >>> for _ in range(200):
        ...     u, state = opt.update(jax.grad(loss)(p), state, p, obj_fn=loss)
        ...     p = optax.apply_updates(p, u)
        >>> print(jnp.round(p, 2))
        [3. 3.]
    """
    # Without weight decay the chain does not need params (optax's decay step does).
    no_decay = isinstance(weight_decay, int | float) and weight_decay == 0
    decay = [] if no_decay else [optax.add_decayed_weights(weight_decay)]
    return optax.chain(
        scale_by_adahessian(
            b1=b1,
            b2=b2,
            eps=eps,
            hessian_power=hessian_power,
            spatial_average=spatial_average,
            block_size=block_size,
            update_interval=update_interval,
            num_samples=num_samples,
            average_abs=average_abs,
            axis_name=axis_name,
            seed=seed,
            key=key,
        ),
        *decay,
        optax.scale_by_learning_rate(learning_rate),
    )
