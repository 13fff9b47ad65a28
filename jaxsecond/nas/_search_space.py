"""DARTS-style search space: candidate ops, mixed ops, cells, networks and genotypes.

A cell takes two inputs (the outputs of the two previous cells, or the stem) and has
``num_nodes`` intermediate nodes; node ``i`` sums one edge from every predecessor (the
two inputs and nodes ``0 .. i-1``), so a cell has ``2 num_nodes + num_nodes (num_nodes -
1) / 2`` edges. In the search network every edge is a :class:`MixedOp`, a softmax-weighted
sum of all candidate ops; its output is the concatenation of the intermediate nodes.

The architecture parameters are not part of the network: ``alpha`` (shape ``[num_edges,
num_ops]``, shared by all cells) is passed to the call, ``network(x, alpha)``, so a search
loss is naturally ``loss(network, alpha, batch)``. Discretising keeps, for each node, the
two incoming edges with the strongest non-``none`` op and that op (:func:`discretise`);
the resulting :class:`Genotype` serialises to JSON and builds a :class:`DiscreteNetwork`
to be trained from scratch.

Inputs are single examples (``[channels, height, width]`` for the image op set,
``[features]`` for the vector op set); ``jax.vmap`` over a batch. Conv ops are
ReLU - conv - normalisation, with a parameter-free per-example normalisation (layer
norm without affine parameters) where DARTS uses batch norm, so the modules stay
stateless.

Reference: H. Liu, K. Simonyan, Y. Yang, "DARTS: Differentiable Architecture Search",
ICLR 2019.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxsecond._checks import check_count

IMAGE_OP_NAMES = (
    "none",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
    "max_pool_3x3",
    "avg_pool_3x3",
)
VECTOR_OP_NAMES = (
    "none",
    "skip_connect",
    "linear",
    "linear_relu",
    "linear_tanh",
    "linear_sigmoid",
)
_KINDS = {"image": IMAGE_OP_NAMES, "vector": VECTOR_OP_NAMES}
_ACTIVATIONS: dict[str, Callable] = {
    "identity": lambda x: x,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
}


# --------------------------------------------------------------------------- ops


def _normalise(x, eps=1e-5):
    """Layer normalisation of one example over all its axes, without parameters.

    Not per channel (instance norm): that would zero every channel's spatial mean, which
    is all that global average pooling passes on to the classifier.
    """
    mean = jnp.mean(x)
    var = jnp.var(x)
    return (x - mean) * jax.lax.rsqrt(var + eps)


class Zero(eqx.Module):
    """The ``none`` op: no connection."""

    def __call__(self, x):
        return jnp.zeros_like(x)


class Identity(eqx.Module):
    """The ``skip_connect`` op."""

    def __call__(self, x):
        return x


def _conv_same(x, kernel, dilation: int = 1):
    """ "Same"-padded stride-1 convolution of one example ``x`` ([C, H, W]) with an OIHW
    ``kernel``."""
    size = kernel.shape[-1]
    pad = dilation * (size - 1) // 2
    out = jax.lax.conv_general_dilated(
        x[None], kernel, (1, 1), [(pad, pad), (pad, pad)], rhs_dilation=(dilation, dilation)
    )
    return out[0]


class SepConv(eqx.Module):
    """ReLU - depthwise ``k x k`` conv (dilation ``d``) - pointwise 1x1 conv - normalise.

    DARTS stacks this block twice for ``sep_conv``; one block is used here for both
    ``sep_conv`` (``d = 1``) and ``dil_conv`` (``d = 2``), which keeps 8x8 searches cheap.
    Weights: ``depthwise`` ``[C, k, k]``, ``pointwise`` ``[C_out, C_in]`` (no biases: the
    normalisation removes them), initialised like ``equinox.nn.Conv2d``.

    The two linear maps are applied as one dense convolution with the kernel
    ``pointwise[o, c] * depthwise[c]``: on CPU, XLA's grouped (depthwise) convolutions
    and their gradients are several times slower than a dense one at these sizes.
    """

    depthwise: jax.Array
    pointwise: jax.Array
    dilation: int = eqx.field(static=True)

    def __init__(self, channels: int, kernel_size: int, dilation: int, *, key, dtype=None):
        k1, k2 = jax.random.split(key)
        dtype = dtype or jnp.result_type(float)
        bound = 1 / kernel_size  # 1 / sqrt(fan_in), fan_in = k * k
        self.depthwise = jax.random.uniform(
            k1, (channels, kernel_size, kernel_size), dtype, -bound, bound
        )
        bound = 1 / np.sqrt(channels)
        self.pointwise = jax.random.uniform(k2, (channels, channels), dtype, -bound, bound)
        self.dilation = dilation

    def __call__(self, x):
        kernel = self.pointwise[:, :, None, None] * self.depthwise[None]
        return _normalise(_conv_same(jax.nn.relu(x), kernel, self.dilation))


class Pool(eqx.Module):
    """3x3 max or average pooling, stride 1; the average excludes the padding (as DARTS)."""

    kind: str = eqx.field(static=True)

    def __call__(self, x):
        window, strides, padding = (1, 3, 3), (1, 1, 1), ((0, 0), (1, 1), (1, 1))
        if self.kind == "max":
            return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, padding)
        total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, padding)
        count = jax.lax.reduce_window(
            jnp.ones_like(x[:1]), 0.0, jax.lax.add, window, strides, padding
        )
        return total / count


class LinearOp(eqx.Module):
    """A dense layer ``features -> features`` followed by an activation (vector op set)."""

    linear: eqx.nn.Linear
    activation: str = eqx.field(static=True)

    def __init__(self, features: int, activation: str, *, key, dtype=None):
        self.linear = eqx.nn.Linear(features, features, dtype=dtype, key=key)
        self.activation = activation

    def __call__(self, x):
        return _ACTIVATIONS[self.activation](self.linear(x))


class Preprocess(eqx.Module):
    """ReLU - 1x1 conv - normalise (image) or ReLU - dense (vector), to the cell's
    channel count. ``weight`` is ``[channels, in_channels]``."""

    weight: jax.Array
    bias: jax.Array | None
    kind: str = eqx.field(static=True)

    def __init__(self, kind: str, in_channels: int, channels: int, *, key, dtype=None):
        dtype = dtype or jnp.result_type(float)
        bound = 1 / np.sqrt(in_channels)
        kw, kb = jax.random.split(key)
        self.weight = jax.random.uniform(kw, (channels, in_channels), dtype, -bound, bound)
        # Images: the normalisation removes a bias.
        self.bias = (
            None if kind == "image" else jax.random.uniform(kb, (channels,), dtype, -bound, bound)
        )
        self.kind = kind

    def __call__(self, x):
        x = jax.nn.relu(x)
        if self.kind == "image":
            return _normalise(jnp.einsum("oc,chw->ohw", self.weight, x))
        return self.weight @ x + self.bias


def make_op(kind: str, name: str, channels: int, *, key, dtype=None) -> eqx.Module:
    """The candidate op ``name`` of op set ``kind`` (``"image"`` or ``"vector"``)."""
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return Identity()
    if kind == "image":
        if name.startswith(("sep_conv_", "dil_conv_")):
            size = int(name[-1])
            dilation = 2 if name.startswith("dil") else 1
            return SepConv(channels, size, dilation, key=key, dtype=dtype)
        if name in ("max_pool_3x3", "avg_pool_3x3"):
            return Pool(name[:3])
    elif kind == "vector":
        if name == "linear":
            return LinearOp(channels, "identity", key=key, dtype=dtype)
        if name.startswith("linear_"):
            return LinearOp(channels, name[len("linear_") :], key=key, dtype=dtype)
    raise ValueError(f"op {name!r} is not an op of the {kind!r} op set {_KINDS.get(kind)}")


@dataclasses.dataclass(frozen=True)
class OpSet:
    """A set of candidate operations: ``kind`` (``"image"`` for ``[C, H, W]`` inputs,
    ``"vector"`` for ``[D]``) and the op names, in the order of ``alpha``'s last axis.

    Example:
        >>> from jaxsecond.nas import IMAGE_OPS
        >>> IMAGE_OPS.select(["none", "skip_connect", "sep_conv_3x3"]).ops
        ('none', 'skip_connect', 'sep_conv_3x3')
    """

    kind: str
    ops: tuple[str, ...]

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"op set kind must be one of {tuple(_KINDS)}, got {self.kind!r}")
        object.__setattr__(self, "ops", tuple(self.ops))
        if not self.ops:
            raise ValueError("ops: the op set is empty; give at least one candidate operation")
        unknown = [op for op in self.ops if op not in _KINDS[self.kind]]
        if unknown:
            raise ValueError(
                f"ops: {unknown} are not {self.kind} ops; choose from {_KINDS[self.kind]}"
            )
        if len(set(self.ops)) != len(self.ops):
            raise ValueError(f"ops: duplicate names in {self.ops}")

    def select(self, names: Sequence[str]) -> OpSet:
        """The op set restricted to ``names`` (in that order)."""
        return OpSet(self.kind, tuple(names))

    def __len__(self) -> int:
        return len(self.ops)


IMAGE_OPS = OpSet("image", IMAGE_OP_NAMES)
"""DARTS's eight candidate operations for ``[C, H, W]`` images: ``none``,
``skip_connect``, separable and dilated 3x3 and 5x5 convolutions, 3x3 max and average
pooling."""
VECTOR_OPS = OpSet("vector", VECTOR_OP_NAMES)
"""Candidate operations for ``[D]`` vectors: ``none``, ``skip_connect`` and dense
layers followed by no activation, ReLU, tanh or a sigmoid."""


def _as_op_set(op_set) -> OpSet:
    if isinstance(op_set, OpSet):
        return op_set
    raise TypeError(f"op_set must be an OpSet (e.g. IMAGE_OPS), got {type(op_set).__name__}")


def num_edges(num_nodes: int) -> int:
    """Edges of a cell with ``num_nodes`` intermediate nodes (node ``i`` has ``i + 2``)."""
    return 2 * num_nodes + num_nodes * (num_nodes - 1) // 2


# --------------------------------------------------------------------------- search modules


class MixedOp(eqx.Module):
    """The softmax-weighted sum of all candidate ops on one edge.

    ``mixed(x, alpha) = sum_k softmax(alpha)_k op_k(x)`` with ``alpha`` of shape
    ``[num_ops]``; the ``none`` op contributes nothing and is skipped.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxsecond.nas import MixedOp, VECTOR_OPS
        >>> op = MixedOp(VECTOR_OPS.select(["none", "skip_connect"]), 3, key=jax.random.key(0))
        >>> print(op(jnp.ones(3), jnp.array([0.0, 0.0])))  # half of the identity
        [0.5 0.5 0.5]
    """

    ops: tuple[eqx.Module, ...]
    names: tuple[str, ...] = eqx.field(static=True)

    def __init__(self, op_set: OpSet, channels: int, *, key, dtype=None):
        op_set = _as_op_set(op_set)
        keys = jax.random.split(key, len(op_set))
        self.names = op_set.ops
        self.ops = tuple(
            make_op(op_set.kind, name, channels, key=k, dtype=dtype)
            for name, k in zip(op_set.ops, keys, strict=True)
        )

    def __call__(self, x, alpha):
        if alpha.shape != (len(self.ops),):
            raise ValueError(f"alpha must have shape ({len(self.ops)},), got {alpha.shape}")
        weights = jax.nn.softmax(alpha)
        out = jnp.zeros_like(x)
        for w, name, op in zip(weights, self.names, self.ops, strict=True):
            if name != "none":  # zero output: skip the work
                out = out + w.astype(x.dtype) * op(x)
        return out


class Cell(eqx.Module):
    """A DARTS cell in search mode: two inputs, ``num_nodes`` intermediate nodes, a
    :class:`MixedOp` on every edge; the output concatenates the intermediate nodes
    (``num_nodes * channels`` channels).

    ``cell(s0, s1, alpha)`` with ``alpha`` of shape ``[num_edges(num_nodes), num_ops]``;
    edges are ordered node by node, each node's inputs as ``(s0, s1, node 0, ...)``.
    """

    preprocess0: Preprocess
    preprocess1: Preprocess
    edges: tuple[MixedOp, ...]
    num_nodes: int = eqx.field(static=True)

    def __init__(
        self,
        op_set: OpSet,
        in_channels0: int,
        in_channels1: int,
        channels: int,
        num_nodes: int,
        *,
        key,
        dtype=None,
    ):
        op_set = _as_op_set(op_set)
        check_count(num_nodes, "num_nodes")
        k0, k1, ke = jax.random.split(key, 3)
        self.preprocess0 = Preprocess(op_set.kind, in_channels0, channels, key=k0, dtype=dtype)
        self.preprocess1 = Preprocess(op_set.kind, in_channels1, channels, key=k1, dtype=dtype)
        keys = jax.random.split(ke, num_edges(num_nodes))
        self.edges = tuple(MixedOp(op_set, channels, key=k, dtype=dtype) for k in keys)
        self.num_nodes = num_nodes

    def __call__(self, s0, s1, alpha):
        expected = (len(self.edges), len(self.edges[0].ops))
        if alpha.shape != expected:
            raise ValueError(f"alpha must have shape {expected}, got {alpha.shape}")
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        edge = 0
        for _ in range(self.num_nodes):
            node = sum(self.edges[edge + j](h, alpha[edge + j]) for j, h in enumerate(states))
            edge += len(states)
            states.append(node)
        return jnp.concatenate(states[2:], axis=0)


def _stem(kind, in_channels, channels, key, dtype):
    if kind == "image":
        return eqx.nn.Conv2d(in_channels, channels, 3, padding=1, dtype=dtype, key=key)
    return eqx.nn.Linear(in_channels, channels, dtype=dtype, key=key)


POOLED_SIZE = 4


def _features(kind, x):
    """Images: average pooling to a ``4 x 4`` grid, flattened (global average pooling
    would discard where in a small image a feature is; DARTS has reduction cells for
    that). Vectors are already features."""
    if kind != "image":
        return x
    c, h, w = x.shape
    if h % POOLED_SIZE or w % POOLED_SIZE:
        raise ValueError(f"image sides must be multiples of {POOLED_SIZE}, got {h}x{w}")
    x = x.reshape(c, POOLED_SIZE, h // POOLED_SIZE, POOLED_SIZE, w // POOLED_SIZE)
    return jnp.mean(x, axis=(2, 4)).reshape(-1)


def _feature_count(kind, channels):
    return channels * POOLED_SIZE**2 if kind == "image" else channels


class Network(eqx.Module):
    """The search network: stem, ``num_cells`` search :class:`Cell` s sharing one
    ``alpha``, average pooling to a 4x4 grid (images; sides must be multiples of 4) and
    a linear classifier.

    Call as ``network(x, alpha)`` on one example; ``alpha`` has shape
    :attr:`arch_shape` and may be made by :meth:`init_arch`.

    Example:
        >>> import jax
        >>> from jaxsecond.nas import IMAGE_OPS, Network
        >>> net = Network(IMAGE_OPS, in_channels=1, channels=4, num_classes=10,
        ...               num_cells=1, num_nodes=2, key=jax.random.key(0))
        >>> alpha = net.init_arch(jax.random.key(1))
        >>> alpha.shape, net(jax.numpy.zeros((1, 8, 8)), alpha).shape
        ((5, 8), (10,))
    """

    stem: eqx.Module
    cells: tuple[Cell, ...]
    head: eqx.nn.Linear
    kind: str = eqx.field(static=True)
    ops: tuple[str, ...] = eqx.field(static=True)
    num_nodes: int = eqx.field(static=True)

    def __init__(
        self,
        op_set: OpSet,
        *,
        in_channels: int,
        channels: int,
        num_classes: int,
        num_cells: int = 2,
        num_nodes: int = 4,
        key,
        dtype=None,
    ):
        op_set = _as_op_set(op_set)
        for name, value in (
            ("in_channels", in_channels),
            ("channels", channels),
            ("num_classes", num_classes),
            ("num_cells", num_cells),
            ("num_nodes", num_nodes),
        ):
            check_count(value, name)
        ks, kh, *kc = jax.random.split(key, 2 + num_cells)
        self.stem = _stem(op_set.kind, in_channels, channels, ks, dtype)
        cells, c_prev_prev, c_prev = [], channels, channels
        for k in kc:
            cells.append(Cell(op_set, c_prev_prev, c_prev, channels, num_nodes, key=k, dtype=dtype))
            c_prev_prev, c_prev = c_prev, num_nodes * channels
        self.cells = tuple(cells)
        self.head = eqx.nn.Linear(
            _feature_count(op_set.kind, c_prev), num_classes, dtype=dtype, key=kh
        )
        self.kind, self.ops, self.num_nodes = op_set.kind, op_set.ops, num_nodes

    @property
    def arch_shape(self) -> tuple[int, int]:
        return (num_edges(self.num_nodes), len(self.ops))

    def init_arch(self, key, scale: float = 1e-3, dtype=None):
        """DARTS's initialisation: ``scale * N(0, 1)`` of shape :attr:`arch_shape`."""
        dtype = dtype or self.head.weight.dtype
        return scale * jax.random.normal(key, self.arch_shape, dtype)

    def __call__(self, x, alpha):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, alpha)
        return self.head(_features(self.kind, s1))


