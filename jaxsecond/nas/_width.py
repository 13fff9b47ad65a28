"""Width (channel-count) search for a small CNN, and magnitude pruning to compare with.

Each convolution of :class:`WidthSearchCNN` is built at its largest candidate width; a
per-layer architecture vector ``alpha_l`` (one entry per candidate width ``c_k``) weighs
channel masks,

    mask_l = sum_k softmax(alpha_l)_k * [1] * c_k + [0] * (max_l - c_k),

so the layer's output is the softmax-expected network over its widths (channel masking
as in width-search methods such as FBNetV2; RARTS searches widths the same way with its
relaxed objective). The ``alpha`` pytree is a tuple of per-layer vectors, searched with
:func:`jaxsecond.nas.rarts` or :func:`jaxsecond.nas.darts`; :func:`discretise_widths`
takes the argmax per layer, and :class:`CNN` is the plain network of those widths.

Nothing in a cross-entropy prefers fewer channels, so a width search needs a size term:
:func:`expected_parameters` is differentiable in ``alpha`` and can be added to the
validation loss. :func:`magnitude_prune` is the baseline: remove the filters of smallest
L1 norm (relative to their layer's mean) from a trained full-width :class:`CNN` until the
parameter count is at most a target.

Reference: F. Xue, Y. Qi, J. Xin, "RARTS: An Efficient First-Order Relaxed Architecture
Search Method", IEEE Access 10, 2022 (width search); H. Li, A. Kadav, I. Durdanovic,
H. Samet, H. P. Graf, "Pruning Filters for Efficient ConvNets", ICLR 2017 (filter L1
norms).
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def _check_candidates(candidates) -> tuple[tuple[int, ...], ...]:
    cands = tuple(tuple(int(c) for c in layer) for layer in candidates)
    if not cands:
        raise ValueError("candidates: give at least one layer of candidate widths")
    for i, layer in enumerate(cands):
        if not layer:
            raise ValueError(f"candidates[{i}] is empty; give at least one width")
        if min(layer) < 1 or len(set(layer)) != len(layer):
            raise ValueError(f"candidates[{i}] must be distinct positive ints, got {layer}")
    return cands


def _strides(strides, num_layers):
    strides = (1,) + (2,) * (num_layers - 1) if strides is None else tuple(strides)
    if len(strides) != num_layers:
        raise ValueError(f"strides must have one entry per layer ({num_layers}), got {strides}")
    return strides


def count_parameters(
    widths: Sequence[int], *, in_channels: int, num_classes: int, kernel_size: int = 3
) -> int:
    """Parameters of :class:`CNN` with these widths (kernels, biases and the head)."""
    total, c_in = 0, in_channels
    for c in widths:
        total += kernel_size * kernel_size * c_in * c + c
        c_in = c
    return total + c_in * num_classes + num_classes


def channel_mask(alpha, widths: Sequence[int]):
    """``sum_k softmax(alpha)_k * 1[channel < widths[k]]``, of length ``max(widths)``."""
    widths_arr = np.asarray(widths)
    masks = (np.arange(widths_arr.max())[None, :] < widths_arr[:, None]).astype(np.float64)
    probs = jax.nn.softmax(alpha)
    return probs @ jnp.asarray(masks, probs.dtype)


class CNN(eqx.Module):
    """3x3 convolutions (ReLU; stride 1 then 2 by default), global average pooling and a
    linear classifier. Call on one ``[C, H, W]`` example."""

    convs: tuple[eqx.nn.Conv2d, ...]
    head: eqx.nn.Linear

    def __init__(
        self,
        widths: Sequence[int],
        *,
        in_channels: int,
        num_classes: int,
        strides: Sequence[int] | None = None,
        key,
        dtype=None,
    ):
        widths = tuple(int(c) for c in widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be positive ints, got {widths}")
        strides = _strides(strides, len(widths))
        keys = jax.random.split(key, len(widths) + 1)
        c_in, convs = in_channels, []
        for c, s, k in zip(widths, strides, keys[:-1], strict=True):
            convs.append(eqx.nn.Conv2d(c_in, c, 3, stride=s, padding=1, dtype=dtype, key=k))
            c_in = c
        self.convs = tuple(convs)
        self.head = eqx.nn.Linear(c_in, num_classes, dtype=dtype, key=keys[-1])

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(conv.out_channels for conv in self.convs)

    def __call__(self, x):
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        return self.head(jnp.mean(x, axis=(1, 2)))


class WidthSearchCNN(eqx.Module):
    """The width-search supernet: :class:`CNN` at the largest candidate widths with a
    softmax-weighted channel mask after every convolution. Call as ``net(x, alpha)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxsecond.nas import WidthSearchCNN, discretise_widths
        >>> net = WidthSearchCNN(((4, 8), (8, 16)), in_channels=1, num_classes=10,
        ...                      key=jax.random.key(0))
        >>> alpha = net.init_arch()
        >>> net(jnp.zeros((1, 8, 8)), alpha).shape
        (10,)
        >>> discretise_widths((jnp.array([0.0, 1.0]), jnp.array([2.0, 0.0])), net.candidates)
        (8, 8)
    """

    supernet: CNN
    candidates: tuple[tuple[int, ...], ...] = eqx.field(static=True)

    def __init__(
        self,
        candidates: Sequence[Sequence[int]],
        *,
        in_channels: int,
        num_classes: int,
        strides: Sequence[int] | None = None,
        key,
        dtype=None,
    ):
        self.candidates = _check_candidates(candidates)
        widths = tuple(max(layer) for layer in self.candidates)
        self.supernet = CNN(
            widths,
            in_channels=in_channels,
            num_classes=num_classes,
            strides=strides,
            key=key,
            dtype=dtype,
        )

    def init_arch(self, dtype=None):
        """Uniform over the candidates: one zero vector per layer."""
        dtype = dtype or self.supernet.head.weight.dtype
        return tuple(jnp.zeros(len(layer), dtype) for layer in self.candidates)

    def __call__(self, x, alpha):
        if len(alpha) != len(self.candidates):
            raise ValueError(
                f"alpha must hold one vector per layer ({len(self.candidates)}), got {len(alpha)}"
            )
        for conv, a, widths in zip(self.supernet.convs, alpha, self.candidates, strict=True):
            x = jax.nn.relu(conv(x)) * channel_mask(a, widths)[:, None, None]
        return self.supernet.head(jnp.mean(x, axis=(1, 2)))

    def expected_parameters(self, alpha):
        """Parameter count of the softmax-expected widths (differentiable in ``alpha``);
        equals :func:`count_parameters` when every ``alpha_l`` is one-hot."""
        conv = self.supernet.convs[0]
        c_in, total = conv.in_channels, 0.0
        for a, widths in zip(alpha, self.candidates, strict=True):
            c = jax.nn.softmax(a) @ jnp.asarray(widths, a.dtype)
            total = total + 9 * c_in * c + c
            c_in = c
        num_classes = self.supernet.head.out_features
        return total + c_in * num_classes + num_classes


def discretise_widths(alpha, candidates) -> tuple[int, ...]:
    """The most likely width of every layer: ``candidates[l][argmax alpha_l]``."""
    candidates = _check_candidates(candidates)
    if len(alpha) != len(candidates):
        raise ValueError(f"alpha has {len(alpha)} layers, candidates {len(candidates)}")
    return tuple(
        int(layer[int(np.argmax(np.asarray(a)))])
        for a, layer in zip(alpha, candidates, strict=True)
    )


def magnitude_prune(model: CNN, num_parameters: int) -> CNN:
    """Filter pruning of a trained :class:`CNN` to at most ``num_parameters`` parameters.

    Every filter (output channel) is scored by the L1 norm of its kernel divided by the
    mean of that norm over its layer, so layers of different fan-in compare; filters are
    removed from the lowest score up (each layer keeps at least one) until the count is at
    most ``num_parameters``. The surviving weights are kept (fine-tune afterwards).
    """
    if not isinstance(model, CNN):
        raise TypeError(f"model must be a CNN, got {type(model).__name__}")
    in_channels = model.convs[0].in_channels
    num_classes = model.head.out_features
    minimum = count_parameters(
        [1] * len(model.convs), in_channels=in_channels, num_classes=num_classes
    )
    if num_parameters < minimum:
        raise ValueError(
            f"num_parameters={num_parameters} is below the smallest network ({minimum})"
        )
    scores = []
    for layer, conv in enumerate(model.convs):
        l1 = np.abs(np.asarray(conv.weight)).sum(axis=(1, 2, 3))
        scores += [(s, layer, c) for c, s in enumerate(l1 / l1.mean())]
    keep = [set(range(conv.out_channels)) for conv in model.convs]
    widths = lambda: [len(k) for k in keep]
    for _, layer, channel in sorted(scores):
        if count_parameters(widths(), in_channels=in_channels, num_classes=num_classes) <= (
            num_parameters
        ):
            break
        if len(keep[layer]) > 1:
            keep[layer].discard(channel)
    kept = [np.array(sorted(k)) for k in keep]
    convs, prev = [], np.arange(in_channels)
    key = jax.random.key(0)  # placeholder initialisation, overwritten below
    for conv, idx in zip(model.convs, kept, strict=True):
        dtype = conv.weight.dtype
        new = eqx.nn.Conv2d(
            len(prev), len(idx), 3, stride=conv.stride, padding=conv.padding, dtype=dtype, key=key
        )
        weights = (conv.weight[idx][:, prev], conv.bias[idx])
        convs.append(eqx.tree_at(lambda c: (c.weight, c.bias), new, weights))
        prev = idx
    head = eqx.nn.Linear(len(prev), num_classes, dtype=model.head.weight.dtype, key=key)
    head = eqx.tree_at(
        lambda h: (h.weight, h.bias), head, (model.head.weight[:, prev], model.head.bias)
    )
    return eqx.tree_at(lambda m: (m.convs, m.head), model, (tuple(convs), head))
