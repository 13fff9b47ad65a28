"""Checkpointing an adaptive solve: memory and time of the gradient against diffrax.

Problem: a state of 64 x 32 (2,048 numbers), ``Y' = tanh(Y W)`` with ``W`` a rotation
generator of frequency ~1 plus a small random part, on [0, T], saved at the end only,
loss ``sum(Y(T)^2)``, gradient with respect to ``W``, float64, ``Dopri5`` with PID step
control at ``rtol = atol = 1e-6`` on both sides, jitted.

Ours: ``StoreAll`` and ``Checkpointed(16, levels=L)`` for ``L = 1, 2, 3`` (recursive
checkpointing: each level keeps 16 more states and re-runs the solve once more, and
cuts the segment that is recomputed into a buffer by about 8). diffrax:
``RecursiveCheckpointAdjoint`` with its default checkpoints and with 16.

Memory is XLA's compiled peak of the gradient (``temp + arguments + outputs``), at
``max_steps`` 4,096 and 16,384: a compiled program is sized by ``max_steps``, not by the
steps a run takes. Times are medians over rounds alternating the methods.

Run: ``python benchmarks/bench_checkpointing.py [--quick]``.
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import jaxsecond as js
from jaxsecond import _harness

jax.config.update("jax_enable_x64", True)

TITLE = "Checkpointing adaptive solves against diffrax"
PACKAGES = ("diffrax",)
TOL = 1e-6
SHAPE = (64, 32)


def problem(seed=0):
    key_w, key_y = jax.random.split(jax.random.key(seed))
    n = SHAPE[1]
    skew = jnp.zeros((n, n)).at[jnp.arange(0, n, 2), jnp.arange(1, n, 2)].set(1.0)
    W = skew - skew.T + 0.05 * jax.random.normal(key_w, (n, n)) / np.sqrt(n)
    y0 = 0.5 * jax.random.normal(key_y, SHAPE)
    return W, y0


def field(t, y, W):
    return jnp.tanh(y @ W)


def solve(W, y0, t_end, max_steps, **kwargs):
    """Our adaptive Dopri5 solve of the problem (``kwargs``: adjoint, return_stats)."""
    return js.odeint(
        field,
        y0,
        jnp.array([0.0, t_end]),
        W,
        solver=js.Dopri5(),
        rtol=TOL,
        atol=TOL,
        max_steps=max_steps,
        **kwargs,
    )


def ours(adjoint, y0, t_end, max_steps):
    return lambda W: jnp.sum(solve(W, y0, t_end, max_steps, adjoint=adjoint)[-1] ** 2)


def theirs(checkpoints, y0, t_end, max_steps):
    def loss(W):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            diffrax.Dopri5(),
            0.0,
            t_end,
            None,
            y0,
            args=W,
            saveat=diffrax.SaveAt(t1=True),
            stepsize_controller=diffrax.PIDController(rtol=TOL, atol=TOL),
            adjoint=diffrax.RecursiveCheckpointAdjoint(checkpoints=checkpoints),
            max_steps=max_steps,
        )
        return jnp.sum(sol.ys[-1] ** 2)

    return loss


def methods():
    return {
        "ours StoreAll": lambda *a: ours(js.StoreAll(), *a),
        "ours Checkpointed(16)": lambda *a: ours(js.Checkpointed(16), *a),
        "ours Checkpointed(16, levels=2)": lambda *a: ours(js.Checkpointed(16, levels=2), *a),
        "ours Checkpointed(16, levels=3)": lambda *a: ours(js.Checkpointed(16, levels=3), *a),
        "diffrax RecursiveCheckpoint (default)": lambda *a: theirs(None, *a),
        "diffrax RecursiveCheckpoint(16)": lambda *a: theirs(16, *a),
    }


def steps_taken(y0, W, t_end):
    _, stats = solve(W, y0, t_end, 16384, return_stats=True)
    return int(stats["num_steps"])


def run(quick: bool) -> str:
    rounds, repeats = (3, 3) if quick else (5, 5)
    t_end = 20.0 if quick else 100.0
    W, y0 = problem()
    num_steps = steps_taken(y0, W, t_end)
    grads = {name: jax.jit(jax.grad(make(y0, t_end, 4096))) for name, make in methods().items()}
    reference = grads["ours StoreAll"](W)
    times = {name: [] for name in grads}
    for _ in range(rounds):
        for name, g in grads.items():
            times[name].append(_harness.time_jitted(g, W, repeats=repeats).median_s)
    base = "diffrax RecursiveCheckpoint (default)"
    rows = []
    for name, make in methods().items():
        memory = [
            _harness.peak_memory_bytes(jax.grad(make(y0, t_end, m)), W) for m in (4096, 16384)
        ]
        ratio = np.array(times[name]) / np.array(times[base])
        rows.append(
            [
                name,
                _harness.fmt_bytes(memory[0]),
                _harness.fmt_bytes(memory[1]),
                _harness.fmt_seconds(float(np.median(times[name]))),
                f"{np.median(ratio):.2f} ({ratio.min():.2f}-{ratio.max():.2f})",
                f"{_harness.max_rel_error(grads[name](W), reference):.1e}",
            ]
        )
    table = _harness.markdown_table(
        [
            "method",
            "peak, max_steps 4,096",
            "peak, max_steps 16,384",
            "time / gradient",
            "this / diffrax default (per-round range)",
            "rel. diff. of gradient vs ours StoreAll",
        ],
        rows,
    )
    state_kib = np.prod(SHAPE) * 8 / 1024
    return (
        f"Problem: `Y' = tanh(Y W)`, `Y` {SHAPE[0]} x {SHAPE[1]} ({state_kib:.0f} KiB per "
        f"state in float64), `W` a rotation generator plus a small random part, on "
        f"[0, {t_end:g}] ({num_steps} accepted steps), loss `sum(Y(T)^2)`, gradient with "
        f"respect to `W`, float64, Dopri5 with PID control at rtol = atol = {TOL:g} on both "
        "sides. Memory is XLA's compiled peak of the gradient at two values of `max_steps`; "
        f"times are medians over {rounds} rounds alternating the methods ({repeats} calls "
        "each), at `max_steps = 4,096`.\n\n" + table + "\n"
    )


if __name__ == "__main__":
    raise SystemExit(_harness.run_main(TITLE, run, packages=PACKAGES))
