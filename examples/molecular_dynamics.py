"""How a jammed packing of soft spheres responds to the particle diameter.

A 2-D bidisperse packing of soft discs in a periodic box (pure JAX pairwise
harmonic-overlap energy) is relaxed to a local energy minimum by FIRE (fast
inertial relaxation) in a ``lax.while_loop``. Decorating the minimiser with
:func:`jaxsecond.custom_root` on the energy gradient (``symmetric=True``: the
Jacobian of a gradient is the Hessian, symmetric and, after the tether below,
positive definite) gives ``d x* / d sigma``, the response of the equilibrium
positions to the diameter, by the implicit function theorem, in forward mode
(``jax.jvp``) and reverse mode (``jax.grad``). It is checked against finite
differences of the relaxed positions.

Differentiating by unrolling instead stores every minimisation step for the
backward pass. The example compiles both reverse-mode gradients for several
step counts and reads XLA's compiled memory analysis (temporary buffer bytes):
unrolled memory grows linearly with the number of steps, implicit stays flat.
Runs in float64.

Reference: M. Blondel, Q. Berthet, M. Cuturi, R. Frostig, S. Hoyer,
F. Llinares-López, F. Pedregosa, J.-P. Vert, "Efficient and Modular Implicit
Differentiation", NeurIPS 2022 (molecular dynamics experiment, Section 4);
E. Bitzek et al., "Structural Relaxation Made Simple", PRL 2006 (FIRE).
"""

from __future__ import annotations

import pathlib
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from tqdm.auto import tqdm

import jaxsecond
from jaxsecond._registry import ExampleResult, example, script_main

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SIZE_RATIO = 1.4  # bidisperse: a mix of two sizes keeps the packing from crystallising
PACKING_FRACTION = 0.95  # above jamming (~0.84 in 2-D), so discs overlap at the minimum
# Why a tether: the pair energy depends only on differences of positions, so
# translating every particle together costs nothing; the Hessian has two zero
# eigenvalues (one per dimension) and the implicit linear system is singular.
# "Rattlers" (discs caged without contacts) add further zero modes. A tiny spring
# pulling each disc towards its start position lifts all of them to TETHER while
# changing the forces at the minimum by only ~TETHER * displacement, far below the
# contact forces.
TETHER = 1e-3
FIRE_TOL = 1e-12  # stop when the largest force component is below this
FIRE_MAX_STEPS = 100_000


class System(NamedTuple):
    anchor: jax.Array  # (N, 2) start positions, the tether's rest positions
    size: jax.Array  # (N,) diameters in units of sigma (1 or SIZE_RATIO)
    box: jax.Array  # () side of the periodic square box


