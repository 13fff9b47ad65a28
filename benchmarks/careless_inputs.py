"""Careless inputs across the public API: what a user sees for each, as a markdown table.

Each row is one input found by an adversarial sweep of the entry points (a count of zero,
half precision, a Hessian at an extreme scale, a key of another implementation, a NaN
point, Ctrl-C while JAX loads, ...). Run it against any checkout to compare behaviours:

    python benchmarks/careless_inputs.py                      # this checkout
    PYTHONPATH=/path/to/older/checkout python benchmarks/careless_inputs.py

It takes about a minute; the last rows start ``jaxsecond tour`` and interrupt it.
"""

import signal
import subprocess
import sys
import tempfile
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxsecond as js
from jaxsecond import parallel

warnings.filterwarnings("ignore")
jax.config.update("jax_enable_x64", True)


def show(name, fn):
    try:
        out = fn()
        text = f"returns {out}"
    except BaseException as e:
        msg = str(e).strip().splitlines()
        # The line that says what went wrong, not the traceback around it.
        useful = (line for line in msg if any(w in line for w in ("Equinox", "must", "eps")))
        first = next(useful, msg[0] if msg else "")
        text = f"{type(e).__name__}: {first[:140]}"
    print(f"| {name} | {text.replace('|', '/')} |", flush=True)


print("| case | what the user sees |")
print("|---|---|")


def fmt(x):
    return np.array2string(np.asarray(x, np.float64), precision=4, separator=", ")


F = lambda x, a: x - a


def cr_zero():
    root = js.custom_root(F, solve="gmres", max_steps=0)(lambda x0, a: a)
    return fmt(jax.grad(lambda a: jnp.sum(root(jnp.zeros(2), a)))(jnp.ones(2)))


show("custom_root(solve='gmres', max_steps=0)", cr_zero)
show(
    "root_jvp with a bare array",
    lambda: fmt(js.root_jvp(lambda x, a: x - a, jnp.ones(2), (jnp.ones(2),), jnp.ones(2))),
)

h = jnp.float16


def cr16():
    root = js.custom_root(lambda x, a: x**2 - a)(lambda x0, a: jnp.sqrt(a))
    return fmt(jax.grad(lambda a: jnp.sum(root(jnp.ones(2, h), a)))(jnp.array([4.0, 9.0], h)))


show("float16 custom_root, default solve (d sqrt(a)/da = [0.25, 0.1667])", cr16)
f16 = lambda x: jnp.sum(jnp.array([1.0, 2.0, 3.0], h) * x**2)
show(
    "float16 hutchpp_trace (exact 12)",
    lambda: fmt(js.hutchpp_trace(f16, jnp.ones(3, h), jax.random.key(0), num_matvecs=9)),
)
show(
    "float16 hessian_eigenvalues k=2 (exact [6, 4])",
    lambda: fmt(js.hessian_eigenvalues(f16, jnp.ones(3, h), jax.random.key(0), k=2)[0]),
)
show(
    "float16 hessian_spectral_density",
    lambda: (
        "density of shape "
        + str(
            js.hessian_spectral_density(f16, jnp.ones(3, h), jax.random.key(0), num_iters=3)[
                1
            ].shape
        )
    ),
)


def bicg():
    root = js.custom_root(lambda x, a: 4 * x - a, solve="bicgstab")(lambda x0, a: a / 4)
    return fmt(jax.grad(lambda a: root(jnp.zeros(2), a)[0])(jnp.ones(2)))


show("bicgstab on diag(4), unit right-hand side (exact [0.25, 0])", bicg)

d = jnp.array([10.0, 6.0], jnp.float32)
for scale, label in [(0.5e-14, "0.5e-14"), (0.5e19, "0.5e19")]:
    show(
        f"hessian_eigenvalues, float32 Hessian 2 diag([10, 6]) x {label}, "
        "eigenvalues / scale (exact [20, 12])",
        lambda scale=scale: fmt(
            js.hessian_eigenvalues(
                lambda x: scale * jnp.sum(d * x**2),
                jnp.ones(2, jnp.float32),
                jax.random.key(0),
                k=2,
            )[0]
            / (2 * scale)
            * 2
        ),
    )
show(
    "hessian_eigenvalues, complex params (exact 10)",
    lambda: fmt(
        js.hessian_eigenvalues(
            lambda x: jnp.real(jnp.sum(5 * x * jnp.conj(x))),
            jnp.ones(2, jnp.complex64),
            jax.random.key(0),
            k=1,
        )[0]
    ),
)
show(
    "hessian_spectral_density, empty params",
    lambda: str(
        js.hessian_spectral_density(lambda x: jnp.sum(x**2), jnp.zeros(0), jax.random.key(0))[
            1
        ].shape
    ),
)

flat = lambda p: jnp.sum(jnp.array([2.0, 0.0]) * p**2) - 3.0 * p[1]


def ada(**kw):
    opt = js.scale_by_adahessian(**kw)
    p = jnp.ones(2)
    u, _ = jax.jit(lambda p: opt.update(jax.grad(flat)(p), opt.init(p), p, obj_fn=flat))(p)
    return fmt(jax.block_until_ready(u))


