"""Fit the signed distance of a torus with a hash grid, an MLP and the Eikonal loss.

The shape is a torus in the unit cube, centred at ``c = (0.5, 0.5, 0.5)`` with axis
``z``, tube-centre radius ``R = 0.3`` and tube radius ``r = 0.12``. Its signed distance
is known in closed form,

    sdf(x) = sqrt((|(x - c)_xy| - R)**2 + (x - c)_z**2) - r,

which is exact (``|grad sdf| = 1`` everywhere but on the tube-centre circle and the axis),
so the distance of any point to the true surface is ``|sdf|``. Training data are points
sampled exactly on the surface, uniformly in area (the angle around the tube follows the
area density ``R + r cos v`` by inverting its distribution function with Newton's
method), with their outward normals.

The model is ``f(x) = mlp([x - c, enc(x)])``: a multiresolution hash-grid encoding
(:class:`jaxsecond.HashGridEncoding`) feeding a small softplus MLP, as in instant-NGP
and NeuS2. The loss, as in IGR (Gropp et al.), is

    mean |f(x_surface)| + W_NORMAL * mean |grad f(x_surface) - n|
        + W_EIKONAL * mean (|grad f(x)| - 1)**2 + W_FAR * mean |f(y) - d(y)|,

the Eikonal term on points uniform in the cube and on points jittered around the
surface, the last (far-field) term on the uniform points ``y`` only, with ``d`` the
signed distance to the batch's oriented surface samples (distance to the nearest sample,
signed by its normal; a Monte Carlo estimate of the true distance, exact far from the
surface and biased by about the sample spacing near it, where the surface term
dominates). The
Eikonal term is what makes ``f`` a distance (not merely zero on the samples): its
gradient with respect to the tables and weights differentiates ``grad_x f``, the
double backward that the hash-grid kernels implement (on GPU the encoding's
``backend="auto"`` runs them; on CPU it uses XLA). Training is coarse to fine
(:func:`jaxsecond.coarse_to_fine_levels`, NeuS2): the coarse levels fit the overall
shape first and finer levels switch on one at a time. Adam, with a larger learning
rate for the tables than for the MLP (as instant-NGP).

The output of the MLP starts as a sphere of radius ``INIT_RADIUS`` ("geometric
initialisation", Atzmon & Lipman): the MLP gets ``x - c`` as input besides the
features, and the raw network is added to ``|x - c| - INIT_RADIUS`` with a small last
layer. Starting from a distance function keeps the optimisation from creating spurious
zero sets far from the data, which the surface and Eikonal terms alone would not forbid.
The sphere is negative in the torus's hole, though, and without the far-field term a
blob of it survives there (a zero set with ``|grad f| = 1`` that no surface sample
touches): the quick run then ends near Chamfer ``1e-2`` instead of ``1.5e-3``. The
far-field term, which reads the sign off the samples' normals, removes it.

The fitted field is evaluated on a regular grid (``64**3`` quick, ``256**3`` full) and
meshed with marching cubes (scikit-image). Reported: the symmetric Chamfer distance
between the mesh and the true surface (mean over area-uniform samples of each of the
distance to the other, averaged over the two directions; mesh-to-surface distances are
exact, ``|sdf|``, surface-to-mesh ones go to the nearest of dense mesh samples), in
units of the cube side and of the grid spacing; the mean Eikonal residual
``| |grad f| - 1 |`` on uniform points; and the time per training step. Runs in
float32.

References: T. Mueller, A. Evans, C. Schied, A. Keller, "Instant Neural Graphics
Primitives with a Multiresolution Hash Encoding", SIGGRAPH 2022; Y. Wang et al.,
"NeuS2: Fast Learning of Neural Implicit Surfaces for Multi-view Reconstruction",
ICCV 2023; A. Gropp, L. Yariv, N. Haim, M. Atzmon, Y. Lipman, "Implicit Geometric
Regularization for Learning Shapes", ICML 2020; M. Atzmon, Y. Lipman, "SAL: Sign
Agnostic Learning of Shapes from Raw Data", CVPR 2020; W. E. Lorensen, H. E. Cline,
"Marching Cubes", SIGGRAPH 1987.
"""

from __future__ import annotations

import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from scipy.spatial import cKDTree
from skimage import measure
from tqdm.auto import tqdm

import jaxsecond
from jaxsecond._registry import ExampleResult, example, script_main

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from mpl_toolkits.mplot3d.art3d import Poly3DCollection