# --------------------------------------------------------------------------- genotypes


@dataclasses.dataclass(frozen=True)
class Genotype:
    """A discrete cell: for every intermediate node, its incoming ``(op, input)`` pairs
    (inputs numbered ``0, 1`` for the cell inputs and ``2 + i`` for node ``i``), plus the
    op set's kind. The cell output concatenates all intermediate nodes, as in DARTS.

    Example:
        >>> from jaxsecond.nas import Genotype
        >>> g = Genotype("image", ((("sep_conv_3x3", 0), ("skip_connect", 1)),))
        >>> Genotype.from_json(g.to_json()) == g
        True
    """

    kind: str
    nodes: tuple[tuple[tuple[str, int], ...], ...]

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {tuple(_KINDS)}, got {self.kind!r}")
        nodes = tuple(tuple((str(op), int(j)) for op, j in node) for node in self.nodes)
        object.__setattr__(self, "nodes", nodes)
        if not nodes:
            raise ValueError("nodes: a genotype needs at least one intermediate node")
        for i, node in enumerate(nodes):
            if not node:
                raise ValueError(f"nodes[{i}] has no incoming edge")
            for op, j in node:
                if op not in _KINDS[self.kind] or op == "none":
                    raise ValueError(f"nodes[{i}]: {op!r} is not a {self.kind} op (or is none)")
                if not 0 <= j < i + 2:
                    raise ValueError(f"nodes[{i}]: input {j} is not a predecessor (0..{i + 1})")

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    def ops(self) -> list[str]:
        """All chosen ops, node by node."""
        return [op for node in self.nodes for op, _ in node]

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "nodes": [[list(e) for e in n] for n in self.nodes]})

    @classmethod
    def from_json(cls, text: str) -> Genotype:
        data = json.loads(text)
        if not isinstance(data, dict) or set(data) != {"kind", "nodes"}:
            raise ValueError("text must be a JSON object with keys 'kind' and 'nodes'")
        return cls(data["kind"], tuple(tuple(tuple(e) for e in n) for n in data["nodes"]))


