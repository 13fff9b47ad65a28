"""The benchmark harness: timing, memory, markdown tables and ``RESULTS.md`` sections.

A benchmark is a script ``benchmarks/bench_<name>.py`` in the source repository that
defines

* ``TITLE: str``, the heading of its section in ``RESULTS.md``, and
* ``run(quick: bool) -> str``, which measures and returns the section body (markdown),
* optionally ``PACKAGES``, names of peer packages whose versions go in the header.

It runs through ``jaxsecond bench [--quick] [NAME ...]`` from the repository root, or as
a script (``python benchmarks/bench_<name>.py [--quick]``); either way only its own
section of ``RESULTS.md`` is rewritten. The harness ships with the package, so a script
imports it like any module::

    from jaxsecond import _harness

    TITLE = "Hessian-vector products"

    def run(quick: bool) -> str:
        t = _harness.time_jitted(f, x, repeats=5 if quick else 50)
        return _harness.markdown_table(
            ["method", "compile", "median"],
            [["ours", _harness.fmt_seconds(t.compile_s), _harness.fmt_seconds(t.median_s)]],
        )

    if __name__ == "__main__":
        _harness.run_main(TITLE, run)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import os
import pathlib
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

RESULTS_HEADER = """\
# Benchmark results

This file is generated: each section below is written by one script
`benchmarks/bench_<name>.py`, either through `jaxsecond bench [--quick] [NAME ...]` or by
running the script itself (`python benchmarks/bench_<name>.py [--quick]`). Rerunning a
benchmark rewrites only its own section. Every section states the command that produced it,
the date, the machine and the package versions. Times are medians over repeated calls on
that machine, after compilation (compile time is reported separately); memory is XLA's
static estimate of the compiled program's peak. Do not edit between the markers by hand.
"""

_PROBE_PACKAGES = ("jaxsecond", "jax", "jaxlib")


# --------------------------------------------------------------------------- timing


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock timing of a jitted function.

    Attributes:
        compile_s: seconds for the first call (trace + compile + one run).
        median_s: median seconds of the timed calls (after compilation).
        iqr_s: interquartile range of the timed calls, in seconds (0 for fewer than 2).
        min_s: fastest timed call.
        max_s: slowest timed call.
        n: number of timed calls.

    Example:
        >>> t = Timing(compile_s=0.5, median_s=1e-3, iqr_s=1e-4, min_s=9e-4, max_s=2e-3, n=10)
        >>> str(t)
        '1.00 ms (IQR 100 µs, n=10; compile 500 ms)'
    """

    compile_s: float
    median_s: float
    iqr_s: float
    min_s: float
    max_s: float
    n: int

    def __str__(self) -> str:
        return (
            f"{fmt_seconds(self.median_s)} (IQR {fmt_seconds(self.iqr_s)}, n={self.n}; "
            f"compile {fmt_seconds(self.compile_s)})"
        )


def _as_jitted(fn: Callable) -> Callable:
    """``fn`` itself when it is already jitted (has ``.lower``), else ``jax.jit(fn)``."""
    return fn if hasattr(fn, "lower") else jax.jit(fn)