DTYPE = jnp.float32
CENTRE = (0.5, 0.5, 0.5)
MAJOR_RADIUS = 0.3  # R: radius of the tube's centre circle
MINOR_RADIUS = 0.12  # r: radius of the tube

# Hash grid: quick (CPU-friendly) and full (instant-NGP / NeuS2 size).
QUICK_GRID = dict(
    num_levels=8, features_per_level=2, log2_hashmap_size=15, base_resolution=8, max_resolution=128
)
FULL_GRID = dict(
    num_levels=16,
    features_per_level=2,
    log2_hashmap_size=19,
    base_resolution=16,
    max_resolution=2048,
)
MLP_WIDTH = 64
MLP_DEPTH = 2  # hidden layers
INIT_RADIUS = 0.3  # geometric initialisation: a sphere of this radius about CENTRE

QUICK_STEPS = 1000
TOUR_STEPS = 300  # the default tour's size: every level active by step 60
TOUR_STEPS_PER_LEVEL = 15
TOUR_MESH_RES = 48
FULL_STEPS = 5000
INITIAL_LEVELS = 4  # coarse-to-fine: active levels at step 0 ...
QUICK_STEPS_PER_LEVEL = 50  # ... one more every this many steps
FULL_STEPS_PER_LEVEL = 200
BATCH_SURFACE = 2048  # surface samples per step
BATCH_SPACE = 2048  # Eikonal points per step (half uniform in the cube, half near the surface)
NEAR_SURFACE_STD = 0.03
LR_TABLES = 1e-2
LR_MLP = 1e-3
W_NORMAL = 0.1
W_EIKONAL = 1.0
W_FAR = 1.0
QUICK_MESH_RES = 64
FULL_MESH_RES = 256
CHAMFER_SAMPLES = 100_000  # per side
EVAL_CHUNK = 65_536


# ----------------------------------------------------------------------------- the shape


def torus_sdf(x, centre=CENTRE, R=MAJOR_RADIUS, r=MINOR_RADIUS):
    """Exact signed distance to the torus (negative inside), for ``x`` of shape ``[..., 3]``."""
    p = x - jnp.asarray(centre, x.dtype)
    q = jnp.sqrt(p[..., 0] ** 2 + p[..., 1] ** 2) - R
    return jnp.sqrt(q**2 + p[..., 2] ** 2) - r


def sphere_sdf(x, centre, radius):
    """Exact signed distance to a sphere."""
    return jnp.linalg.norm(x - jnp.asarray(centre, x.dtype), axis=-1) - radius


def sample_torus(key, n, centre=CENTRE, R=MAJOR_RADIUS, r=MINOR_RADIUS, dtype=DTYPE):
    """``n`` points uniform in area on the torus, and their outward unit normals.

    The torus is ``c + ((R + r cos v) cos u, (R + r cos v) sin u, r sin v)``, with area
    element ``r (R + r cos v) du dv``: ``u`` is uniform, and ``v`` has density
    proportional to ``R + r cos v``, drawn by inverting its distribution function
    ``(R v + r sin v) / (2 pi R)`` with Newton's method (monotone, since ``r < R``).
    """
    ku, kv = jax.random.split(key)
    u = jax.random.uniform(ku, (n,), dtype, 0.0, 2 * jnp.pi)
    target = jax.random.uniform(kv, (n,), dtype, 0.0, 2 * jnp.pi * R)
    v = target / R
    for _ in range(8):
        v = v - (R * v + r * jnp.sin(v) - target) / (R + r * jnp.cos(v))
    normal = jnp.stack([jnp.cos(v) * jnp.cos(u), jnp.cos(v) * jnp.sin(u), jnp.sin(v)], -1)
    ring = jnp.stack([R * jnp.cos(u), R * jnp.sin(u), jnp.zeros_like(u)], -1)
    points = jnp.asarray(centre, dtype) + ring + r * normal
    return points, normal


def sample_sphere(key, n, centre, radius, dtype=DTYPE):
    """``n`` points uniform on a sphere (normalised Gaussians), and their normals."""
    g = jax.random.normal(key, (n, 3), dtype)
    normal = g / jnp.linalg.norm(g, axis=-1, keepdims=True)
    return jnp.asarray(centre, dtype) + radius * normal, normal


# ----------------------------------------------------------------------------- the model