def discretise(alpha, op_set: OpSet, *, edges_per_node: int = 2) -> Genotype:
    """The genotype of ``alpha`` (``[num_edges, num_ops]``), as in DARTS.

    Per edge, the weights are ``softmax(alpha[e])`` over all ops; an edge's strength is its
    largest non-``none`` weight and its op the corresponding op. Each node keeps its
    ``edges_per_node`` strongest incoming edges, strongest first (ties: the earlier
    input). An edge dominated by ``none`` still contributes its best other op, as in DARTS.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.nas import IMAGE_OPS, discretise
        >>> ops = IMAGE_OPS.select(["none", "skip_connect", "avg_pool_3x3"])
        >>> alpha = jnp.array([[5.0, 1.0, 0.0], [0.0, 0.0, 2.0]])  # node 0: edges from 0, 1
        >>> discretise(alpha, ops).nodes  # edge 1 is stronger (0.79 vs 0.02)
        ((('avg_pool_3x3', 1), ('skip_connect', 0)),)
    """
    op_set = _as_op_set(op_set)
    check_count(edges_per_node, "edges_per_node")
    alpha = np.asarray(alpha, dtype=np.float64)
    candidates = [k for k, name in enumerate(op_set.ops) if name != "none"]
    if not candidates:
        raise ValueError("op_set: needs at least one op other than 'none' to discretise")
    if alpha.ndim != 2 or alpha.shape[1] != len(op_set):
        raise ValueError(f"alpha must have shape [num_edges, {len(op_set)}], got {alpha.shape}")
    num_nodes = 0
    while num_edges(num_nodes) < alpha.shape[0]:
        num_nodes += 1
    if num_edges(num_nodes) != alpha.shape[0]:
        raise ValueError(f"alpha has {alpha.shape[0]} rows, not the edge count of any cell")
    weights = np.exp(alpha - alpha.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    nodes, start = [], 0
    for i in range(num_nodes):
        w = weights[start : start + i + 2][:, candidates]
        strength = w.max(axis=1)
        keep = np.argsort(-strength, kind="stable")[:edges_per_node]
        nodes.append(tuple((op_set.ops[candidates[int(np.argmax(w[j]))]], int(j)) for j in keep))
        start += i + 2
    return Genotype(op_set.kind, tuple(nodes))


class DiscreteCell(eqx.Module):
    """A cell built from a :class:`Genotype`: each node sums its chosen ops."""

    preprocess0: Preprocess
    preprocess1: Preprocess
    ops: tuple[tuple[eqx.Module, ...], ...]
    inputs: tuple[tuple[int, ...], ...] = eqx.field(static=True)

    def __init__(self, genotype, in_channels0, in_channels1, channels, *, key, dtype=None):
        k0, k1, ke = jax.random.split(key, 3)
        self.preprocess0 = Preprocess(genotype.kind, in_channels0, channels, key=k0, dtype=dtype)
        self.preprocess1 = Preprocess(genotype.kind, in_channels1, channels, key=k1, dtype=dtype)
        keys = iter(jax.random.split(ke, len(genotype.ops())))
        self.ops = tuple(
            tuple(make_op(genotype.kind, op, channels, key=next(keys), dtype=dtype) for op, _ in n)
            for n in genotype.nodes
        )
        self.inputs = tuple(tuple(j for _, j in n) for n in genotype.nodes)

    def __call__(self, s0, s1):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for ops, inputs in zip(self.ops, self.inputs, strict=True):
            states.append(sum(op(states[j]) for op, j in zip(ops, inputs, strict=True)))
        return jnp.concatenate(states[2:], axis=0)


class DiscreteNetwork(eqx.Module):
    """The network of a :class:`Genotype`: the search :class:`Network`'s stem, cells
    and head with every mixed op replaced by the genotype's choice. Call as
    ``network(x)`` on one example; train it from scratch (e.g. with
    :func:`train_classifier`).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxsecond.nas import DiscreteNetwork, Genotype
        >>> g = Genotype("image", ((("sep_conv_3x3", 0), ("skip_connect", 1)),
        ...                        (("max_pool_3x3", 2), ("dil_conv_3x3", 0))))
        >>> net = DiscreteNetwork(g, in_channels=1, channels=4, num_classes=10,
        ...                       num_cells=2, key=jax.random.key(0))
        >>> net(jnp.zeros((1, 8, 8))).shape
        (10,)
    """

    stem: eqx.Module
    cells: tuple[DiscreteCell, ...]
    head: eqx.nn.Linear
    genotype: Genotype = eqx.field(static=True)

    def __init__(
        self,
        genotype: Genotype,
        *,
        in_channels: int,
        channels: int,
        num_classes: int,
        num_cells: int = 2,
        key,
        dtype=None,
    ):
        if not isinstance(genotype, Genotype):
            raise TypeError(f"genotype must be a Genotype, got {type(genotype).__name__}")
        for name, value in (
            ("in_channels", in_channels),
            ("channels", channels),
            ("num_classes", num_classes),
            ("num_cells", num_cells),
        ):
            check_count(value, name)
        ks, kh, *kc = jax.random.split(key, 2 + num_cells)
        self.stem = _stem(genotype.kind, in_channels, channels, ks, dtype)
        n = genotype.num_nodes
        cells, c_prev_prev, c_prev = [], channels, channels
        for k in kc:
            cells.append(DiscreteCell(genotype, c_prev_prev, c_prev, channels, key=k, dtype=dtype))
            c_prev_prev, c_prev = c_prev, n * channels
        self.cells = tuple(cells)
        self.head = eqx.nn.Linear(
            _feature_count(genotype.kind, c_prev), num_classes, dtype=dtype, key=kh
        )
        self.genotype = genotype

    def __call__(self, x):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.head(_features(self.genotype.kind, s1))
