"""A progress meter for long solves: a tqdm bar fed from inside the compiled loop.

``odeint(..., progress_meter=True)`` gives the solve's term a meter number; the
forward loops (fixed and adaptive) then send, after each accepted step, the fraction
of the time span covered to the host, where a bar per call site shows it. Reverse
passes report nothing. Under ``vmap`` one bar follows the fastest batch element.
"""

from __future__ import annotations

import itertools
import threading

import jax
import jax.numpy as jnp

_RESOLUTION = 1000  # bar units per solve
_bars: dict[int, object] = {}
_lock = threading.Lock()
_numbers = itertools.count()


def new_meter() -> int:
    """A number identifying one call site's bar (chosen at trace time)."""
    return next(_numbers)


def _update(meter: int, fraction, first) -> None:
    from tqdm.auto import tqdm

    fraction = float(fraction)
    with _lock:
        bar = _bars.get(meter)
        # tqdm disables a bar when it is closed: a finished solve.
        if bool(first) and (bar is None or bar.disable):
            bar = _bars[meter] = tqdm(total=_RESOLUTION, desc="solve (time span covered)", unit="‰")
        if bar is None or bar.disable:
            return
        n = min(_RESOLUTION, max(bar.n, round(_RESOLUTION * fraction)))
        bar.update(n - bar.n)
        if fraction >= 1.0:
            bar.close()


def report(meter: int | None, fraction, first) -> None:
    """Send ``fraction`` (traced scalar in [0, 1]) to the bar; ``first`` marks the first
    step of a solve (a new bar). Does nothing without a meter."""
    if meter is None:
        return
    fraction = jnp.clip(jnp.real(fraction), 0.0, 1.0)
    jax.debug.callback(lambda f, s: _update(meter, f, s), fraction, first)
