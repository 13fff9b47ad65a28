"""Registry of runnable examples, shown by ``jaxsecond tour``.

Each example is one module in ``examples/`` (shipped as ``jaxsecond.examples``)
that decorates its entry point with :func:`example`. The entry point takes the
output folder and a ``full`` flag (paper scale instead of quick size) and returns
an :class:`ExampleResult`.

Example (in ``examples/toy.py``)::

    from jaxsecond._registry import ExampleResult, example, script_main

    @example("toy", area="implicit", description="a toy")
    def run(out, full=False):
        return ExampleResult(summary="nothing to see", key_figure="x = 1")

    if __name__ == "__main__":
        script_main(run)
"""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
import pkgutil
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class ExampleResult:
    """What an example reports back to the tour.

    Attributes:
        summary: one short sentence saying what was computed.
        key_figure: the headline number(s), e.g. ``"hypergradient rel. error 3e-12"``.
        figures: paths of the PNG files written.
    """

    summary: str
    key_figure: str = ""
    figures: tuple[pathlib.Path, ...] = ()


@dataclasses.dataclass(frozen=True)
class Example:
    name: str
    area: str
    description: str
    run: Callable[[pathlib.Path, bool], ExampleResult]
    tour: bool = False


# The areas in the order the default tour shows them; each has one tour example.
AREAS = ("implicit", "curvature", "diffeq", "optim", "nas", "encoding")

_EXAMPLES: dict[str, Example] = {}


def example(name: str, *, area: str, description: str, tour: bool = False):
    """Register ``run(out: pathlib.Path, full: bool = False) -> ExampleResult``.

    ``tour=True`` puts the example in the default ``jaxsecond tour``: one small example
    per area, the whole tour in about two minutes on two cores. The tour calls it as
    ``run(out, False, tour=True)``, so its ``run`` takes a keyword ``tour`` and then runs
    a smaller version of its quick size (seconds, not minutes).
    """

    def register(run):
        _EXAMPLES[name] = Example(
            name=name, area=area, description=description, run=run, tour=tour
        )
        return run

    return register


def tour_names(examples: dict[str, Example]) -> list[str]:
    """The default tour: the examples marked ``tour=True``, in the order of :data:`AREAS`
    (other areas after them, by name)."""
    rank = {area: i for i, area in enumerate(AREAS)}
    chosen = [ex for ex in examples.values() if ex.tour]
    chosen.sort(key=lambda ex: (rank.get(ex.area, len(AREAS)), ex.area, ex.name))
    return [ex.name for ex in chosen]


def discover() -> dict[str, Example]:
    """Import every module of ``jaxsecond.examples`` and return the registry, by name."""
    import jaxsecond.examples as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
    return dict(sorted(_EXAMPLES.items()))


def script_main(run: Callable[[pathlib.Path, bool], ExampleResult]) -> None:
    """Command-line entry for ``python examples/<name>.py [--full] [--out DIR]``."""
    import argparse

    parser = argparse.ArgumentParser(description=(run.__doc__ or "").strip().split("\n")[0])
    parser.add_argument("--full", action="store_true", help="paper-scale run")
    parser.add_argument("--out", default="jaxsecond-out", help="folder for figures")
    ns = parser.parse_args()
    out = pathlib.Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run(out, ns.full)
    print(result.summary)
    if result.key_figure:
        print(result.key_figure)
    for fig in result.figures:
        print(f"wrote {fig}")
