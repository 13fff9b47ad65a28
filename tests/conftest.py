"""Test conventions.

* float64 is on for the whole suite: references are compared in double precision.
  A test that must run in float32 uses the ``float32`` fixture, which turns x64 off
  for its duration (arrays created inside it default to float32).
* ``getkey()`` hands out fresh ``jax.random`` keys, deterministic per test.
* Two tiers. ``pytest`` runs the unit tier: every module not marked ``integration``,
  in a few minutes on two workers. ``pytest --integration`` runs the second tier: the
  heavier checks that run whole programs (examples, notebooks, the composition matrix).
  CI runs both.
* ``@pytest.mark.slow`` tests (paper scale) are deselected by default
  (``addopts = -m 'not slow'``), in both tiers; run them with ``pytest -m slow``. An
  explicit ``-m`` expression selects across both tiers.
* ``@pytest.mark.gpu`` tests are skipped unless JAX sees a GPU.
* Compiled programs are dropped after each test module (``jax.clear_caches``): a
  worker runs hundreds of modules, and their executables would otherwise stay alive
  and grow each worker's memory by gigabytes over the suite.
"""

import itertools
import zlib

import jax
import pytest

jax.config.update("jax_enable_x64", True)


def _has_gpu() -> bool:
    try:
        return len(jax.devices("gpu")) > 0
    except RuntimeError:
        return False


DEFAULT_MARKEXPR = "not slow"  # addopts in pyproject.toml


def pytest_addoption(parser):
    parser.addoption(
        "--integration",
        action="store_true",
        help="run the integration tier (examples, notebooks, composition matrix) instead "
        "of the unit tier",
    )


def _select_tier(config, items):
    if config.option.markexpr != DEFAULT_MARKEXPR:
        return  # the user chose tests by marker expression; tiers do not apply
    want = config.getoption("--integration")
    keep, drop = [], []
    for item in items:
        (keep if ("integration" in item.keywords) == want else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_collection_modifyitems(config, items):
    _select_tier(config, items)
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a GPU (JAX sees none)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def getkey(request):
    """``getkey()`` returns a new PRNG key each call; the sequence depends only on the test."""
    seed = zlib.crc32(request.node.nodeid.encode())
    counter = itertools.count()
    base = jax.random.key(seed)
    return lambda: jax.random.fold_in(base, next(counter))


@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_programs():
    yield
    jax.clear_caches()


@pytest.fixture
def float32():
    """Run the test body with x64 disabled, so default dtypes are float32."""
    with jax.enable_x64(False):
        yield
