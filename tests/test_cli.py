"""The ``jaxsecond`` command line (tour, bench, info) and the benchmark harness."""

from __future__ import annotations

import importlib.util
import inspect
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import jaxsecond
from jaxsecond import _cli, _harness, _registry

harness = _harness

REPO = pathlib.Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"




def _run_module(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    """``python -m jaxsecond ARGS`` with the same jaxsecond this test process imported."""
    env = dict(os.environ)
    package_root = str(pathlib.Path(jaxsecond.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(
        [sys.executable, "-m", "jaxsecond", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _assert_one_line_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert "Traceback" not in stderr
    assert "error" in lines[0]
    return lines[0]


@pytest.fixture
def registry(monkeypatch):
    """An empty example registry that ``jaxsecond tour`` sees instead of the real one."""
    monkeypatch.setattr(_registry, "_EXAMPLES", {})
    monkeypatch.setattr(_registry, "discover", lambda: dict(sorted(_registry._EXAMPLES.items())))
    return _registry


def _register_plot(name: str = "toy") -> None:
    @_registry.example(name, area="test", description="draws one line")
    def run(out: pathlib.Path, full: bool = False) -> _registry.ExampleResult:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(2, 2))
        fig.subplots().plot([0, 1], [0, 2 if not full else 3])
        path = out / f"{name}.png"
        fig.savefig(path)
        return _registry.ExampleResult(summary="drew a line", key_figure="slope 2", figures=(path,))


# --------------------------------------------------------------------------- tour


def test_tour_writes_png_and_prints_summary(registry, tmp_path, capsys):
    _register_plot("toy")
    out = tmp_path / "figs"
    assert _cli.main(["tour", "--out", str(out), "toy"]) == 0
    png = out / "toy" / "toy.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    captured = capsys.readouterr()
    line = next(row for row in captured.out.splitlines() if row.startswith("toy"))
    assert "drew a line" in line and "slope 2" in line and line.endswith(" s")
    assert captured.err == ""
    assert not list(out.glob(".jaxsecond-probe-*")), "the writability probe must be removed"


def test_tour_failing_example_reports_and_continues(registry, tmp_path, capsys):
    @_registry.example("boom", area="test", description="always fails")
    def boom(out, full=False):
        raise ValueError("kaboom\nsecond line of the message")

    _register_plot("toy")
    assert _cli.main(["tour", "--all", "--out", str(tmp_path)]) == _cli.EXIT_FAILED
    captured = capsys.readouterr()
    boom_lines = [row for row in captured.out.splitlines() if row.startswith("boom")]
    assert len(boom_lines) == 1 and "ValueError: kaboom" in boom_lines[0]
    assert "Traceback" not in captured.out + captured.err
    assert "failed: boom" in captured.err
    assert (tmp_path / "toy" / "toy.png").exists(), "the other examples still run"


def test_tour_default_runs_the_tour_examples_in_area_order(registry, tmp_path, capsys):
    ran = []

    def register(name, area, tour):
        @_registry.example(name, area=area, description=name, tour=tour)
        def run(out, full=False, *, tour=False):
            ran.append((name, tour))
            return _registry.ExampleResult(summary=name)

    register("zeta", "encoding", True)
    register("alpha", "implicit", True)
    register("extra", "implicit", False)
    register("mid", "diffeq", True)
    assert _cli.main(["tour", "--out", str(tmp_path)]) == 0
    assert ran == [("alpha", True), ("mid", True), ("zeta", True)]  # at their tour size
    ran.clear()
    assert _cli.main(["tour", "--all", "--out", str(tmp_path)]) == 0
    assert sorted(ran) == [("alpha", False), ("extra", False), ("mid", False), ("zeta", False)]
    ran.clear()
    assert _cli.main(["tour", "--out", str(tmp_path), "alpha"]) == 0
    assert ran == [("alpha", False)]
    capsys.readouterr()
    assert _cli.main(["tour", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [row.split()[1] for row in listed if row.startswith("*")] == ["alpha", "mid", "zeta"]
    assert _cli.main(["tour", "--all", "alpha"]) == _cli.EXIT_USAGE
    assert "not both" in _assert_one_line_error(capsys.readouterr().err)


def test_tour_prints_each_figure_path(registry, tmp_path, capsys):
    _register_plot("toy")
    assert _cli.main(["tour", "--out", str(tmp_path), "toy"]) == 0
    out = capsys.readouterr().out
    assert f"figure {tmp_path / 'toy' / 'toy.png'}" in out


def test_real_tour_has_one_example_per_area():
    examples = _registry.discover()
    chosen = [examples[name] for name in _registry.tour_names(examples)]
    assert [ex.area for ex in chosen] == list(_registry.AREAS)
    for ex in chosen:  # the tour calls run(out, False, tour=True)
        assert "tour" in inspect.signature(ex.run).parameters, ex.name


def test_tour_unknown_example(registry, tmp_path, capsys):
    _register_plot("toy")
    out = tmp_path / "figs"
    assert _cli.main(["tour", "--out", str(out), "nosuchexample"]) == _cli.EXIT_USAGE
    line = _assert_one_line_error(capsys.readouterr().err)
    assert "nosuchexample" in line and "known: toy" in line
    assert not out.exists(), "nothing is created for bad input"


def test_tour_unwritable_out(registry, tmp_path, capsys):
    _register_plot("toy")
    blocker = tmp_path / "regular-file"
    blocker.write_text("not a folder")
    assert _cli.main(["tour", "--out", str(blocker / "sub"), "toy"]) == _cli.EXIT_USAGE
    line = _assert_one_line_error(capsys.readouterr().err)
    assert "--out" in line and str(blocker / "sub") in line
    assert _cli.main(["tour", "--out", str(blocker), "toy"]) == _cli.EXIT_USAGE
    assert "not a folder" in _assert_one_line_error(capsys.readouterr().err)


def test_tour_no_examples(registry, tmp_path, capsys):
    assert _cli.main(["tour", "--out", str(tmp_path)]) == _cli.EXIT_USAGE
    assert "no examples registered" in _assert_one_line_error(capsys.readouterr().err)


def test_subprocess_unknown_example(tmp_path):
    proc = _run_module("tour", "--out", str(tmp_path / "figs"), "nosuchexample", cwd=tmp_path)
    assert proc.returncode != 0
    assert _assert_one_line_error(proc.stderr).startswith("jaxsecond tour: error:")


def test_subprocess_unwritable_out(tmp_path):
    blocker = tmp_path / "regular-file"
    blocker.write_text("not a folder")
    proc = _run_module("tour", "--out", str(blocker / "sub"), cwd=tmp_path)
    assert proc.returncode != 0
    assert _assert_one_line_error(proc.stderr).startswith("jaxsecond tour: error:")


def test_subprocess_bad_option_is_one_line(tmp_path):
    proc = _run_module("tour", "--no-such-flag", cwd=tmp_path)
    assert proc.returncode == _cli.EXIT_USAGE
    _assert_one_line_error(proc.stderr)


# --------------------------------------------------------------------------- info


def _info_versions(text: str) -> dict[str, str]:
    rows = (line.split(None, 1) for line in text.splitlines() if line.strip())
    return {row[0]: row[1].strip() for row in rows if len(row) == 2}


def test_info_in_process(capsys):
    assert _cli.main(["info"]) == 0
    versions = _info_versions(capsys.readouterr().out)
    assert versions["jax"] == jax.__version__
    assert versions["jaxsecond"] == jaxsecond.__version__
    for name in ("jaxlib", "equinox", "optax", "lineax", "diffrax", "python", "devices"):
        assert name in versions
    assert versions["hash-grid"].split()[-1] in ("pallas", "xla")


def test_info_subprocess(tmp_path):
    proc = _run_module("info", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _info_versions(proc.stdout)["jax"] == jax.__version__


INTERRUPT_DURING_IMPORT = """
import os, signal, sys, threading
from jaxsecond import _cli
assert "jax" not in sys.modules  # the command line starts before JAX is imported
threading.Timer(float(sys.argv[1]), os.kill, (os.getpid(), signal.SIGINT)).start()
sys.exit(_cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("delay", [0.05, 0.5])
def test_ctrl_c_while_jax_imports_stops_the_tour(tmp_path, delay):
    # An interrupt during JAX's import used to be swallowed in its garbage-collection
    # callback (the tour then ran to the end with status 0) or to crash jaxlib.
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    package_root = str(pathlib.Path(jaxsecond.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    out = tmp_path / "figs"
    proc = subprocess.run(
        [sys.executable, "-c", INTERRUPT_DURING_IMPORT, str(delay), "tour", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == _cli.EXIT_INTERRUPTED, proc.stderr
    assert proc.stderr.strip() == "jaxsecond tour: interrupted"
    assert not out.exists() or not any(out.iterdir())  # no example ran


# --------------------------------------------------------------------------- bench

BENCH_TOY = """
from jaxsecond import _harness

TITLE = "Toy benchmark"

def run(quick: bool) -> str:
    size = "small" if quick else "large"
    return _harness.markdown_table(["size", "time"], [[size, _harness.fmt_seconds(1e-3)]])

if __name__ == "__main__":
    _harness.run_main(TITLE, run)
"""


@pytest.fixture
def bench_dir(tmp_path):
    """A benchmarks folder with one toy benchmark (the harness comes with the package)."""
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "bench_toy.py").write_text(BENCH_TOY)
    (folder / "RESULTS.md").write_text(harness.RESULTS_HEADER)
    path_before = list(sys.path)
    yield folder
    assert sys.path == path_before  # the command loads benchmarks without touching sys.path
    sys.modules.pop("bench_toy", None)


def test_bench_writes_section(bench_dir, capsys):
    assert _cli.main(["bench", "--dir", str(bench_dir), "--quick"]) == 0
    text = (bench_dir / "RESULTS.md").read_text()
    assert text.startswith("# Benchmark results")
    assert "## Toy benchmark" in text and "| small |" in text
    assert "`jaxsecond bench --quick toy`" in text
    assert _cli.main(["bench", "--dir", str(bench_dir), "bench_toy.py"]) == 0
    text = (bench_dir / "RESULTS.md").read_text()
    assert text.count("## Toy benchmark") == 1 and "| large |" in text and "small" not in text
    assert "wrote section" in capsys.readouterr().out


def test_bench_bad_input(bench_dir, tmp_path, capsys):
    assert _cli.main(["bench", "--dir", str(bench_dir), "nosuchbench"]) == _cli.EXIT_USAGE
    assert "known: toy" in _assert_one_line_error(capsys.readouterr().err)
    missing = tmp_path / "missing"
    assert _cli.main(["bench", "--dir", str(missing)]) == _cli.EXIT_USAGE
    assert "--dir" in _assert_one_line_error(capsys.readouterr().err)


# --------------------------------------------------------------------------- harness


def test_write_section_round_trip(tmp_path):
    path = tmp_path / "RESULTS.md"
    harness.write_section(path, "Alpha", "alpha body v1", "jaxsecond bench alpha")
    harness.write_section(path, "Beta", "| b |\n|---|\n| 2 |", "python bench_beta.py")
    before = path.read_text()
    alpha_old = harness.read_section(path, "Alpha")
    beta = harness.read_section(path, "Beta")
    assert "alpha body v1" in alpha_old and "| 2 |" in beta

    harness.write_section(path, "Alpha", "alpha body v2", "jaxsecond bench --quick alpha")
    after = path.read_text()
    alpha_new = harness.read_section(path, "Alpha")
    assert "alpha body v2" in alpha_new and "alpha body v1" not in after
    assert after.count("## Alpha") == 1 and after.count("<!-- begin: Alpha -->") == 1
    assert "`jaxsecond bench --quick alpha`" in alpha_new
    assert jax.__version__ in alpha_new and jax.default_backend() in alpha_new
    # Everything outside the rewritten section, header and Beta included, is unchanged.
    assert after.replace(alpha_new, "ALPHA") == before.replace(alpha_old, "ALPHA")
    assert after.startswith("# Benchmark results")
    assert after.index("## Alpha") < after.index("## Beta"), "sections keep their place"


def test_write_section_rejects_bad_title(tmp_path):
    with pytest.raises(ValueError, match="title"):
        harness.write_section(tmp_path / "R.md", "a -->\nb", "body", "cmd")


def test_markdown_table_and_formatting():
    table = harness.markdown_table(["method", "time"], [["ours", 0.5], ["peer", None]])
    lines = table.splitlines()
    assert lines[0].startswith("| method") and set(lines[1]) <= {"|", "-"}
    assert "n/a" in lines[3]
    with pytest.raises(ValueError, match="row 0"):
        harness.markdown_table(["a", "b"], [["only one"]])
    assert harness.fmt_seconds(0.0123) == "12.3 ms"
    assert harness.fmt_bytes(3 * 1024**2) == "3.00 MiB"


def test_time_jitted():
    timing = harness.time_jitted(lambda x: jnp.sin(x).sum(), jnp.ones(100), repeats=3)
    assert timing.compile_s >= 0 and timing.median_s > 0
    assert timing.n == 3 and timing.min_s <= timing.median_s <= timing.max_s
    jitted = jax.jit(lambda x: x * 2)
    assert harness.time_jitted(jitted, jnp.ones(3), repeats=1, warmup=0).n == 1


def test_peak_memory_grows_with_temporary():
    def make(n):
        def f(x):
            big = jnp.sort(jnp.sin(x * jnp.arange(n)))  # a materialised length-n temporary
            return big.sum()

        return f

    small = harness.peak_memory_bytes(make(10_000), 1.0)
    large = harness.peak_memory_bytes(make(1_000_000), 1.0)
    if small is None or large is None:
        pytest.skip("this backend gives no compiled memory analysis")
    assert large > small
    assert large >= 1_000_000 * 4, "at least one float32 copy of the temporary"


def test_tour_without_the_examples_extra_says_how_to_install_it(monkeypatch, capsys):
    # The core install has no matplotlib or scikit-learn; the examples package says which
    # are missing and how to get them, rather than failing deep inside one example.
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a),
    )
    package = "jaxsecond.examples"
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, name)
    assert _cli.main(["tour", "--list"]) == _cli.EXIT_USAGE
    err = _assert_one_line_error(capsys.readouterr().err)
    assert "matplotlib" in err and 'pip install "jaxsecond[examples]"' in err