def time_jitted(fn: Callable, *args: Any, repeats: int = 20, warmup: int = 1) -> Timing:
    """Time ``fn(*args)``: compile time from the first call, then a median over ``repeats``.

    ``fn`` is wrapped in ``jax.jit`` unless it already is jitted (``jax.jit`` or
    ``equinox.filter_jit``). The first call (trace + compile + one run) is timed on its own as
    ``compile_s``; if ``fn`` was already compiled for these argument shapes, that is just
    one run. Then ``warmup`` untimed calls, then ``repeats`` timed calls, each ending in
    ``jax.block_until_ready`` so that asynchronous dispatch does not hide the work.

    Example:
        >>> import jax.numpy as jnp
        >>> t = time_jitted(lambda x: jnp.sin(x).sum(), jnp.ones(1000), repeats=5)
        >>> t.n, t.compile_s >= 0, t.median_s > 0
        (5, True, True)
    """
    if repeats < 1:
        raise ValueError(f"time_jitted: repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"time_jitted: warmup must be >= 0, got {warmup}")
    jitted = _as_jitted(fn)

    start = time.perf_counter()
    jax.block_until_ready(jitted(*args))
    compile_s = time.perf_counter() - start

    for _ in range(warmup):
        jax.block_until_ready(jitted(*args))

    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(jitted(*args))
        samples.append(time.perf_counter() - start)

    if len(samples) >= 2:
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
        iqr = q3 - q1
    else:
        iqr = 0.0
    return Timing(
        compile_s=compile_s,
        median_s=statistics.median(samples),
        iqr_s=iqr,
        min_s=min(samples),
        max_s=max(samples),
        n=len(samples),
    )


# --------------------------------------------------------------------------- memory


def peak_memory_bytes(fn: Callable, *args: Any) -> int | None:
    """Static peak device memory of ``fn(*args)``, from XLA's compiled memory analysis.

    Compiles ``jax.jit(fn).lower(*args)`` (or ``fn.lower`` when ``fn`` is already jitted)
    and returns ``temp + output + argument - alias`` bytes of
    ``compiled.memory_analysis()``: the buffers XLA's buffer assignment plans for one call,
    with outputs that alias (donated) arguments counted once. The size of the generated code
    is excluded. This is a compile-time estimate, not a measurement: it is what XLA
    reserves, it does not see allocator fragmentation, and it excludes memory held outside
    the call (other live arrays, caches). Returns ``None`` where the backend gives no
    analysis.

    Example:
        >>> import jax.numpy as jnp
        >>> small = peak_memory_bytes(lambda x: jnp.sort(x * 2).sum(), jnp.ones(10_000))
        >>> large = peak_memory_bytes(lambda x: jnp.sort(x * 2).sum(), jnp.ones(1_000_000))
        >>> small is None or large > small
        True
    """
    compiled = _as_jitted(fn).lower(*args).compile()
    try:
        stats = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError, AttributeError):
        return None
    if stats is None:
        return None
    try:
        total = (
            stats.temp_size_in_bytes
            + stats.output_size_in_bytes
            + stats.argument_size_in_bytes
            - stats.alias_size_in_bytes
        )
    except AttributeError:
        return None
    return int(total)


# --------------------------------------------------------------------------- formatting


def max_rel_error(a: Any, b: Any) -> float:
    """``max |a - b| / max |b|`` over every leaf of two pytrees, in float64 NumPy.

    Example:
        >>> max_rel_error({"x": [1.0, 2.0]}, {"x": [1.0, 4.0]})
        0.5
    """
    a = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(a)])
    b = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(b)])
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), np.finfo(np.float64).tiny))


def fmt_seconds(seconds: float | None) -> str:
    """Seconds with a unit that keeps 3 significant digits.

    Example:
        >>> fmt_seconds(0.0123), fmt_seconds(2.5e-6), fmt_seconds(75.0), fmt_seconds(None)
        ('12.3 ms', '2.50 µs', '75.0 s', 'n/a')
    """
    if seconds is None:
        return "n/a"
    if seconds != seconds:  # NaN
        return "nan"
    magnitude = abs(seconds)
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns")):
        if magnitude >= scale or unit == "ns":
            return f"{_three_digits(seconds / scale)} {unit}"
    raise AssertionError("unreachable")


def fmt_bytes(num_bytes: int | float | None) -> str:
    """Bytes in binary units (KiB, MiB, GiB) with 3 significant digits.

    Example:
        >>> fmt_bytes(512), fmt_bytes(1536), fmt_bytes(8_000_000), fmt_bytes(None)
        ('512 B', '1.50 KiB', '7.63 MiB', 'n/a')
    """
    if num_bytes is None:
        return "n/a"
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{_three_digits(value)} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _three_digits(x: float) -> str:
    magnitude = abs(x)
    if magnitude >= 100:
        return f"{x:.0f}"
    if magnitude >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; floats get 4 significant digits, ``None`` is n/a.

    Example:
        >>> print(markdown_table(["method", "time"], [["ours", "1.2 ms"], ["jaxopt", 0.00345]]))
        | method | time    |
        |--------|---------|
        | ours   | 1.2 ms  |
        | jaxopt | 0.00345 |
    """
    header_cells = [_cell(h) for h in headers]
    body = []
    for i, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(
                f"markdown_table: row {i} has {len(row)} cells, expected {len(headers)} "
                f"(one per header {list(headers)})"
            )
        body.append([_cell(v) for v in row])
    widths = [max(len(c) for c in column) for column in zip(header_cells, *body, strict=True)]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header_cells), rule, *(line(r) for r in body)])


# --------------------------------------------------------------------------- RESULTS.md


def package_version(distribution: str) -> str:
    """The installed version of ``distribution``, ``"not installed"`` when absent."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        module = __import__(distribution.replace("-", "_"))
    except Exception:
        return "not installed"
    return str(getattr(module, "__version__", "unknown"))


