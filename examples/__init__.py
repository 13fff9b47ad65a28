"""Runnable examples. Each module registers itself with ``jaxsecond tour`` and also runs
as a script (``python examples/<name>.py [--full] [--out DIR]``).

The examples draw figures with matplotlib and load scikit-learn's bundled datasets
(and scikit-image's marching cubes), which the core library does not need; they come
with ``pip install "jaxsecond[examples]"``.
"""

import importlib.util

_NEEDED = {"matplotlib": "matplotlib", "sklearn": "scikit-learn", "skimage": "scikit-image"}

_missing = [dist for module, dist in _NEEDED.items() if importlib.util.find_spec(module) is None]
if _missing:
    raise ModuleNotFoundError(
        f"the examples need {', '.join(_missing)}, which the core install leaves out; "
        "install them with: pip install \"jaxsecond[examples]\"",
        name=_missing[0],
    )
