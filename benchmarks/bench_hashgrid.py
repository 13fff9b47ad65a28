"""Hash-grid encoding: the Pallas kernels against the XLA path, on the current device.

One command checks, then times. First the pallas path is compared with the XLA path on
this device (features, table gradient, Eikonal table gradient, spatial gradient; float32,
relative errors in the max norm). Then three workloads are timed for growing numbers of
points, both paths side by side in the same run:

* ``forward``: features of ``N`` points, ``[N, L, F]``;
* ``forward+backward``: the table gradient of ``|features - c|^2 / 2`` (what fitting a
  neural field needs per step, points being data);
* ``+double backward``: the table gradient of an Eikonal-type loss,
  ``sum_n |d/dx (features(x_n) . w)|^2``: the spatial gradient in the forward pass,
  its derivative with respect to the tables in the backward pass (NeuS2).

Grid: ``L = 16`` levels, ``F = 2`` features, ``T = 2**19`` rows per level, ``d = 3``,
base resolution 16, finest 2048 (instant-NGP's defaults), float32.

Bandwidth model (bytes per point per level, float32, useful bytes only; from the
kernels' docstring): forward 84 (x 12, eight corner rows of 8 gathered, 8 written);
forward+backward 168 (the scatter reads x 12 and the cotangent 8, and adds eight rows of
8 atomically: 84); with the double backward 224 (order-1 forward 116, scatter of orders
0 and 1 108). The achieved fraction divides that traffic by the time and the device's
peak memory bandwidth. Random gathers and atomics move whole 32-byte sectors, so 100% is
out of reach; the figure says how far from the memory roofline each path sits.

Run on a GPU: ``python benchmarks/bench_hashgrid.py`` (``--quick``: three sizes). On a
CPU the pallas path can only run in the Pallas interpreter, a testing tool: the check
runs on a small grid, only the XLA path is timed, and the table goes to a section of
its own in ``RESULTS.md`` (the GPU section is left as it is).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxsecond.kernels import hashgrid

from jaxsecond import _harness
from jaxsecond.encoding._primitives import encode_pallas, encode_xla

# A run without a GPU writes its own section, so it never replaces the GPU figures.
TITLE = (
    "Hash-grid encoding: Pallas kernels vs XLA"
    if jax.default_backend() == "gpu"
    else "Hash-grid encoding on CPU: XLA path only (the kernels need a GPU)"
)
PACKAGES = ("triton",)

BYTES_PER_POINT_LEVEL = {"forward": 84, "forward+backward": 168, "+double backward": 224}
# Peak memory bandwidth by device kind (bytes/s), from the vendors' data sheets.
PEAK_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}


def _peak_bandwidth() -> float | None:
    kind = jax.devices()[0].device_kind
    return next((v for k, v in PEAK_BANDWIDTH.items() if k in kind), None)


def _grid(gpu: bool):
    if gpu:
        return hashgrid.make_grid_config(3, 16, 2, 19, 16, float(np.exp(np.log(2048 / 16) / 15)))
    return hashgrid.make_grid_config(3, 8, 2, 12, 8, 1.5)


def _workloads(encode):
    """The three timed functions of ``(tables, x, c, w)``."""

    def forward(tables, x, c, w):
        return encode(x, tables)

    def forward_backward(tables, x, c, w):
        return jax.grad(lambda t: 0.5 * jnp.sum((encode(x, t) - c) ** 2))(tables)

    def eikonal(tables, x, c, w):
        def field(t, p):
            return encode(p[None], t).reshape(-1) @ w

        def loss(t):
            g = jax.vmap(jax.grad(field, argnums=1), in_axes=(None, 0))(t, x)
            return jnp.sum(g**2)

        return jax.grad(loss)(tables)

    return {"forward": forward, "forward+backward": forward_backward, "+double backward": eikonal}


def _inputs(config, n, key=0):
    k1, k2, k3, k4 = jax.random.split(jax.random.key(key), 4)
    shape = (config.num_levels, config.table_size, config.features_per_level)
    tables = jax.random.uniform(k1, shape, jnp.float32, -1.0, 1.0)
    x = jax.random.uniform(k2, (n, config.dim), jnp.float32)
    c = jax.random.normal(k3, (n, config.num_levels, config.features_per_level), jnp.float32)
    w = jax.random.normal(k4, (config.num_levels * config.features_per_level,), jnp.float32)
    return tables, x, c, w


def check(config, interpret: bool, n: int) -> list[list]:
    """Pallas path against XLA path: one row per quantity, with the relative error."""
    pallas = functools.partial(encode_pallas, config=config, interpret=interpret)
    xla = functools.partial(encode_xla, config=config)
    args = _inputs(config, n, key=1)
    rows = []
    for name, fn in _workloads(pallas).items():
        ref = jax.jit(_workloads(xla)[name])(*args)
        ours = jax.jit(fn)(*args)
        rows.append([name, _harness.max_rel_error(ours, ref)])
    tables, x, _, w = args
    grad_x = lambda enc: jax.jit(
        jax.grad(lambda p: jnp.sum(enc(p, tables).reshape(len(p), -1) @ w))
    )(x)
    rows.append(["spatial gradient", _harness.max_rel_error(grad_x(pallas), grad_x(xla))])
    return rows


def run(quick: bool) -> str:
    gpu = jax.default_backend() == "gpu"
    config = _grid(gpu)
    check_rows = check(config, interpret=not gpu, n=1 << 14 if gpu else 64)
    if gpu:  # the other supported shapes, on a smaller grid
        for dim, features in ((2, 1), (2, 8), (3, 1), (3, 4), (3, 8)):
            variant = hashgrid.make_grid_config(dim, 8, features, 14, 16, 1.5)
            check_rows += [
                [f"{name} (d={dim}, F={features})", err]
                for name, err in check(variant, interpret=False, n=1 << 12)
            ]
    worst = max(r[1] for r in check_rows)
    lines = [
        f"Grid: L = {config.num_levels}, F = {config.features_per_level}, "
        f"T = 2^{config.log2_table_size}, d = {config.dim}, float32; "
        f"{sum(config.hashed)} of {config.num_levels} levels hashed.",
        "",
        "Check, pallas path against XLA path on this device (max-norm relative error; "
        "float32, and the atomics add in a different order than XLA's scatter):",
        "",
        _harness.markdown_table(
            ["quantity", "relative error"], [[r[0], f"{r[1]:.1e}"] for r in check_rows]
        ),
        "",
    ]
    if worst > 1e-4:
        raise SystemExit(f"pallas and XLA paths disagree (relative error {worst:.1e})")
    if not gpu:
        sizes = [1 << 12, 1 << 14]
        paths = {"xla": functools.partial(encode_xla, config=config)}
        lines.append(
            "No GPU: the pallas path runs only in the Pallas interpreter (a testing tool, "
            "not timed); XLA timed on a small grid."
        )
    else:
        sizes = [1 << k for k in ((18, 20, 22) if quick else (18, 19, 20, 21, 22))]
        paths = {
            "pallas": functools.partial(encode_pallas, config=config, interpret=False),
            "xla": functools.partial(encode_xla, config=config),
        }
    peak = _peak_bandwidth()
    rows = []
    for workload in BYTES_PER_POINT_LEVEL:
        for n in sizes:
            args = _inputs(config, n)
            times = {}
            for path, encode in paths.items():
                fn = jax.jit(_workloads(encode)[workload])
                probe = _harness.time_jitted(fn, *args, repeats=1, warmup=0)
                repeats = 3 if probe.median_s > 1.0 else (10 if quick else 20)
                times[path] = _harness.time_jitted(fn, *args, repeats=repeats, warmup=0)
            row = [workload, f"2^{n.bit_length() - 1}"]
            for t in times.values():
                rate = n / t.median_s
                traffic = BYTES_PER_POINT_LEVEL[workload] * n * config.num_levels / t.median_s
                fraction = f"{100 * traffic / peak:.1f}%" if peak else "n/a"
                row += [_harness.fmt_seconds(t.median_s), f"{rate:.3g}", fraction]
            if len(times) == 2:
                row.append(f"{times['xla'].median_s / times['pallas'].median_s:.2f}x")
            rows.append(row)
    headers = ["workload", "N"]
    for path in paths:
        headers += [f"{path} median", f"{path} points/s", f"{path} % of peak bandwidth"]
    if len(paths) == 2:
        headers.append("speedup (xla / pallas)")
    lines += [
        f"Medians of timed calls after compilation (peak bandwidth "
        f"{peak / 1e12 if peak else float('nan'):.2f} TB/s for "
        f"{jax.devices()[0].device_kind}):",
        "",
        _harness.markdown_table(headers, rows),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    _harness.run_main(TITLE, run, packages=PACKAGES)
