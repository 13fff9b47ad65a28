"""A slot that carries a black-box solver's non-array output out of a ``custom_jvp``.

A solver JAX cannot trace (NumPy, SciPy) runs eagerly inside the ``custom_jvp`` that
implicit differentiation wraps around it. Its auxiliary output may hold non-array
values (strings, Python numbers), and a ``custom_jvp`` returns arrays only, so those go
out through this slot: the solve puts them in, the caller takes them out after the call.

This relies on one behaviour of JAX: outside ``jit``, a ``custom_jvp`` function (and
under ``jvp`` its rule) runs in the caller's thread before the call returns. That is how
eager JAX has always worked, but it is not a documented promise, so it is isolated here:
if a JAX release changes it, :meth:`Outbox.take` raises instead of returning stale or
missing values, and ``tests/test_compat.py`` fails.
"""

from __future__ import annotations

from typing import Any

SUPPORTED_JAX = ">=0.10,<0.11"


class Outbox:
    """One value, put once and taken once; compared and hashed by identity, so it can
    sit in a static field of an equinox Module.

    Example:
        >>> box = Outbox()
        >>> box.put({"solver": "scipy"})
        >>> box.take()
        {'solver': 'scipy'}
    """

    __slots__ = ("_full", "_value")

    def __init__(self):
        self._full = False
        self._value = None

    def put(self, value: Any) -> None:
        self._value, self._full = value, True

    def take(self) -> Any:
        if not self._full:
            raise RuntimeError(
                "a black-box solver's auxiliary output did not reach the caller: this JAX "
                "release runs custom_jvp functions differently from the ones jaxsecond "
                f"supports (jax{SUPPORTED_JAX}); please report it"
            )
        value, self._value, self._full = self._value, None, False
        return value
