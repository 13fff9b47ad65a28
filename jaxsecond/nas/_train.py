"""Training a discrete network from scratch (after a search) and scoring it."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from jaxsecond._checks import check_count


def cross_entropy(model, X, y):
    """Mean softmax cross-entropy of ``model`` (one example per call) on ``(X, y)``."""
    logits = jax.vmap(model)(X)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


@eqx.filter_jit
def accuracy(model, X, y):
    """Fraction of ``X`` that ``model`` (one example per call) classifies as ``y``."""
    return jnp.mean(jnp.argmax(jax.vmap(model)(X), axis=-1) == y)


def train_classifier(
    model,
    X,
    y,
    *,
    optimizer: optax.GradientTransformation,
    num_epochs: int,
    batch_size: int,
    key,
):
    """Train ``model`` on ``(X, y)`` by minimising the cross-entropy with ``optimizer``.

    Each epoch visits a fresh permutation of the data in mini-batches of ``batch_size``
    (the remainder dropped); the whole run is one jitted ``lax.scan``. Returns
    ``(model, batch_losses)`` with ``batch_losses`` of shape ``[num_epochs,
    num_batches]``.

    Example:
        >>> import jax, jax.numpy as jnp, optax, equinox as eqx
        >>> from jaxsecond.nas import train_classifier, accuracy
        >>> X = jax.random.normal(jax.random.key(0), (64, 2))
        >>> y = (X[:, 0] > 0).astype(jnp.int32)
        >>> model = eqx.nn.Linear(2, 2, key=jax.random.key(1))
        >>> model, losses = train_classifier(model, X, y, optimizer=optax.adam(0.1),
        ...                                  num_epochs=20, batch_size=16,
        ...                                  key=jax.random.key(2))
        >>> bool(accuracy(model, X, y) > 0.95)
        True
    """
    num_epochs = check_count(num_epochs, "num_epochs")
    num_batches = X.shape[0] // batch_size
    if num_batches < 1:
        raise ValueError(f"batch_size={batch_size} exceeds the {X.shape[0]} examples")
    params, static = eqx.partition(model, eqx.is_inexact_array)
    return _train(params, static, X, y, optimizer, num_epochs, batch_size, key)


@eqx.filter_jit
def _train(params, static, X, y, optimizer, num_epochs, batch_size, key):
    num_batches = X.shape[0] // batch_size

    def step(carry, idx):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(
            lambda p: cross_entropy(eqx.combine(p, static), X[idx], y[idx])
        )(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    def epoch(carry, k):
        perm = jax.random.permutation(k, X.shape[0])[: num_batches * batch_size]
        return jax.lax.scan(step, carry, perm.reshape(num_batches, batch_size))

    keys = jax.random.split(key, num_epochs)
    (params, _), losses = jax.lax.scan(epoch, (params, optimizer.init(params)), keys)
    return eqx.combine(params, static), losses