class SDFNetwork(eqx.Module):
    """``f(x) = |x - c| - INIT_RADIUS + mlp([x - c, hashgrid(x)])`` for one point ``x``."""

    encoding: jaxsecond.HashGridEncoding
    mlp: eqx.nn.MLP

    def __init__(self, key, grid: dict, width: int = MLP_WIDTH, depth: int = MLP_DEPTH):
        kenc, kmlp = jax.random.split(key)
        self.encoding = jaxsecond.HashGridEncoding(dim=3, **grid, dtype=DTYPE, key=kenc)
        mlp = eqx.nn.MLP(
            3 + self.encoding.out_size,
            "scalar",
            width,
            depth,
            activation=jax.nn.softplus,
            dtype=DTYPE,
            key=kmlp,
        )
        # Geometric initialisation: a small last layer, so f starts as the sphere's
        # distance function plus a perturbation of order 1e-3.
        last = mlp.layers[-1]
        mlp = eqx.tree_at(
            lambda m: (m.layers[-1].weight, m.layers[-1].bias),
            mlp,
            (1e-2 * last.weight, jnp.zeros_like(last.bias)),
        )
        self.mlp = mlp

    def __call__(self, x, active_levels=None):
        p = x - jnp.asarray(CENTRE, x.dtype)
        features = self.encoding(x, active_levels)
        base = jnp.linalg.norm(p) - INIT_RADIUS
        return base + self.mlp(jnp.concatenate([p, features]))


def make_model(key, full: bool = False) -> SDFNetwork:
    return SDFNetwork(key, FULL_GRID if full else QUICK_GRID)


def field_and_gradient(model, x, active_levels=None):
    """``f`` and ``grad_x f`` at points ``x`` of shape ``[N, 3]``."""
    fn = jax.value_and_grad(lambda p: model(p, active_levels))
    return jax.vmap(fn)(x)


def point_cloud_distance(x, cloud, normals):
    """Signed distance from each of ``x`` (``[N, 3]``) to an oriented point cloud: the
    distance to the nearest point ``p`` of ``cloud``, with the sign of ``(x - p) . n_p``."""
    sq = jnp.sum(x**2, -1)[:, None] - 2 * x @ cloud.T + jnp.sum(cloud**2, -1)[None, :]
    nearest = jnp.argmin(sq, axis=-1)
    offset = x - cloud[nearest]
    sign = jnp.where(jnp.sum(offset * normals[nearest], -1) >= 0, 1.0, -1.0)
    return sign * jnp.linalg.norm(offset, axis=-1)


def loss_terms(model, surface, normals, space, active_levels=None):
    """The loss terms: surface ``mean |f|``, normal ``mean |grad f - n|``, Eikonal
    ``mean (|grad f| - 1)**2``, and far-field ``mean |f - d|`` on the points of ``space``
    uniform in the cube (its first half), ``d`` the signed distance to the batch's
    oriented surface samples (:func:`point_cloud_distance`)."""
    f_s, g_s = field_and_gradient(model, surface, active_levels)
    f_x, g_x = field_and_gradient(model, space, active_levels)
    surf = jnp.mean(jnp.abs(f_s))
    normal = jnp.mean(jnp.linalg.norm(g_s - normals, axis=-1))
    eik = jnp.mean((jnp.linalg.norm(g_x, axis=-1) - 1.0) ** 2)
    n_uniform = space.shape[0] // 2
    d = jax.lax.stop_gradient(point_cloud_distance(space[:n_uniform], surface, normals))
    far = jnp.mean(jnp.abs(f_x[:n_uniform] - d))
    return surf, normal, eik, far


def loss_fn(model, surface, normals, space, active_levels=None):
    surf, normal, eik, far = loss_terms(model, surface, normals, space, active_levels)
    return surf + W_NORMAL * normal + W_EIKONAL * eik + W_FAR * far


