"""The top-level package: lazy names that are the subpackages' own objects."""

import importlib
import os
import subprocess
import sys

import pytest

import jaxsecond


@pytest.mark.parametrize("name", jaxsecond.__all__)
def test_top_level_name_is_the_subpackage_object(name):
    value = getattr(jaxsecond, name)
    if name in jaxsecond._SUBPACKAGES:
        assert value is importlib.import_module(f"jaxsecond.{name}")
    else:
        home = importlib.import_module(f"jaxsecond.{jaxsecond._HOME[name]}")
        assert value is getattr(home, name)
    assert name in dir(jaxsecond)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'odient'"):
        jaxsecond.odient
    with pytest.raises(ImportError):
        from jaxsecond import odient  # noqa: F401


def test_import_does_not_load_jax():
    # The command line starts (and answers Ctrl-C, --help) before JAX's few seconds of import.
    code = "import sys, jaxsecond, jaxsecond._cli; print('jax' in sys.modules)"
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(jaxsecond.__file__))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
