"""The examples in public docstrings run and print what they say."""

import doctest
import importlib

import pytest

MODULES = [
    "jaxsecond",
    "jaxsecond.implicit._root",
    "jaxsecond.implicit._conditions",
    "jaxsecond.implicit._quadratic_program",
    "jaxsecond.implicit._linear_solve",
    "jaxsecond.curvature._products",
    "jaxsecond.curvature._hutchinson",
    "jaxsecond.curvature._lanczos",
    "jaxsecond.diffeq._adjoint",
    "jaxsecond.diffeq._odeint",
    "jaxsecond.diffeq._events",
    "jaxsecond.diffeq._saveat",
    "jaxsecond.diffeq._solvers",
    "jaxsecond.diffeq._sdeint",
    "jaxsecond.optim._adahessian",
    "jaxsecond.encoding._hashgrid",
    "jaxsecond.nas._rarts",
    "jaxsecond.nas._darts",
    "jaxsecond.nas._search_space",
    "jaxsecond.nas._width",
    "jaxsecond.nas._train",
    "jaxsecond.prox._prox",
    "jaxsecond.projection._projection",
    "jaxsecond.projection._birkhoff",
]


@pytest.mark.integration  # heavy: in the second tier
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0


@pytest.mark.integration  # heavy: in the second tier
def test_readme_tour_runs():
    # The README's tour is code users paste first: it must run as written.
    import pathlib

    readme = pathlib.Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text()
    start = text.index("```python\n") + len("```python\n")
    code = text[start : text.index("```", start)]
    namespace: dict = {}
    exec(compile(code, str(readme), "exec"), namespace)
    import jax.numpy as jnp

    # The tour's ridge is solved by 500 gradient steps: check it reached the root.
    X, y = namespace["X"], namespace["y"]
    w = namespace["ridge"](jnp.zeros(5), X, y, 1.0)
    assert float(jnp.abs(namespace["ridge_gradient"](w, X, y, 1.0)).max()) < 1e-6
    # The tour's RARTS run reaches the limit its comment states, 2 / (2 - 1/(2 lam) - 1/beta).
    assert abs(float(namespace["state"].arch) - 2 / (2 - 1 / 20 - 1 / 100)) < 1e-4