def sample_batch(key, n_surface=BATCH_SURFACE, n_space=BATCH_SPACE):
    """Surface points with normals, and Eikonal points (uniform and near-surface)."""
    ks, kn, ku, kj = jax.random.split(key, 4)
    surface, normals = sample_torus(ks, n_surface)
    near, _ = sample_torus(kn, n_space - n_space // 2)
    near = near + NEAR_SURFACE_STD * jax.random.normal(kj, near.shape, DTYPE)
    uniform = jax.random.uniform(ku, (n_space // 2, 3), DTYPE)
    space = jnp.concatenate([uniform, jnp.clip(near, 0.0, 1.0)])
    return surface, normals, space


def make_optimizer(model):
    """Adam, ``LR_TABLES`` for the hash tables and ``LR_MLP`` for the MLP."""
    params = eqx.filter(model, eqx.is_inexact_array)
    labels = jax.tree.map(lambda _: "mlp", params)
    labels = eqx.tree_at(lambda m: m.encoding.tables, labels, "tables")
    # The labels are a Module, hence callable: hand them over through a function, or
    # optax would call them as one.
    return optax.multi_transform(
        {"tables": optax.adam(LR_TABLES, eps=1e-15), "mlp": optax.adam(LR_MLP)},
        lambda _: labels,
    )


def train(model, key, num_steps: int, *, steps_per_level: int, progress: bool = True):
    """Adam with coarse-to-fine levels. Returns the model, the loss of every step and
    the mean seconds per step (after the first, which compiles)."""
    optim = make_optimizer(model)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = optim.init(params)
    num_levels = model.encoding.num_levels

    @jax.jit
    def step(params, opt_state, i, key):
        active = jaxsecond.coarse_to_fine_levels(
            i, num_levels=num_levels, initial_levels=INITIAL_LEVELS, steps_per_level=steps_per_level
        )
        batch = sample_batch(key)
        loss = lambda p: loss_fn(eqx.combine(p, static), *batch, active)
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = optim.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    losses = np.empty(num_steps)
    keys = jax.random.split(key, num_steps)
    t_first = None
    for i in tqdm(
        range(num_steps), desc="training", leave=False, disable=None if progress else True
    ):
        params, opt_state, value = step(params, opt_state, i, keys[i])
        losses[i] = float(value)
        if i == 0:
            t_first = time.perf_counter()
    per_step = (time.perf_counter() - t_first) / max(num_steps - 1, 1)
    return eqx.combine(params, static), losses, per_step


# ----------------------------------------------------------------------------- evaluation


def evaluate_grid(model, resolution: int):
    """``f`` on the ``resolution**3`` grid of ``[0, 1]^3`` (indexing ``ij``), as numpy."""
    axis = jnp.linspace(0.0, 1.0, resolution, dtype=DTYPE)
    pts = jnp.stack(jnp.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    f = eqx.filter_jit(lambda m, x: jax.vmap(m)(x))
    chunks = [np.asarray(f(model, pts[i : i + EVAL_CHUNK])) for i in range(0, len(pts), EVAL_CHUNK)]
    return np.concatenate(chunks).reshape(resolution, resolution, resolution)


def extract_mesh(volume):
    """Marching cubes at level 0; vertices in cube coordinates, faces as indices."""
    h = 1.0 / (volume.shape[0] - 1)
    verts, faces, _, _ = measure.marching_cubes(volume, level=0.0, spacing=(h, h, h))
    return verts, faces


def sample_mesh(key, verts, faces, n):
    """``n`` points uniform in area on a triangle mesh."""
    tri = np.asarray(verts, np.float64)[np.asarray(faces)]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1)
    kf, kb = jax.random.split(key)
    idx = np.asarray(jax.random.choice(kf, len(faces), (n,), p=jnp.asarray(area / area.sum())))
    a, b = np.asarray(jax.random.uniform(kb, (2, n), jnp.float32), np.float64)
    flip = a + b > 1.0
    a, b = np.where(flip, 1.0 - a, a), np.where(flip, 1.0 - b, b)
    t = tri[idx]
    return t[:, 0] + a[:, None] * (t[:, 1] - t[:, 0]) + b[:, None] * (t[:, 2] - t[:, 0])


def chamfer_distance(mesh_points, surface_points, sdf):
    """Symmetric Chamfer distance between a sampled mesh and a surface with exact SDF.

    Mesh to surface: ``mean |sdf(mesh_points)|`` (exact distances). Surface to mesh:
    mean distance from each of ``surface_points`` to the nearest of ``mesh_points``
    (an overestimate by roughly the squared sample spacing over the distance, small
    for dense samples). Returns ``(chamfer, mesh_to_surface, surface_to_mesh)`` with
    ``chamfer`` the average of the two.
    """
    mesh_points = np.asarray(mesh_points, np.float64)
    m2s = float(np.mean(np.abs(np.asarray(sdf(jnp.asarray(mesh_points))))))
    dist, _ = cKDTree(mesh_points).query(np.asarray(surface_points, np.float64))
    s2m = float(np.mean(dist))
    return 0.5 * (m2s + s2m), m2s, s2m


def eikonal_residual(model, key, n: int = 65_536):
    """``mean | |grad f| - 1 |`` on points uniform in the cube."""
    x = jax.random.uniform(key, (n, 3), DTYPE)
    _, g = eqx.filter_jit(field_and_gradient)(model, x)
    return float(jnp.mean(jnp.abs(jnp.linalg.norm(g, axis=-1) - 1.0)))


# ----------------------------------------------------------------------------- run


def draw(path, verts, faces, losses, title):
    fig = plt.figure(figsize=(13, 5.5))
    ax = fig.add_subplot(1, 2, 1, projection="3d")
    tri = verts[faces]
    # Lambertian shading from a fixed light, so the shape reads without a renderer.
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.linalg.norm(n, axis=-1, keepdims=True) + 1e-12
    light = np.array([0.4, -0.5, 0.77])
    shade = 0.25 + 0.75 * np.clip(n @ (light / np.linalg.norm(light)), 0.0, 1.0)
    colours = plt.cm.viridis(0.35 + 0.5 * shade)
    colours[:, :3] *= shade[:, None]
    ax.add_collection3d(Poly3DCollection(tri, facecolors=colours, edgecolor="none"))
    lo, hi = 0.05, 0.95
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_zlim(lo, hi)
    ax.set_box_aspect((1, 1, 1))
    ax.view_init(elev=35, azim=-60)
    ax.set_title(title, fontsize=9)
    ax = fig.add_subplot(1, 2, 2)
    ax.semilogy(losses)
    ax.set_xlabel("Adam step")
    ax.set_ylabel("loss")
    ax.set_title("training loss (surface + normal + Eikonal + far field)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@example(
    "sdf_eikonal",
    area="encoding",
    description="Fit a torus's signed distance with a hash grid and the Eikonal loss; mesh it.",
    tour=True,
)
def run(out: pathlib.Path, full: bool = False, *, tour: bool = False) -> ExampleResult:
    """Hash-grid SDF of a torus (surface + Eikonal loss), marching cubes, Chamfer distance."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if full:
        num_steps, steps_per_level, resolution = FULL_STEPS, FULL_STEPS_PER_LEVEL, FULL_MESH_RES
    elif tour:
        num_steps, steps_per_level, resolution = TOUR_STEPS, TOUR_STEPS_PER_LEVEL, TOUR_MESH_RES
    else:
        num_steps, steps_per_level, resolution = QUICK_STEPS, QUICK_STEPS_PER_LEVEL, QUICK_MESH_RES
    k_model, k_train, k_eik, k_mesh, k_surf = jax.random.split(jax.random.key(0), 5)
    with jax.enable_x64(False):
        model = make_model(k_model, full)
        model, losses, per_step = train(model, k_train, num_steps, steps_per_level=steps_per_level)
        residual = eikonal_residual(model, k_eik)
        volume = evaluate_grid(model, resolution)
        verts, faces = extract_mesh(volume)
        mesh_pts = sample_mesh(k_mesh, verts, faces, CHAMFER_SAMPLES)
        surf_pts, _ = sample_torus(k_surf, CHAMFER_SAMPLES)
        chamfer, m2s, s2m = chamfer_distance(mesh_pts, surf_pts, torus_sdf)
    h = 1.0 / (resolution - 1)
    path = out / "sdf_eikonal.png"
    draw(
        path,
        verts,
        faces,
        losses,
        f"marching cubes on {resolution}^3: {len(faces)} faces, Chamfer {chamfer:.2e}",
    )
    enc = model.encoding.config
    return ExampleResult(
        summary=(
            f"Fitted a torus's signed distance with a {enc.num_levels}-level hash grid "
            f"(2^{int(np.log2(model.encoding.tables.shape[1]))} rows per level) and a "
            f"{MLP_DEPTH}x{MLP_WIDTH} MLP: {num_steps} Adam steps, coarse to fine, on "
            f"{BATCH_SURFACE} surface + {BATCH_SPACE} Eikonal points a step, float32 "
            f"({time.perf_counter() - start:.1f} s)."
        ),
        key_figure=(
            f"Chamfer distance {chamfer:.2e} ({chamfer / h:.3f} grid spacings at "
            f"{resolution}^3; mesh->surface {m2s:.2e}, surface->mesh {s2m:.2e}); "
            f"Eikonal residual mean ||grad f| - 1| {residual:.3f}; loss {losses[0]:.3g} -> "
            f"{np.mean(losses[-20:]):.3g}; {1e3 * per_step:.1f} ms/step "
            f"({1 / per_step:.1f} steps/s)"
        ),
        figures=(path,),
    )


if __name__ == "__main__":
    script_main(run)
