"""Curvature: jaxsecond's Hessian products, Hutchinson diagonal and Lanczos versus baselines.

Four comparisons, all in float32 and jitted, each on the same problem in the same run:

a. ``jaxsecond.hvp`` against ``jax.grad`` (the cost of one Hessian-vector product in
   gradients; goal <= 3x) and against the plain forward-over-reverse recipe
   ``jax.jvp(jax.grad(f), (x,), (v,))``, on an MLP and a small CNN (equinox modules);
b. ``jaxsecond.grad_and_hvp`` against ``jax.grad`` and ``jaxsecond.hvp`` called one after
   the other (goal <= 0.8x);
c. the Hutchinson diagonal with 64 Rademacher probes: ``jaxsecond.hutchinson_diagonal``
   against matfree's Monte-Carlo diagonal estimator driven by the same Hessian-vector
   product, and against a Python loop over probes calling a jitted product (time goal:
   ours / matfree <= 1.1); then the error of both estimators against the exact diagonal
   over many seeds, with the variance Rademacher probes must have;
d. the top Hessian eigenvalue: ``jaxsecond.hessian_eigenvalues(k=1)`` (Lanczos) against
   power iteration as PyHessian runs it, to the same accuracy against ``eigh`` of the
   explicit Hessian: products used and time.

Run: ``python benchmarks/bench_curvature.py [--quick]`` (needs the ``bench`` extra, which
provides matfree).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import statistics
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import jaxsecond
from jaxsecond import _harness

PACKAGES = ("matfree", "equinox")  # peer versions recorded with the results
TITLE = "Curvature: Hessian-vector products, Hutchinson diagonal, top eigenvalue"

NUM_PROBES = 64  # Hutchinson probes in table c
CHUNK = 16  # probes per vmapped chunk for the chunked variants
HVP_GOAL = 3.0  # hvp time / grad time
FUSED_GOAL = 0.8  # grad_and_hvp time / (grad + hvp) time
MATFREE_GOAL = 1.1  # our Hutchinson time / matfree's
PYHESSIAN_TOL = 1e-3  # PyHessian's default relative tolerance of power iteration
PYHESSIAN_MAX_ITERS = 100  # PyHessian's default maxIter
MAX_LANCZOS_ITERS = 200


# --------------------------------------------------------------------------- problems


@dataclasses.dataclass(frozen=True)
class Problem:
    """A scalar training loss ``loss(params, batch)`` with its parameters and data.

    ``params`` holds the floating-point arrays of an equinox model (``None`` elsewhere);
    the rest of the model is closed over by ``loss``.
    """

    name: str
    loss: Callable
    params: Any
    batch: tuple
    description: str

    def fun(self, batch: tuple | None = None) -> Callable:
        """``params -> scalar`` on ``batch`` (default: the problem's own batch)."""
        batch = self.batch if batch is None else batch
        return lambda p: self.loss(p, batch)

    @property
    def num_params(self) -> int:
        return int(sum(x.size for x in jax.tree.leaves(self.params)))

    def astype(self, dtype) -> Problem:
        """The same problem with floating-point parameters and inputs cast to ``dtype``."""

        def cast(x):
            return jnp.asarray(x, dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

        return dataclasses.replace(
            self, params=jax.tree.map(cast, self.params), batch=jax.tree.map(cast, self.batch)
        )


def _cross_entropy(logits, labels):
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def _split_model(model) -> tuple[Any, Callable]:
    params, static = eqx.partition(model, eqx.is_inexact_array)
    return params, lambda p: eqx.combine(p, static)


def mlp_problem(
    in_size: int = 64,
    width: int = 256,
    depth: int = 2,
    out_size: int = 10,
    batch: int = 256,
    *,
    seed: int = 0,
    dtype=jnp.float32,
) -> Problem:
    """Softmax cross-entropy of a tanh ``eqx.nn.MLP`` on random inputs and labels."""
    k_model, k_x, k_y = jax.random.split(jax.random.key(seed), 3)
    model = eqx.nn.MLP(in_size, out_size, width, depth, activation=jnp.tanh, key=k_model)
    params, rebuild = _split_model(model)
    x = jax.random.normal(k_x, (batch, in_size))
    y = jax.random.randint(k_y, (batch,), 0, out_size)

    def loss(p, data):
        xs, ys = data
        return _cross_entropy(jax.vmap(rebuild(p))(xs), ys)

    sizes = "-".join(str(s) for s in (in_size, *([width] * depth), out_size))
    problem = Problem(f"MLP {sizes}", loss, params, (x, y), f"tanh MLP {sizes}, batch {batch}")
    return problem.astype(dtype)


class SmallCNN(eqx.Module):
    """Two 3x3 convolutions (the second with stride 2), ReLU, and a linear head."""

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(self, side: int, channels: int, out_size: int, *, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, channels, 3, padding=1, key=k1)
        self.conv2 = eqx.nn.Conv2d(channels, channels, 3, stride=2, padding=1, key=k2)
        self.head = eqx.nn.Linear(channels * ((side + 1) // 2) ** 2, out_size, key=k3)

    def __call__(self, x):  # x: [1, side, side]
        x = jax.nn.relu(self.conv1(x))
        x = jax.nn.relu(self.conv2(x))
        return self.head(x.reshape(-1))


def cnn_problem(
    side: int = 16,
    channels: int = 16,
    out_size: int = 10,
    batch: int = 128,
    *,
    seed: int = 0,
    dtype=jnp.float32,
) -> Problem:
    """Softmax cross-entropy of :class:`SmallCNN` on random ``side x side x 1`` images."""
    k_model, k_x, k_y = jax.random.split(jax.random.key(seed), 3)
    params, rebuild = _split_model(SmallCNN(side, channels, out_size, key=k_model))
    x = jax.random.normal(k_x, (batch, 1, side, side))
    y = jax.random.randint(k_y, (batch,), 0, out_size)

    def loss(p, data):
        xs, ys = data
        return _cross_entropy(jax.vmap(rebuild(p))(xs), ys)

    description = (
        f"CNN conv3x3({channels})-conv3x3/2({channels})-linear({out_size}) on "
        f"{side}x{side}x1, batch {batch}"
    )
    return Problem(f"CNN {side}x{side}x1", loss, params, (x, y), description).astype(dtype)


def random_like(key, tree, distribution: str = "normal"):
    """A pytree like ``tree`` with independent normal or Rademacher entries per leaf."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    draw = jax.random.rademacher if distribution == "rademacher" else jax.random.normal
    return jax.tree.unflatten(
        treedef,
        [draw(k, leaf.shape, dtype=leaf.dtype) for k, leaf in zip(keys, leaves, strict=True)],
    )


# --------------------------------------------------------------------------- exact references


def exact_hessian(problem: Problem, *, chunk: int = 128) -> np.ndarray:
    """The explicit Hessian of ``problem`` in float64 (flattened parameters), one block of
    ``chunk`` Hessian-vector products at a time."""
    with jax.enable_x64(True):
        p64 = problem.astype(jnp.float64)
        flat, unravel = ravel_pytree(p64.params)
        fun = p64.fun()

        def column(e):
            return ravel_pytree(jax.jvp(jax.grad(fun), (unravel(flat),), (unravel(e),))[1])[0]

        eye = jnp.eye(flat.size, dtype=jnp.float64)
        H = jax.jit(lambda E: jax.lax.map(column, E, batch_size=chunk))(eye)
        H = np.asarray(H)
    return 0.5 * (H + H.T)


def exact_eigenvalues(problem: Problem, H: np.ndarray | None = None) -> np.ndarray:
    """Eigenvalues of the explicit float64 Hessian ``H`` (computed when not given), largest
    first."""
    return np.linalg.eigvalsh(exact_hessian(problem) if H is None else H)[::-1]


# --------------------------------------------------------------------------- timing


def interleaved_timings(
    fns: dict[str, Callable], args: tuple, *, rounds: int, repeats: int
) -> dict[str, tuple[float, np.ndarray]]:
    """``name -> (compile seconds, per-round median seconds)``, timing the functions in turn.

    Each round times every function once with ``_harness.time_jitted``; alternating keeps
    a change in the load of a shared machine from landing on one side only, and the
    spread of the per-round ratios shows how much of a difference is noise.
    """
    samples: dict[str, list] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            # The untimed first call of every round (compilation in the first) is the warmup.
            samples[name].append(_harness.time_jitted(fn, *args, repeats=repeats, warmup=0))
    return {
        name: (timings[0].compile_s, np.array([t.median_s for t in timings]))
        for name, timings in samples.items()
    }


def time_python(fn: Callable, *args: Any, repeats: int) -> float:
    """Median wall-clock seconds of ``fn(*args)`` (not jitted as a whole), after one call."""
    jax.block_until_ready(fn(*args))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def ratio(num: np.ndarray, den: np.ndarray) -> float:
    """Median over rounds of the per-round ratio ``num / den``: the two were timed back to
    back in each round, so load that changes between rounds cancels."""
    return float(np.median(np.asarray(num) / np.asarray(den)))


def _ratio_cell(num: np.ndarray, den: np.ndarray) -> str:
    ratios = np.asarray(num) / np.asarray(den)
    return f"{ratio(num, den):.2f} ({np.min(ratios):.2f}-{np.max(ratios):.2f})"


# --------------------------------------------------------------------------- a, b: products


def product_functions(problem: Problem) -> dict[str, Callable]:
    """Jitted ``(params, batch, vector) -> ...`` for grad, our hvp and the other recipes."""
    loss = problem.loss

    def grad(p, b, v):
        return jax.grad(loss)(p, b)

    def hvp(p, b, v):
        return jaxsecond.hvp(lambda q: loss(q, b), p, v)

    def plain_hvp(p, b, v):
        return jax.jvp(jax.grad(lambda q: loss(q, b)), (p,), (v,))[1]

    def fused(p, b, v):
        return jaxsecond.grad_and_hvp(lambda q: loss(q, b), p, v)

    def both(p, b, v):  # gradient and product as two computations in one program
        return jax.grad(loss)(p, b), jaxsecond.hvp(lambda q: loss(q, b), p, v)

    return {
        name: jax.jit(fn)
        for name, fn in dict(
            grad=grad, hvp=hvp, plain_hvp=plain_hvp, fused=fused, both=both
        ).items()
    }


def product_errors(problem: Problem, vector, fns: dict | None = None) -> dict[str, float]:
    """Relative max-abs differences of our products from the plain JAX recipes (``fns``:
    :func:`product_functions` of ``problem``, built here when not given)."""
    fns = product_functions(problem) if fns is None else fns
    args = (problem.params, problem.batch, vector)
    g, hv, ref_hv = fns["grad"](*args), fns["hvp"](*args), fns["plain_hvp"](*args)
    value, g2, hv2 = fns["fused"](*args)

    return {
        "hvp": _harness.max_rel_error(hv, ref_hv),
        "fused_grad": _harness.max_rel_error(g2, g),
        "fused_hvp": _harness.max_rel_error(hv2, ref_hv),
        "fused_value": abs(float(value) - float(problem.loss(problem.params, problem.batch))),
    }


def _products_section(problems: list[Problem], rounds: int, repeats: int) -> str:
    rows_a, rows_b, lost_a, lost_b, anatomy = [], [], [], [], []
    for problem in problems:
        vector = random_like(jax.random.key(1), problem.params)
        fns = product_functions(problem)
        args = (problem.params, problem.batch, vector)
        t = interleaved_timings(fns, args, rounds=rounds, repeats=repeats)
        r = {name: v[1] for name, v in t.items()}
        errors = product_errors(problem, vector, fns)
        hvp_ratio = ratio(r["hvp"], r["grad"])
        if hvp_ratio > HVP_GOAL:
            lost_a.append(f"{problem.name} ({hvp_ratio:.2f}x)")
        rows_a.append(
            [
                problem.name,
                f"{problem.num_params:,}",
                _harness.fmt_seconds(np.median(r["grad"])),
                _harness.fmt_seconds(np.median(r["hvp"])),
                _ratio_cell(r["hvp"], r["grad"]),
                _harness.fmt_seconds(np.median(r["plain_hvp"])),
                _ratio_cell(r["hvp"], r["plain_hvp"]),
                f"{errors['hvp']:.1e}",
                f"{_harness.fmt_seconds(t['grad'][0])} / {_harness.fmt_seconds(t['hvp'][0])}",
            ]
        )
        separate = r["grad"] + r["hvp"]  # the two jitted calls, same round
        fused_ratio = ratio(r["fused"], separate)
        if fused_ratio > FUSED_GOAL:
            best = np.min(r["fused"] / separate)
            noise = ", within round-to-round noise" if best <= FUSED_GOAL else ""
            lost_b.append(
                f"{problem.name} ({fused_ratio:.3f}; per-round minimum {best:.2f}{noise})"
            )
        # fused - hvp: what returning the gradient adds to the product; the rest of a
        # gradient is what fusing saves.
        saved = 1 - np.median((r["fused"] - r["hvp"]) / r["grad"])
        anatomy.append(
            f"{problem.name}: h = {hvp_ratio:.2f}, fusing saves s = {saved:.0%} of a gradient "
            f"(needed for the goal: {(1 - FUSED_GOAL) * (1 + hvp_ratio):.0%})"
        )
        rows_b.append(
            [
                problem.name,
                _harness.fmt_seconds(np.median(r["fused"])),
                _harness.fmt_seconds(np.median(separate)),
                _ratio_cell(r["fused"], separate),
                _harness.fmt_seconds(np.median(r["both"])),
                _ratio_cell(r["fused"], r["both"]),
                f"{max(errors['fused_grad'], errors['fused_hvp']):.1e}",
            ]
        )
    table_a = _harness.markdown_table(
        [
            "problem",
            "parameters",
            "`jax.grad`",
            "`jaxsecond.hvp`",
            "hvp / grad (range over rounds)",
            "plain `jvp(grad)`",
            "ours / plain",
            "rel. diff. from plain",
            "compile (grad / hvp)",
        ],
        rows_a,
    )
    table_b = _harness.markdown_table(
        [
            "problem",
            "`grad_and_hvp`",
            "`grad` + `hvp` (two jitted calls)",
            "fused / separate (range)",
            "`grad` and `hvp` in one jit",
            "fused / one jit",
            "max rel. diff.",
        ],
        rows_b,
    )
    verdict_a = (
        f"Goal hvp / grad <= {HVP_GOAL:g}x: met on every problem."
        if not lost_a
        else f"Goal hvp / grad <= {HVP_GOAL:g}x NOT met for: " + ", ".join(lost_a) + "."
    )
    verdict_b = (
        f"Goal `grad_and_hvp` <= {FUSED_GOAL:g} x (grad + hvp): met on every problem."
        if not lost_b
        else f"Goal `grad_and_hvp` <= {FUSED_GOAL:g} x (grad + hvp) NOT met for: "
        + ", ".join(lost_b)
        + "."
    )
    problems_text = "; ".join(f"{p.name}: {p.description}" for p in problems)
    return "\n".join(
        [
            "### a. Hessian-vector product vs gradient",
            "",
            f"Problems (softmax cross-entropy, random inputs and labels): {problems_text}. "
            "Vector: standard normal. 'plain `jvp(grad)`' is the textbook "
            "forward-over-reverse product `jax.jvp(jax.grad(f), (x,), (v,))[1]` on the same "
            "problem, so 'ours / plain' is the overhead of jaxsecond's wrapper (1.00 = "
            f"none). Times: medians over {rounds} rounds alternating all five functions of "
            f"tables a and b ({repeats} timed calls each); ratios: median (range) of the "
            "per-round ratios. 'rel. diff.' is max |ours - plain| / max |plain|.",
            "",
            table_a,
            "",
            verdict_a,
            "",
            "### b. `grad_and_hvp` vs gradient and product separately",
            "",
            "'two jitted calls' is the per-round sum of the `jax.grad` and `jaxsecond.hvp` "
            "times above (what a user pays calling them one after the other); 'in one jit' "
            "puts both in one program, where XLA may share work between them. 'max rel. "
            "diff.' compares the fused gradient and product with `jax.grad` and the plain "
            "product.",
            "",
            table_b,
            "",
            verdict_b,
            "",
            "Where the saving comes from: with h = hvp / grad and s the share of a "
            "gradient that fusing saves (1 - (fused - hvp) / grad, per-round median), "
            "fused / separate = 1 - s / (1 + h), so the goal needs s >= "
            f"{1 - FUSED_GOAL:g} (1 + h). The product alone already runs the gradient's "
            "forward sweep and back-propagates its cotangents (their tangents need them); "
            "fusing adds only the parameter-gradient outputs. "
            + "; ".join(anatomy)
            + ". 'fused / one jit' near 1 shows XLA shares the same work when `grad` and "
            "`hvp` are in one program.",
        ]
    )


# --------------------------------------------------------------------------- c: Hutchinson


def ours_diagonal(problem: Problem, num: int, batch_size: int | None) -> Callable:
    """Jitted ``(params, batch, key) -> jaxsecond.hutchinson_diagonal`` estimate."""

    def fn(p, b, key):
        fun = lambda q: problem.loss(q, b)
        return jaxsecond.hutchinson_diagonal(fun, p, key, num, batch_size=batch_size)

    return jax.jit(fn)


def matfree_diagonal(problem: Problem, num: int, chunks: int = 1) -> Callable:
    """Jitted matfree Monte-Carlo diagonal (Rademacher probes, ``jaxsecond.hvp`` matvec).

    ``chunks > 1`` runs ``chunks`` estimators of ``num // chunks`` probes one after the
    other with ``lax.map`` and averages them (the way matfree's documentation suggests to
    bound memory), like our ``batch_size``.
    """
    from matfree import stochtrace

    if num % chunks:
        raise ValueError(f"num={num} must be a multiple of chunks={chunks}")
    sampler = stochtrace.sampler_signs(problem.params, num=num // chunks)
    estimate = stochtrace.estimator_monte_carlo(stochtrace.monte_carlo_diagonal(), sampler)

    def matvec(v, p, b):
        return jaxsecond.hvp(lambda q: problem.loss(q, b), p, v)

    def fn(p, b, key):
        if chunks == 1:
            return estimate(matvec, key, p, b)
        parts = jax.lax.map(lambda k: estimate(matvec, k, p, b), jax.random.split(key, chunks))
        return jax.tree.map(lambda x: jnp.mean(x, axis=0), parts)

    return jax.jit(fn)


def loop_diagonal(problem: Problem, num: int) -> Callable:
    """A Python loop over ``num`` probes, each a call of one jitted ``v * (H v)``."""

    @jax.jit
    def term(p, b, key):
        v = random_like(key, p, "rademacher")
        hv = jaxsecond.hvp(lambda q: problem.loss(q, b), p, v)
        return jax.tree.map(jnp.multiply, v, hv)

    def fn(p, b, key):
        total = None
        for k in jax.random.split(key, num):
            t = term(p, b, k)
            total = t if total is None else jax.tree.map(jnp.add, total, t)
        return jax.tree.map(lambda x: x / num, total)

    return fn


def estimator_error_stats(
    problem: Problem,
    *,
    num_seeds: int,
    num_probes: int = NUM_PROBES,
    seed: int = 0,
    H: np.ndarray | None = None,
) -> dict[str, Any]:
    """Error of each estimator against the exact diagonal, over ``num_seeds`` keys.

    For Rademacher probes the error of a ``num_probes``-probe estimate of entry ``i`` has
    mean 0 and variance ``sum_{j != i} H_ij^2 / num_probes`` exactly, so the expected
    squared error summed over entries is ``(|H|_F^2 - |diag H|^2) / num_probes``
    (``theory_rel`` below is its square root over ``|diag H|``).

    Returns ``exact`` (float64 diagonal), ``theory_rel`` and, per method, ``rel``
    (per-seed ``|est - diag| / |diag|``), ``bias_rel`` (``|mean_s est_s - diag| /
    |diag|``) and ``estimates``. ``H``: the explicit Hessian, computed when not given.
    """
    H = exact_hessian(problem) if H is None else H
    diag = np.diag(H)
    norm = np.linalg.norm(diag)
    theory = np.sqrt((np.sum(H**2) - np.sum(diag**2)) / num_probes) / norm
    methods = {
        "jaxsecond": ours_diagonal(problem, num_probes, None),
        "matfree": matfree_diagonal(problem, num_probes),
    }
    keys = jax.random.split(jax.random.key(seed), num_seeds)
    out: dict[str, Any] = {"exact": diag, "theory_rel": float(theory), "num_seeds": num_seeds}
    for name, fn in methods.items():
        est = np.stack(
            [
                np.asarray(ravel_pytree(fn(problem.params, problem.batch, k))[0], np.float64)
                for k in keys
            ]
        )
        out[name] = {
            "estimates": est,
            "rel": np.linalg.norm(est - diag, axis=1) / norm,
            "bias_rel": float(np.linalg.norm(est.mean(axis=0) - diag) / norm),
        }
    return out


def stderr_calibration(problem: Problem, exact: np.ndarray, key, num_probes: int) -> float:
    """``sqrt(mean err^2 / mean stderr^2)`` over entries for one estimate: ~1 when the
    standard error ``hutchinson_diagonal(return_stderr=True)`` reports is calibrated."""
    est, err = jax.jit(
        lambda p, b: jaxsecond.hutchinson_diagonal(
            lambda q: problem.loss(q, b), p, key, num_probes, return_stderr=True
        )
    )(problem.params, problem.batch)
    est, err = (np.asarray(ravel_pytree(t)[0], np.float64) for t in (est, err))
    return float(np.sqrt(np.mean((est - exact) ** 2) / np.mean(err**2)))


def _hutchinson_section(
    problem: Problem, small: Problem, H_small: np.ndarray, rounds: int, repeats: int, num_seeds: int
) -> str:
    num = NUM_PROBES
    chunks = num // CHUNK
    fns = {
        "ours_all": ours_diagonal(problem, num, None),
        "matfree_all": matfree_diagonal(problem, num),
        "ours_chunk": ours_diagonal(problem, num, CHUNK),
        "matfree_chunk": matfree_diagonal(problem, num, chunks),
    }
    # One product alone, its probe drawn inside (a negligible share of its time).
    fns["single"] = jax.jit(
        lambda p, b, key: jaxsecond.hvp(
            lambda q: problem.loss(q, b), p, random_like(key, p, "rademacher")
        )
    )
    loop = loop_diagonal(problem, num)
    key = jax.random.key(3)
    args = (problem.params, problem.batch, key)
    loop_repeats = max(1, repeats // 2)
    samples: dict[str, list] = {name: [] for name in fns}
    compile_s: dict[str, float] = {}
    loop_times = []
    for _ in range(rounds):  # the loop takes its turn in every round too
        for name, (c, times) in interleaved_timings(fns, args, rounds=1, repeats=repeats).items():
            compile_s.setdefault(name, c)
            samples[name].append(times[0])
        loop_times.append(time_python(loop, *args, repeats=loop_repeats))
    r = {name: np.array(v) for name, v in samples.items()}
    t = {name: (compile_s[name], r[name]) for name in fns}
    t_single = float(np.median(r["single"]))
    t_loop = float(np.median(loop_times))
    ratio_all = ratio(r["ours_all"], r["matfree_all"])
    ratio_chunk = ratio(r["ours_chunk"], r["matfree_chunk"])

    def row(label, config, times, compile_s, versus):
        return [
            label,
            config,
            _harness.fmt_seconds(np.median(times)),
            f"{ratio(times, num * r['single']):.2f}",
            versus,
            _harness.fmt_seconds(compile_s),
        ]

    rows = [
        row(
            "jaxsecond `hutchinson_diagonal`",
            "batch_size=None (64 vmapped)",
            r["ours_all"],
            t["ours_all"][0],
            _ratio_cell(r["ours_all"], r["matfree_all"]),
        ),
        row("matfree", "64 vmapped", r["matfree_all"], t["matfree_all"][0], "1"),
        row(
            "jaxsecond `hutchinson_diagonal`",
            f"batch_size={CHUNK} ({chunks} chunks in a scan)",
            r["ours_chunk"],
            t["ours_chunk"][0],
            _ratio_cell(r["ours_chunk"], r["matfree_chunk"]),
        ),
        row(
            "matfree",
            f"{chunks} x {CHUNK} vmapped, `lax.map` over chunks",
            r["matfree_chunk"],
            t["matfree_chunk"][0],
            "1",
        ),
        [
            "Python loop",
            f"{num} calls of a jitted `v * hvp(v)`",
            _harness.fmt_seconds(t_loop),
            f"{ratio(np.array(loop_times), num * r['single']):.2f}",
            _ratio_cell(np.array(loop_times), r["matfree_all"]) + " (vs matfree 64 vmapped)",
            "n/a",
        ],
    ]
    time_table = _harness.markdown_table(
        [
            "estimator",
            "configuration",
            "time",
            f"time / ({num} x one hvp)",
            "ours / matfree, same configuration (range)",
            "compile",
        ],
        rows,
    )
    lost = []
    for label, ours, theirs in (
        ("batch_size=None", r["ours_all"], r["matfree_all"]),
        (f"batch_size={CHUNK}", r["ours_chunk"], r["matfree_chunk"]),
    ):
        value = ratio(ours, theirs)
        if value > MATFREE_GOAL:
            best = np.min(ours / theirs)
            noise = ", within round-to-round noise" if best <= MATFREE_GOAL else ""
            lost.append(f"{label} ({value:.2f}; per-round minimum {best:.2f}{noise})")
    time_verdict = (
        f"Time goal ours / matfree <= {MATFREE_GOAL:g}: met ({ratio_all:.2f} all at once, "
        f"{ratio_chunk:.2f} chunked)."
        if not lost
        else f"Time goal ours / matfree <= {MATFREE_GOAL:g} NOT met for: " + ", ".join(lost) + "."
    )
    chunk_gain = ratio(r["ours_all"], r["ours_chunk"])
    time_verdict += (
        f" Vmapping all {num} probes at once took {chunk_gain:.2f}x as long as {chunks} chunks "
        f"of {CHUNK} here (ours), so on this machine `batch_size={CHUNK}` is "
        + ("the faster setting" if chunk_gain > 1 else "not faster")
        + "."
    )

    stats = estimator_error_stats(small, num_seeds=num_seeds, H=H_small)
    theory = stats["theory_rel"]
    rows = []
    for name in ("jaxsecond", "matfree"):
        s = stats[name]
        rel = s["rel"]
        rows.append(
            [
                name,
                f"{np.mean(rel):.4f}",
                f"{np.std(rel, ddof=1):.4f}",
                f"{np.sqrt(np.mean(rel**2)):.4f}",
                f"{theory:.4f}",
                f"{s['bias_rel']:.4f}",
                f"{theory / np.sqrt(num_seeds):.4f}",
            ]
        )
    sq = {name: stats[name]["rel"] ** 2 for name in ("jaxsecond", "matfree")}
    diff = np.mean(sq["jaxsecond"]) - np.mean(sq["matfree"])
    se = np.sqrt(
        np.var(sq["jaxsecond"], ddof=1) / num_seeds + np.var(sq["matfree"], ddof=1) / num_seeds
    )
    z = diff / se
    calibration = stderr_calibration(small, stats["exact"], jax.random.key(11), NUM_PROBES)
    error_table = _harness.markdown_table(
        [
            "estimator",
            "mean rel. error",
            "std over seeds",
            "RMS rel. error",
            "RMS expected (exact variance)",
            "rel. bias of the mean over seeds",
            "bias expected from noise alone (~)",
        ],
        rows,
    )
    same = abs(z) < 3 and all(
        0.8 < np.sqrt(np.mean(stats[n]["rel"] ** 2)) / theory < 1.25 for n in sq
    )
    dist_verdict = (
        f"Same estimate distribution: {'yes' if same else 'NO'}. The mean squared errors "
        f"differ by {diff / np.mean(sq['matfree']):+.1%} of matfree's (z = {z:+.2f}, "
        f"{num_seeds} seeds; |z| < 3 and RMS within 20% of the exact expectation count "
        "as the same)."
    )
    return "\n".join(
        [
            f"### c. Hutchinson diagonal, {num} Rademacher probes",
            "",
            f"Timing on {problem.description} ({problem.num_params:,} parameters). All "
            "estimators use the same product, `jaxsecond.hvp` (forward-over-reverse); "
            "matfree's is "
            "`stochtrace.estimator_monte_carlo(monte_carlo_diagonal(), sampler_signs(params, "
            f"num=...))`. Medians over {rounds} alternating rounds of {repeats} calls "
            f"(the loop: {loop_repeats}, one more untimed); one jitted hvp alone, timed in "
            f"the same rounds, takes {_harness.fmt_seconds(t_single)}. Compile times are "
            "those of the first call.",
            "",
            time_table,
            "",
            time_verdict,
            "",
            f"Estimate distribution on {small.description} ({small.num_params:,} "
            "parameters, small enough for the explicit float64 Hessian): "
            f"{num_seeds} independent keys, {num} probes each, float32 estimates, errors "
            "relative to |exact diagonal|. With Rademacher probes the expected squared "
            f"error is exactly (|H|_F^2 - |diag H|^2) / {num}; its square root is the "
            "'expected' column. A bias would show as a 'bias of the mean' well above the "
            "noise-only level |error| / sqrt(seeds).",
            "",
            error_table,
            "",
            dist_verdict,
            f"jaxsecond's `return_stderr=True`: RMS actual error / RMS reported standard "
            f"error = {calibration:.2f} over the diagonal (1 = calibrated).",
        ]
    )


# --------------------------------------------------------------------------- d: eigenvalue


def power_iteration(
    fun: Callable,
    params,
    key,
    *,
    tol: float = PYHESSIAN_TOL,
    max_iters: int = PYHESSIAN_MAX_ITERS,
    hvp: Callable | None = None,
    v0=None,
):
    """Top eigenvalue (in magnitude) of the Hessian of ``fun`` by PyHessian's power iteration.

    PyHessian's ``hessian.eigenvalues(top_n=1)``: start from a standard normal vector (or
    the flat array ``v0``); each step normalises ``v``, computes ``Hv`` and the Rayleigh
    quotient ``v . Hv``, sets ``v = Hv`` and stops when the quotient changed by less than
    ``tol`` relative to the previous one (``|new - old| / (|old| + 1e-6)``) or after
    ``max_iters`` products.
    Returns ``(eigenvalue, num_matvecs)``; the eigenvalue is the last quotient (PyHessian
    returns the one before it, the less accurate of the two).
    """
    hvp = jaxsecond.hvp if hvp is None else hvp
    flat, unravel = ravel_pytree(params)

    def matvec(v):
        return ravel_pytree(hvp(fun, params, unravel(v)))[0]

    def cond(state):
        i, _, old, new = state
        converged = (i >= 2) & (jnp.abs(new - old) / (jnp.abs(old) + 1e-6) < tol)
        return (i < max_iters) & ~converged

    def body(state):
        i, v, _, new = state
        v = v / jnp.linalg.norm(v)
        hv = matvec(v)
        return i + 1, hv, new, jnp.vdot(v, hv)

    zero = jnp.zeros((), flat.dtype)
    if v0 is None:
        v0 = jax.random.normal(key, flat.shape, flat.dtype)
    i, _, _, eig = jax.lax.while_loop(cond, body, (jnp.int32(0), v0, zero, zero))
    return eig, i


def lanczos_top(problem: Problem, num_iters: int) -> Callable:
    """Jitted ``(params, batch, key) -> top eigenvalue`` by ``jaxsecond.hessian_eigenvalues``."""

    def fn(p, b, key):
        fun = lambda q: problem.loss(q, b)
        return jaxsecond.hessian_eigenvalues(fun, p, key, k=1, num_iters=num_iters)[0][0]

    return jax.jit(fn)


def power_top(problem: Problem, tol: float, max_iters: int = PYHESSIAN_MAX_ITERS) -> Callable:
    """Jitted ``(params, batch, key) -> (eigenvalue, matvecs)`` by :func:`power_iteration`."""

    def fn(p, b, key):
        return power_iteration(lambda q: problem.loss(q, b), p, key, tol=tol, max_iters=max_iters)

    return jax.jit(fn)


def lanczos_iters_to_reach(
    problem: Problem,
    key,
    exact: float,
    target: float,
    cache: dict,
    max_iters: int,
    guess: int = 1,
) -> int | None:
    """Smallest ``num_iters`` whose Lanczos top eigenvalue has relative error <= ``target``.

    With a fixed starting vector the Krylov spaces are nested, so the top Ritz value never
    decreases with more steps and the error is monotone: doubling then bisection finds the
    smallest count (starting the doubling at ``guess``, e.g. power iteration's count, saves
    compilations). ``cache`` maps counts to eigenvalues and is shared between targets.
    Returns ``None`` when ``max_iters`` steps do not reach ``target``.
    """

    def error(m):
        if m not in cache:
            cache[m] = float(lanczos_top(problem, m)(problem.params, problem.batch, key))
        return abs(cache[m] - exact) / abs(exact)

    # Invariant once bracketed: error(lo) > target >= error(hi); lo = 0 stands for "no step".
    lo, hi = 0, min(guess, max_iters)
    while error(hi) > target:
        if hi >= max_iters:
            return None
        lo, hi = hi, min(2 * hi, max_iters)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if error(mid) <= target else (mid, hi)
    return hi


def _eigen_section(
    problem: Problem,
    H: np.ndarray,
    tolerances: tuple[float, ...],
    seeds: int,
    rounds: int,
    repeats: int,
) -> str:
    eigenvalues = exact_eigenvalues(problem, H)
    exact, second, smallest = (float(eigenvalues[i]) for i in (0, 1, -1))
    rows, outcomes, caches = [], [], {}
    for tol in tolerances:
        for s in range(seeds):
            key = jax.random.key(100 + s)
            args = (problem.params, problem.batch, key)
            pw = power_top(problem, tol)
            eig, n_pw = (float(x) for x in pw(*args))
            n_pw = int(n_pw)
            err_pw = abs(eig - exact) / abs(exact)
            cache = caches.setdefault(s, {})  # Lanczos results per count, shared by tols
            m = lanczos_iters_to_reach(
                problem, key, exact, err_pw, cache, MAX_LANCZOS_ITERS, guess=n_pw
            )
            if m is None:
                rows.append(
                    [
                        f"{tol:g}",
                        s,
                        n_pw,
                        f"{err_pw:.1e}",
                        f"not reached in {MAX_LANCZOS_ITERS}",
                        "n/a",
                        "n/a",
                        "n/a",
                        "n/a",
                        "n/a",
                    ]
                )
                outcomes.append((tol, n_pw, None, None))
                continue
            err_lz = abs(cache[m] - exact) / abs(exact)
            t = interleaved_timings(
                {"power": pw, "lanczos": lanczos_top(problem, m)},
                args,
                rounds=rounds,
                repeats=repeats,
            )
            r_pw, r_lz = t["power"][1], t["lanczos"][1]
            outcomes.append((tol, n_pw, m, ratio(r_lz, r_pw)))
            rows.append(
                [
                    f"{tol:g}",
                    s,
                    n_pw,
                    f"{err_pw:.1e}",
                    m,
                    f"{err_lz:.1e}",
                    f"{n_pw / m:.1f}x",
                    _harness.fmt_seconds(np.median(r_pw)),
                    _harness.fmt_seconds(np.median(r_lz)),
                    _ratio_cell(r_lz, r_pw),
                ]
            )
    table = _harness.markdown_table(
        [
            "power tol",
            "seed",
            "power matvecs",
            "power rel. error",
            "Lanczos `num_iters` to match",
            "Lanczos rel. error",
            "matvecs saved (power / Lanczos)",
            "power time",
            "Lanczos time",
            "Lanczos / power time (range)",
        ],
        rows,
    )
    reached = [o for o in outcomes if o[2] is not None]
    fewer = sum(1 for o in reached if o[2] < o[1])
    faster = sum(1 for o in reached if o[3] < 1.0)
    summary = (
        f"Lanczos reached power iteration's accuracy in {len(reached)} of {len(outcomes)} runs, "
        f"with fewer products in {fewer} and in less time in {faster}."
    )
    if reached:
        summary += (
            f" Products: power / Lanczos median "
            f"{np.median([o[1] / o[2] for o in reached]):.1f}x; time Lanczos / power median "
            f"{np.median([o[3] for o in reached]):.2f}."
        )
    dominant = (
        "so power iteration (largest |lambda|) and Lanczos (largest lambda) target the same "
        "eigenvalue"
        if exact > abs(smallest)
        else "WARNING: |smallest| >= largest, so power iteration converges to the smallest "
        "eigenvalue, not the largest one"
    )
    return "\n".join(
        [
            "### d. Top Hessian eigenvalue: Lanczos vs power iteration (PyHessian)",
            "",
            f"{problem.description} ({problem.num_params:,} parameters). Exact top eigenvalue "
            f"{exact:.6g} from `numpy.linalg.eigvalsh` of the explicit float64 Hessian "
            f"(second {second:.4g}, so power iteration's error shrinks by "
            f"(lambda2 / lambda1)^2 = {(second / exact) ** 2:.3f} per step; smallest "
            f"{smallest:.4g}, {dominant}). PyHessian's tol bounds the change between steps, "
            "not the error, which is larger when convergence is slow. Power iteration "
            "re-implemented from PyHessian in JAX (`lax.while_loop`; stop when the Rayleigh "
            f"quotient changes by less than tol relative, at most {PYHESSIAN_MAX_ITERS} products; "
            f"tol = {PYHESSIAN_TOL:g} is PyHessian's default), float32. Lanczos: "
            "`jaxsecond.hessian_eigenvalues(k=1, num_iters=m)` with the smallest m (found by "
            "bisection; the error is monotone in m for a fixed key) whose relative error is "
            "at most power iteration's on the same seed. Both use one Hessian-vector "
            f"product per step. Times: medians over {rounds} alternating rounds of "
            f"{repeats} calls.",
            "",
            table,
            "",
            summary,
        ]
    )


# --------------------------------------------------------------------------- benchmark


def run(quick: bool) -> str:
    rounds, repeats = (5, 5) if quick else (10, 20)
    problems = [mlp_problem(), cnn_problem()]
    small = mlp_problem(16, 32, 2, 4, 128, seed=1)
    H_small = exact_hessian(small)
    hutchinson_rounds, hutchinson_repeats = (5, 2) if quick else (10, 10)
    num_seeds = 20 if quick else 100
    tolerances = (1e-3, 1e-4) if quick else (1e-3, 1e-4, 1e-5)
    eig_seeds = 1 if quick else 3
    return "\n".join(
        [
            f"Peer: matfree {importlib.metadata.version('matfree')}. float32 throughout, "
            "every function jitted; times are medians after compilation. Contenders take "
            "turns within each round, so a change in machine load hits all of them; the "
            "per-round ratio ranges show how much noise remains.",
            "",
            _products_section(problems, rounds, repeats),
            "",
            _hutchinson_section(
                problems[0], small, H_small, hutchinson_rounds, hutchinson_repeats, num_seeds
            ),
            "",
            _eigen_section(small, H_small, tolerances, eig_seeds, rounds, repeats),
        ]
    )


if __name__ == "__main__":
    _harness.run_main(TITLE, run, packages=PACKAGES)