def machine_description() -> str:
    """One line naming the JAX backend, the device kind and count, and the CPU count.

    Example:
        >>> machine_description()  # doctest: +SKIP
        'jax backend cpu, 1 x cpu, 2 CPUs'
    """
    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    return (
        f"jax backend {jax.default_backend()}, {len(devices)} x {', '.join(kinds)}, "
        f"{os.cpu_count()} CPUs"
    )


def _markers(title: str) -> tuple[str, str]:
    if not title.strip() or "\n" in title or "--" in title:
        raise ValueError(
            f"write_section: title must be one non-empty line without '--', got {title!r}"
        )
    return f"<!-- begin: {title} -->", f"<!-- end: {title} -->"


def write_section(
    results_path: str | os.PathLike,
    title: str,
    body: str,
    command: str,
    *,
    packages: Sequence[str] = (),
) -> pathlib.Path:
    """Replace (or append) the section ``## <title>`` of a results file; keep the others.

    The section sits between ``<!-- begin: <title> -->`` and ``<!-- end: <title> -->`` and
    starts with a line recording ``command``, today's date, :func:`machine_description`,
    and the versions of jaxsecond, jax, jaxlib and of the extra ``packages`` (e.g. the
    peers compared against). A missing file is created with the standard header. The file
    is replaced atomically.

    Example:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "RESULTS.md"
        >>> _ = write_section(path, "HVP", "| a |\\n|---|\\n| 1 |", "jaxsecond bench hvp")
        >>> "<!-- begin: HVP -->" in path.read_text()
        True
    """
    path = pathlib.Path(results_path)
    begin, end = _markers(title)
    versions = ", ".join(
        f"{name} {package_version(name)}" for name in dict.fromkeys([*_PROBE_PACKAGES, *packages])
    )
    today = datetime.date.today().isoformat()
    section = (
        f"{begin}\n## {title}\n\n"
        f"_Produced by `{command}` on {today}; {machine_description()}; {versions}._\n\n"
        f"{body.strip()}\n{end}"
    )

    text = path.read_text(encoding="utf-8") if path.exists() else RESULTS_HEADER
    start = text.find(begin)
    if start >= 0:
        stop = text.find(end, start)
        if stop < 0:
            raise ValueError(
                f"write_section: {path} has {begin!r} but no matching {end!r}; "
                "fix the file by hand or delete the broken section"
            )
        text = text[:start] + section + text[stop + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_section(results_path: str | os.PathLike, title: str) -> str | None:
    """The text of section ``title`` including its markers, or ``None`` if absent.

    Example:
        >>> read_section("/nonexistent/RESULTS.md", "HVP") is None
        True
    """
    path = pathlib.Path(results_path)
    if not path.exists():
        return None
    begin, end = _markers(title)
    text = path.read_text(encoding="utf-8")
    start = text.find(begin)
    stop = text.find(end, start) if start >= 0 else -1
    if start < 0 or stop < 0:
        return None
    return text[start : stop + len(end)]


# --------------------------------------------------------------------------- scripts


def run_main(
    title: str,
    run: Callable[[bool], str],
    *,
    argv: Sequence[str] | None = None,
    packages: Sequence[str] = (),
) -> int:
    """Command line of one benchmark script: ``[--quick] [--results PATH] [--no-write]``.

    Runs ``run(quick)``, prints the section body and writes it to ``RESULTS.md`` (next to
    the script being run unless ``--results`` says otherwise). Returns the exit status, so a script
    ends with ``raise SystemExit(_harness.run_main(TITLE, run))`` or just calls it.

    Example:
        >>> import pathlib, tempfile
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "RESULTS.md"
        >>> table = "| x |\\n|---|\\n| 1 |"
        >>> run_main("Toy", lambda quick: table, argv=["--results", str(out)])  # doctest: +ELLIPSIS
        | x |
        |---|
        | 1 |
        wrote section 'Toy' to ...
        0
    """
    parser = argparse.ArgumentParser(description=f"Benchmark: {title}")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument(
        "--results",
        type=pathlib.Path,
        default=None,
        help="results file to update (default: RESULTS.md next to the script)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only, leave the file")
    args = list(sys.argv[1:] if argv is None else argv)
    ns = parser.parse_args(args)
    body = run(ns.quick)
    print(body.strip())
    if not ns.no_write:
        script = pathlib.Path(sys.argv[0])
        try:
            script = script.resolve().relative_to(pathlib.Path.cwd())
        except ValueError:
            pass
        command = shlex.join(["python", script.as_posix(), *(["--quick"] if ns.quick else [])])
        results = ns.results or pathlib.Path(sys.argv[0]).resolve().parent / "RESULTS.md"
        path = write_section(results, title, body, command, packages=packages)
        print(f"wrote section {title!r} to {path}")
    return 0