show(
    "scale_by_adahessian(eps=0), a gradient on a zero-curvature direction",
    lambda: ada(b1=0.0, b2=0.0, eps=0.0),
)
show("adahessian(eps=-1e-8)", lambda: type(js.adahessian(0.1, eps=-1e-8)).__name__)
show("adahessian(seed=-1)", lambda: type(js.adahessian(0.1, seed=-1)).__name__)
show("adahessian(key=0)", lambda: ada(key=0))
show("adahessian, rbg key", lambda: ada(key=jax.random.key(0, impl="rbg")))
show(
    "sdeint, rbg key",
    lambda: str(
        js.sdeint(
            lambda t, y, a: -y,
            lambda t, y, a: jnp.ones_like(y),
            jnp.ones(2),
            jnp.linspace(0.0, 1.0, 3),
            key=jax.random.key(0, impl="rbg"),
            steps_per_interval=2,
        ).shape
    ),
)


def mismatch():
    opt = js.adahessian(0.1)
    p = jnp.ones(3)
    return opt.update(
        jax.grad(lambda p: jnp.sum(p**2))(p),
        opt.init(jnp.ones(4)),
        p,
        obj_fn=lambda p: jnp.sum(p**2),
    )


show("adahessian, state built for other params", mismatch)
A = jnp.array([[1.0, 2.0], [0.0, 1.0]])
show(
    "gnvp, model output with a non-array leaf (exact [1, 2])",
    lambda: fmt(
        js.gnvp(
            lambda w: {"y": A @ w, "kind": "logits"},
            lambda o: 0.5 * jnp.sum(o["y"] ** 2),
            jnp.zeros(2),
            jnp.array([1.0, 0.0]),
        )
    ),
)
small = dict(dim=3, num_levels=4, log2_hashmap_size=8, max_resolution=32, key=jax.random.key(0))
show(
    "HashGridEncoding(base_resolution=0)",
    lambda: js.HashGridEncoding(base_resolution=0, **small).out_size,
)
show(
    "HashGridEncoding, pallas path, empty batch",
    lambda: str(
        js.HashGridEncoding(base_resolution=4, backend="pallas", **small)(jnp.zeros((0, 3))).shape
    ),
)


def nanpoint():
    enc = js.HashGridEncoding(base_resolution=4, **small)
    x = jax.random.uniform(jax.random.key(1), (8, 3)).at[3, 0].set(jnp.nan)
    g = jax.grad(lambda e: jnp.nansum(e(x) ** 2))(enc)
    return f"{int(jnp.any(jnp.isnan(g.tables), axis=-1).sum())} table rows with NaN gradient"


show("HashGridEncoding, one NaN point, gradient of nansum(features^2)", nanpoint)
show(
    "HashGridEncoding(num_levels=np.int64(4))",
    lambda: (
        js.HashGridEncoding(
            num_levels=np.int64(4),
            dim=3,
            log2_hashmap_size=8,
            max_resolution=32,
            key=jax.random.key(0),
        ).num_levels
    ),
)
show(
    "hutchinson_trace(num_samples=np.int64(2)) (exact 6)",
    lambda: fmt(
        js.hutchinson_trace(
            lambda x: jnp.sum(x**2 * jnp.arange(1.0, 3.0)),
            jnp.ones(2),
            jax.random.key(0),
            np.int64(2),
        )
    ),
)

mesh = jax.make_mesh((1,), ("data",))
loss = lambda w, batch: jnp.mean((batch[0] @ w - batch[1]) ** 2)
w, x = jnp.zeros(3), jnp.ones((4, 3))


def par(opt, state, batch):
    step = parallel.data_parallel_adahessian_step(loss, opt, mesh)
    out = step(w, state, batch, jax.random.key(0))
    metrics = out[2]
    loss_value = float(metrics["loss"]) if isinstance(metrics, dict) else metrics
    return f"loss {loss_value}, params {fmt(out[0])}"


show(
    "data_parallel_adahessian_step, empty batch",
    lambda: par(js.adahessian(0.1), js.adahessian(0.1).init(w), (x[:0], x[:0, 0])),
)
show(
    "data_parallel_adahessian_step, state for other params",
    lambda: par(js.adahessian(0.1), js.adahessian(0.1).init(jnp.zeros(4)), (x, x[:, 0])),
)
show(
    "data_parallel_adahessian_step(optax.adam)",
    lambda: par(optax.adam(0.1), optax.adam(0.1).init(w), (x, x[:, 0])),
)

for delay in (0.5, 1.0, 2.0):
    t = time.perf_counter()
    p = subprocess.Popen(
        [sys.executable, "-m", "jaxsecond", "tour", "--out", tempfile.mkdtemp(), "lasso_proximal"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate()
    seconds = time.perf_counter() - t
    lines = [line for line in err.strip().splitlines() if line.strip()]
    ignored = "Exception ignored" in err
    ran = "example ran" if "lasso_proximal |" in out else "no example ran"
    ign = ', "Exception ignored" printed' if ignored else ""
    last = lines[-1][:80] if lines else ""
    print(
        f"| jaxsecond tour, Ctrl-C at {delay} s | exit {p.returncode} after {seconds:.1f} s, "
        f"{ran}{ign}; last line: {last} |",
        flush=True,
    )