def make_system(key, num_particles: int, sigma: float = 1.0) -> System:
    size = jnp.where(jnp.arange(num_particles) < num_particles // 2, 1.0, SIZE_RATIO)
    area = jnp.sum(jnp.pi * (0.5 * sigma * size) ** 2)
    box = jnp.sqrt(area / PACKING_FRACTION)
    anchor = jax.random.uniform(key, (num_particles, 2), maxval=box)
    return System(anchor=anchor, size=size, box=box)


def energy(x, sigma, system: System):
    """Soft-sphere energy: sum over overlapping pairs of (1 - r_ij / d_ij)^2 / 2, plus tether."""
    dr = x[:, None, :] - x[None, :, :]
    dr = dr - system.box * jnp.round(dr / system.box)  # minimum-image convention
    n = x.shape[0]
    off_diagonal = ~jnp.eye(n, dtype=bool)
    # Keep sqrt away from r = 0 on the diagonal, whose derivative would be NaN.
    r = jnp.sqrt(jnp.where(off_diagonal, jnp.sum(dr**2, -1), 1.0))
    d = 0.5 * sigma * (system.size[:, None] + system.size[None, :])
    overlap = jnp.where(off_diagonal & (r < d), 1.0 - r / d, 0.0)
    pair = 0.25 * jnp.sum(overlap**2)  # 1/2 per pair, each pair counted twice
    return pair + 0.5 * TETHER * jnp.sum((x - system.anchor) ** 2)


energy_gradient = jax.grad(energy)


def fire_minimize(x0, sigma, system: System):
    """FIRE (Bitzek et al. 2006), unit masses, until max |force| < FIRE_TOL."""
    dt_start, dt_max, f_inc, f_dec, alpha_start, f_alpha, n_min = 0.02, 0.2, 1.1, 0.5, 0.1, 0.99, 5

    def cond(state):
        _, _, f, _, _, _, k = state
        return (jnp.max(jnp.abs(f)) > FIRE_TOL) & (k < FIRE_MAX_STEPS)

    def body(state):
        x, v, f, dt, alpha, n_pos, k = state
        power = jnp.sum(f * v)
        # Steer the velocity towards the force direction.
        v = (1 - alpha) * v + alpha * jnp.linalg.norm(v) * f / (jnp.linalg.norm(f) + 1e-300)
        downhill = power > 0
        n_pos = jnp.where(downhill, n_pos + 1, 0)
        speed_up = downhill & (n_pos > n_min)
        dt = jnp.where(
            speed_up, jnp.minimum(dt * f_inc, dt_max), jnp.where(downhill, dt, dt * f_dec)
        )
        alpha = jnp.where(speed_up, alpha * f_alpha, jnp.where(downhill, alpha, alpha_start))
        v = jnp.where(downhill, v, 0.0)  # uphill: stop and restart carefully
        v = v + dt * f
        x = x + dt * v
        return x, v, -energy_gradient(x, sigma, system), dt, alpha, n_pos, k + 1

    f0 = -energy_gradient(x0, sigma, system)
    init = (x0, jnp.zeros_like(x0), f0, jnp.asarray(dt_start, x0.dtype),
            jnp.asarray(alpha_start, x0.dtype), 0, 0)  # fmt: skip
    x, *_ = jax.lax.while_loop(cond, body, init)
    return x


# The equilibrium is a root of the energy gradient.
relax = jaxsecond.custom_root(energy_gradient, symmetric=True)(fire_minimize)


def gradient_descent(x0, sigma, system: System, num_steps: int, step_size: float = 0.1):
    """Fixed-length gradient descent (fori_loop), the unrolled baseline."""
    body = lambda _, x: x - step_size * energy_gradient(x, sigma, system)
    return jax.lax.fori_loop(0, num_steps, body, x0)


def mean_squared_displacement(x, system: System):
    """A scalar observable of the relaxed packing: how far discs moved from the start."""
    return jnp.mean(jnp.sum((x - system.anchor) ** 2, -1))


def solution_tangent(x0, sigma, system: System):
    """(x*, d x*/d sigma) by forward-mode implicit differentiation."""
    return jax.jvp(lambda s: relax(x0, s, system), (sigma,), (jnp.ones_like(sigma),))


def finite_difference_tangent(x_star, sigma, system: System, h: float = 1e-5):
    """Central difference of the relaxed positions.

    Both sides start from the relaxed packing x*, so they relax into the same
    local minimum (a cold start could fall into a different one).
    """
    plus = fire_minimize(x_star, sigma + h, system)
    minus = fire_minimize(x_star, sigma - h, system)
    return (plus - minus) / (2 * h)


def reverse_mode_memory(system: System, sigma, num_steps: int) -> dict[str, int]:
    """Temporary bytes of the compiled reverse-mode gradient of the observable.

    Both versions run the same ``num_steps`` of gradient descent forward; only the
    backward pass differs.
    """
    x0 = system.anchor
    implicit_gd = jaxsecond.custom_root(energy_gradient, symmetric=True)(
        lambda x, s, sys: gradient_descent(x, s, sys, num_steps)
    )
    losses = {
        "unrolled": lambda s: mean_squared_displacement(
            gradient_descent(x0, s, system, num_steps), system
        ),
        "implicit": lambda s: mean_squared_displacement(implicit_gd(x0, s, system), system),
    }
    result = {}
    for name, loss in losses.items():
        compiled = jax.jit(jax.grad(loss)).lower(sigma).compile()
        result[name] = int(compiled.memory_analysis().temp_size_in_bytes)
    return result


@example(
    "molecular_dynamics",
    area="implicit",
    description="Differentiate a relaxed soft-sphere packing w.r.t. diameter; memory vs unrolling.",
)
def run(out: pathlib.Path, full: bool = False) -> ExampleResult:
    """Implicit derivative of a jammed packing w.r.t. particle diameter, and its memory cost."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    num_particles = 256 if full else 64
    step_counts = [50, 100, 200, 400, 800, 1600] if full else [25, 50, 100, 200, 400]
    with jax.enable_x64(True):
        sigma = jnp.asarray(1.0)
        system = make_system(jax.random.key(0), num_particles)
        x_star, tangent = jax.jit(solution_tangent)(system.anchor, sigma, system)
        fd = jax.jit(finite_difference_tangent)(x_star, sigma, system)
        rel_err = float(jnp.linalg.norm(tangent - fd) / jnp.linalg.norm(fd))
        max_force = float(jnp.max(jnp.abs(energy_gradient(x_star, sigma, system))))

        memory = {"unrolled": [], "implicit": []}
        for steps in tqdm(step_counts, desc="compiling gradients", leave=False, disable=None):
            for name, nbytes in reverse_mode_memory(system, sigma, steps).items():
                memory[name].append(nbytes)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    ax = axes[0]
    pos = np.asarray(x_star) % float(system.box)
    diam = np.asarray(system.size) * float(sigma)
    box = float(system.box)
    for p, dia in zip(pos, diam, strict=True):
        # Draw the periodic copies too, so discs cut by the box edge look whole.
        for shift in np.array([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)]) * box:
            color = "C0" if dia < 1.2 else "C1"
            ax.add_patch(plt.Circle(p + shift, dia / 2, fc=color, ec="k", alpha=0.5))
    t = np.asarray(tangent)
    ax.quiver(pos[:, 0], pos[:, 1], t[:, 0], t[:, 1], color="k", angles="xy")
    ax.set_xlim(0, box)
    ax.set_ylim(0, box)
    ax.set_aspect("equal")
    ax.set_title("relaxed packing and d x*/d sigma (arrows)")
    ax = axes[1]
    f, i = np.asarray(fd).ravel(), t.ravel()
    ax.plot(f, i, ".", ms=4)
    lim = [min(f.min(), i.min()), max(f.max(), i.max())]
    ax.plot(lim, lim, color="0.6", lw=1)
    ax.set_xlabel("finite differences")
    ax.set_ylabel("implicit (jax.jvp through custom_root)")
    ax.set_title(f"d x*/d sigma, rel. error {rel_err:.1e}")
    ax = axes[2]
    mib = lambda v: np.asarray(v) / 2**20
    unrolled_mib, implicit_mib = mib(memory["unrolled"][-1]), mib(memory["implicit"][-1])
    ax.plot(step_counts, mib(memory["unrolled"]), "o-", label="unrolled (backprop through GD)")
    ax.plot(step_counts, mib(memory["implicit"]), "s-", label="implicit (custom_root)")
    ax.set_xlabel("minimisation steps")
    ax.set_ylabel("XLA temporary memory of jax.grad (MiB)")
    ax.set_title(f"reverse-mode memory, N = {num_particles}")
    ax.legend()
    fig.tight_layout()
    path = out / "molecular_dynamics.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)

    return ExampleResult(
        summary=(
            f"Relaxed {num_particles} soft discs by FIRE (max force {max_force:.0e}) and "
            f"differentiated the packing w.r.t. diameter ({time.perf_counter() - start:.1f} s)."
        ),
        key_figure=(
            f"d x*/d sigma implicit vs finite differences rel. error {rel_err:.1e}; "
            f"grad temp memory at {step_counts[-1]} steps: unrolled "
            f"{unrolled_mib:.1f} MiB vs implicit {implicit_mib:.2f} MiB"
        ),
        figures=(path,),
    )


if __name__ == "__main__":
    script_main(run)
