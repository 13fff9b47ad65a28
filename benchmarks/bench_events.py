"""Events against diffrax: the time a condition crosses zero, its derivatives, and the
cost of a jitted solve and gradient.

Two problems with closed-form event times and derivatives:

* ball: ``y'' = -g`` from height 1 at rest; lands at ``sqrt(2 / g)``.
* pendulum: ``theta'' = -p sin(theta)`` from ``theta = 1`` at rest; reaches the
  vertical after a quarter period ``K(sin^2(1/2)) / sqrt(p)`` (complete elliptic
  integral of the first kind).

Both times are ``c / sqrt(p)``: ``dt/dp = -t / (2 p)``, ``d2t/dp2 = 3 t / (4 p^2)``.

Both sides: Dopri5 with PID step control at the same rtol/atol, output at the event.
Ours: ``odeint(..., event=Event(cond))`` (default adjoint, root finding on steps of the
solver, implicit derivative of the event time). diffrax: ``diffeqsolve(...,
event=Event(cond, root_finder=optimistix.Newton))`` with its default adjoint. Times
are medians over interleaved rounds (ours and diffrax in turn), float64 and float32.
The last columns say whether forward mode (``jax.jvp``) and the second derivative
(``jax.hessian``) of the event time work.

Run: ``python benchmarks/bench_events.py [--quick]``.
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import scipy.special

import jaxsecond as js
from jaxsecond import _harness

jax.config.update("jax_enable_x64", True)

TITLE = "Events against diffrax"
PACKAGES = ("diffrax", "optimistix")
TOL = 1e-8


def ball(t, y, g):
    return jnp.stack([y[1], -g * jnp.ones_like(y[0])])


def pendulum(t, y, p):
    return jnp.stack([y[1], -p * jnp.sin(y[0])])


def problems():
    """``name -> (vector_field, parameter, exact event time as a function of it)``."""
    k = scipy.special.ellipk(np.sin(0.5) ** 2)
    return {
        "ball": (ball, 9.81, lambda g: np.sqrt(2 / g)),
        "pendulum": (pendulum, 2.0, lambda p: k / np.sqrt(p)),
    }


def ours(vf, dtype):
    y0 = jnp.array([1.0, 0.0], dtype)
    event = js.Event(lambda t, y, p: y[0])

    def t_event(p):
        sol = js.odeint(vf, y0, np.array([0.0, 5.0]), p, rtol=TOL, atol=TOL, event=event)
        return sol.t_final

    return t_event


def theirs(vf, dtype):
    y0 = jnp.array([1.0, 0.0], dtype)
    event = diffrax.Event(
        lambda t, y, args, **kwargs: y[0], root_finder=optx.Newton(rtol=TOL, atol=TOL)
    )

    def t_event(p):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(vf),
            diffrax.Dopri5(),
            0.0,
            5.0,
            None,
            y0,
            args=p,
            stepsize_controller=diffrax.PIDController(rtol=TOL, atol=TOL),
            event=event,
            saveat=diffrax.SaveAt(t1=True),
        )
        return sol.ts[-1]

    return t_event


def works(fn, p) -> str:
    try:
        jax.block_until_ready(fn(p))
        return "yes"
    except Exception as e:  # any failure is the answer
        return f"no ({type(e).__name__})"


def run(quick: bool) -> str:
    rounds, repeats = (3, 5) if quick else (7, 20)
    rows = []
    for dtype in (jnp.float64, jnp.float32):
        for name, (vf, p0, exact) in problems().items():
            p = jnp.asarray(p0, dtype)
            # Both event times are c / sqrt(p).
            exact_grad = -exact(p0) / (2 * p0)
            exact_hess = 3 * exact(p0) / (4 * p0**2)
            fns = {"ours": ours(vf, dtype), "diffrax": theirs(vf, dtype)}
            grads = {k: jax.jit(jax.value_and_grad(f)) for k, f in fns.items()}
            timings = {
                k: [
                    _harness.time_jitted(jax.jit(f), p, repeats=repeats).median_s
                    for _ in range(rounds)
                ]
                for k, f in fns.items()
            }
            grad_timings = {k: [] for k in grads}
            for _ in range(rounds):
                for k, g in grads.items():
                    grad_timings[k].append(_harness.time_jitted(g, p, repeats=repeats).median_s)
            for side in ("ours", "diffrax"):
                value, grad = grads[side](p)
                hessian = works(jax.jit(jax.hessian(fns[side])), p)
                if hessian == "yes":
                    second = float(jax.jit(jax.hessian(fns[side]))(p))
                    hessian = f"yes (err {abs(second - exact_hess) / abs(exact_hess):.0e})"
                rows.append(
                    [
                        f"{name}, {jnp.dtype(dtype).name}",
                        side,
                        f"{abs(float(value) - exact(p0)) / exact(p0):.1e}",
                        f"{abs(float(grad) - exact_grad) / abs(exact_grad):.1e}",
                        _harness.fmt_seconds(float(np.median(timings[side]))),
                        _harness.fmt_seconds(float(np.median(grad_timings[side]))),
                        f"{np.median(grad_timings[side]) / np.median(grad_timings['diffrax']):.2f}",
                        works(
                            jax.jit(lambda q, f=fns[side]: jax.jvp(f, (q,), (jnp.ones_like(q),))),
                            p,
                        ),
                        hessian,
                    ]
                )
    table = _harness.markdown_table(
        [
            "problem, dtype",
            "side",
            "event time rel. error",
            "dt/dp rel. error",
            "solve",
            "value and grad",
            "grad ratio (ours / diffrax)",
            "jvp",
            "hessian",
        ],
        rows,
    )
    return (
        f"{table}\n\nrtol = atol = {TOL:g}, Dopri5 on both sides; errors relative to the "
        f"closed forms; medians of {rounds} interleaved rounds of {repeats} calls.\n"
    )


if __name__ == "__main__":
    raise SystemExit(_harness.run_main(TITLE, run, packages=PACKAGES))
