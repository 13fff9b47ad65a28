"""The ``jaxsecond`` command line: ``tour``, ``bench`` and ``info``.

Example:
    $ jaxsecond info                      # versions, devices, hash-grid backend
    $ jaxsecond tour                      # one small example per area (about 2.5 minutes)
    $ jaxsecond tour --all                # every example at quick size
    $ jaxsecond tour --full --out figs NAME ...
    $ jaxsecond bench --quick             # rerun benchmarks/bench_*.py, rewrite RESULTS.md

The same from Python: ``jaxsecond._cli.main(["tour", "--out", "figs"])`` returns the exit
status. Bad input (an unknown name, an unwritable folder) gives one line on stderr and a
non-zero status, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.metadata
import importlib.util
import os
import pathlib
import platform
import shlex
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence

PROG = "jaxsecond"
DEFAULT_OUT = "jaxsecond-out"
EXIT_FAILED = 1  # an example or benchmark raised
EXIT_USAGE = 2  # bad input; nothing ran
EXIT_INTERRUPTED = 130

_VERSION_PACKAGES = ("jax", "jaxlib", "equinox", "optax", "lineax", "diffrax")


class _UsageError(Exception):
    """Bad input: reported as one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump), so every bad input reads the same."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _raising_is_ignored(frame) -> bool:
    """Whether an exception raised at ``frame`` would be printed and dropped: inside a
    garbage-collection callback, or inside the import machinery, whose module-lock
    weakref callbacks run wherever an import happens to collect garbage."""
    codes = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    while frame is not None:
        if frame.f_code in codes or frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


class _Interrupts:
    """Ctrl-C that is never lost.

    JAX registers a garbage-collection callback, and Python prints and drops an exception
    raised inside one (or inside the import machinery's weakref callbacks): a
    KeyboardInterrupt that lands there (likeliest while modules are being imported)
    would let the command run on. The handler also records the interrupt, so
    ``check()`` between examples or benchmarks stops the command anyway.
    """

    def __init__(self):
        self.seen = False
        self._deferring = False
        self._previous = None

    def _handler(self, signum, frame):
        self.seen = True
        if not (self._deferring or _raising_is_ignored(frame)):
            raise KeyboardInterrupt
        # Raising there would only print "Exception ignored"; check() raises instead.

    @contextlib.contextmanager
    def deferred(self):
        """Hold interrupts until the block ends: jaxlib can crash (SIGSEGV) when its
        extension's initialisation is interrupted, so importing JAX is never cut short."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        self.check()

    def check(self) -> None:
        if self.seen:
            raise KeyboardInterrupt

    def __enter__(self):
        self.seen = False
        # Only take over Python's default handler, and only where signals can be handled.
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        return False


_INTERRUPTS = _Interrupts()


def _one_line(exc: BaseException) -> str:
    """``Type: first line of the message``."""
    lines = str(exc).strip().splitlines()
    message = lines[0] if lines else ""
    if len(lines) > 1:
        message += " ..."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _ensure_writable_dir(path: pathlib.Path, option: str) -> None:
    """Create ``path`` and prove it is writable with a probe file, or raise ``_UsageError``."""
    if path.exists() and not path.is_dir():
        raise _UsageError(f"{option} {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".jaxsecond-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _UsageError(f"cannot write to {option} {path}: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------- tour


def _cmd_tour(ns: argparse.Namespace) -> int:
    from tqdm import tqdm

    from jaxsecond import _registry

    if ns.all and ns.names:
        raise _UsageError("give example NAMEs or --all, not both")
    if not ns.list and sys.stderr.isatty():  # progress chatter for people, like the bar
        print(f"{PROG} tour: loading JAX and the examples ...", file=sys.stderr, flush=True)
    with _INTERRUPTS.deferred():
        import jax  # noqa: F401  (jaxlib's initialisation is the part not to interrupt)
    try:
        examples = _registry.discover()
    except Exception as exc:
        hint = ""
        if isinstance(exc, ModuleNotFoundError) and exc.name == "jaxsecond.examples":
            hint = ' (is jaxsecond installed? pip install -e ".[dev]")'
        raise _UsageError(f"could not load the examples: {_one_line(exc)}{hint}") from None
    if not examples:
        raise _UsageError("no examples registered (the jaxsecond.examples package is empty)")

    default = _registry.tour_names(examples)
    if ns.list:
        width = max(len(name) for name in examples)
        for name, ex in examples.items():
            star = "*" if name in default else " "
            print(f"{star} {name:<{width}}  [{ex.area}] {ex.description}")
        print(f"(* in the default tour; {PROG} tour --all runs every example)")
        return 0

    # The default tour runs its examples at their smallest size (run(..., tour=True));
    # NAMEs and --all run the quick size, --full the paper scale.
    small = {}
    if ns.names:
        names = list(dict.fromkeys(ns.names))
    elif ns.all:
        names = list(examples)
    else:
        names = default
        if not names:
            raise _UsageError("no example is marked for the default tour; use --all or NAMEs")
        small = {} if ns.full else {"tour": True}
    unknown = [name for name in names if name not in examples]
    if unknown:
        what = "example" if len(unknown) == 1 else "examples"
        raise _UsageError(
            f"unknown {what} {', '.join(map(repr, unknown))}; known: {', '.join(examples)}"
        )

    out = pathlib.Path(ns.out)
    _ensure_writable_dir(out, "--out")

    width = max(len(name) for name in names)
    failed: list[str] = []
    start_all = time.perf_counter()
    bar = tqdm(names, desc="tour", unit="example", file=sys.stderr, disable=None, leave=False)
    for name in bar:
        _INTERRUPTS.check()
        bar.set_postfix_str(name)
        start = time.perf_counter()
        try:
            folder = out / name
            folder.mkdir(parents=True, exist_ok=True)
            result = examples[name].run(folder, ns.full, **small)
            if not isinstance(result, _registry.ExampleResult):
                raise TypeError(f"run returned {type(result).__name__}, expected ExampleResult")
        except Exception as exc:
            seconds = time.perf_counter() - start
            failed.append(name)
            tqdm.write(f"{name:<{width}} | FAILED {_one_line(exc)} | {seconds:.1f} s")
            if ns.traceback:
                tqdm.write(traceback.format_exc().rstrip(), file=sys.stderr)
            continue
        seconds = time.perf_counter() - start
        parts = [f"{name:<{width}}", result.summary]
        if result.key_figure:
            parts.append(result.key_figure)
        parts.append(f"{seconds:.1f} s")
        tqdm.write(" | ".join(parts))
        for figure in result.figures:
            tqdm.write(f"{'':<{width}} | figure {figure}")
    bar.close()
    _INTERRUPTS.check()

    total = time.perf_counter() - start_all
    size = "full" if ns.full else ("tour" if small else "quick")
    print(
        f"{len(names) - len(failed)}/{len(names)} examples ({size}) in {total:.1f} s; "
        f"figures in {out}"
    )
    if failed:
        hint = "" if ns.traceback else " (rerun with --traceback for details)"
        print(f"{PROG} tour: failed: {', '.join(failed)}{hint}", file=sys.stderr)
        return EXIT_FAILED
    return 0


# --------------------------------------------------------------------------- bench


def _find_bench_dir(option: str | None) -> pathlib.Path:
    if option is not None:
        folder = pathlib.Path(option)
        if not folder.is_dir():
            raise _UsageError(f"--dir {folder} is not a folder")
        return folder
    import jaxsecond

    candidates = [
        pathlib.Path.cwd() / "benchmarks",
        pathlib.Path(jaxsecond.__file__).resolve().parent.parent / "benchmarks",
    ]
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise _UsageError(
        "no benchmarks folder found (looked for "
        + " and ".join(str(c) for c in dict.fromkeys(candidates))
        + "); the benchmarks live in the source repository, not in the installed package: "
        "run from the root of a checkout or pass --dir"
    )


def _bench_name(arg: str) -> str:
    """Accept ``hvp``, ``bench_hvp`` and ``bench_hvp.py`` alike."""
    name = pathlib.Path(arg).name.removesuffix(".py")
    return name.removeprefix("bench_")


def _load_bench(name: str, path: pathlib.Path):
    """Import ``bench_<name>.py`` and check it defines ``TITLE`` and ``run``."""
    module_name = f"bench_{name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    title = getattr(module, "TITLE", None)
    if not isinstance(title, str) or not title.strip():
        raise TypeError(f"{path.name} must define TITLE, a non-empty string")
    if not callable(getattr(module, "run", None)):
        raise TypeError(f"{path.name} must define run(quick: bool) -> str")
    return module


def _cmd_bench(ns: argparse.Namespace) -> int:
    folder = _find_bench_dir(ns.dir)
    available = {_bench_name(p.name): p for p in sorted(folder.glob("bench_*.py"))}
    if not available:
        raise _UsageError(f"no benchmarks in {folder} (expected files bench_<name>.py)")
    if ns.list:
        for name, path in available.items():
            print(f"{name}  ({path})")
        return 0

    names = list(dict.fromkeys(_bench_name(n) for n in ns.names)) or list(available)
    unknown = [name for name in names if name not in available]
    if unknown:
        what = "benchmark" if len(unknown) == 1 else "benchmarks"
        raise _UsageError(
            f"unknown {what} {', '.join(map(repr, unknown))}; known: {', '.join(available)}"
        )
    results = pathlib.Path(ns.results) if ns.results else folder / "RESULTS.md"
    _ensure_writable_dir(results.parent, "--results folder")
    with _INTERRUPTS.deferred():
        from jaxsecond import _harness as harness

    failed: list[str] = []
    for i, name in enumerate(names, 1):
        _INTERRUPTS.check()
        start = time.perf_counter()
        print(f"[{i}/{len(names)}] {name} ...", flush=True)
        try:
            with _INTERRUPTS.deferred():
                module = _load_bench(name, available[name])
            body = module.run(ns.quick)
            if not isinstance(body, str):
                raise TypeError(f"run returned {type(body).__name__}, expected a markdown str")
            command = shlex.join([PROG, "bench", *(["--quick"] if ns.quick else []), name])
            packages = tuple(getattr(module, "PACKAGES", ()))
            harness.write_section(results, module.TITLE, body, command, packages=packages)
        except Exception as exc:
            failed.append(name)
            hint = ""
            if isinstance(exc, ModuleNotFoundError):
                hint = ' (peer libraries come with: pip install -e ".[bench]")'
            seconds = time.perf_counter() - start
            print(f"{name}: FAILED {_one_line(exc)}{hint} | {seconds:.1f} s", flush=True)
            if ns.traceback:
                traceback.print_exc()
            continue
        print(body.strip())
        seconds = time.perf_counter() - start
        print(f"{name}: wrote section {module.TITLE!r} to {results} | {seconds:.1f} s", flush=True)

    _INTERRUPTS.check()
    if failed:
        hint = "" if ns.traceback else " (rerun with --traceback for details)"
        print(f"{PROG} bench: failed: {', '.join(failed)}{hint}", file=sys.stderr)
        return EXIT_FAILED
    return 0


# --------------------------------------------------------------------------- info


def _cmd_info(ns: argparse.Namespace) -> int:
    with _INTERRUPTS.deferred():
        import jax

    import jaxsecond
    from jaxsecond._harness import package_version

    rows = [("jaxsecond", getattr(jaxsecond, "__version__", package_version("jaxsecond")))]
    for name in _VERSION_PACKAGES:
        version = jax.__version__ if name == "jax" else package_version(name)
        rows.append((name, version))
    rows.append(("python", f"{platform.python_version()} ({platform.python_implementation()})"))
    try:
        devices = jax.devices()
        groups: dict[tuple[str, str], int] = {}
        for device in devices:
            key = (device.platform, device.device_kind)
            groups[key] = groups.get(key, 0) + 1
        rows.append(("backend", jax.default_backend()))
        for (plat, kind), count in groups.items():
            rows.append(("devices", f"{count} x {plat} ({kind})"))
        from jaxsecond.encoding._hashgrid import resolve_backend

        rows.append(("hash-grid backend (auto)", resolve_backend("auto")))
    except RuntimeError as exc:
        rows.append(("devices", f"unavailable: {_one_line(exc)}"))
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


# --------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    from jaxsecond import __version__

    parser = _Parser(
        prog=PROG,
        description="jaxsecond: implicit, second-order and reversible differentiation for JAX.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    tour = sub.add_parser(
        "tour",
        help="run the examples and write their figures",
        description="Run examples at quick size and write each one's figures to "
        "OUT/<name>/: by default one small example per area (two to three minutes on two "
        "cores), with --all every example, or the NAMEs given. Prints one line per example "
        "and the path of each figure.",
    )
    tour.add_argument(
        "names", nargs="*", metavar="NAME", help="examples to run (default: one per area)"
    )
    tour.add_argument("--all", action="store_true", help="run every example")
    tour.add_argument(
        "--out", default=DEFAULT_OUT, help=f"folder for figures (default: ./{DEFAULT_OUT})"
    )
    tour.add_argument("--full", action="store_true", help="paper-scale runs instead of quick")
    tour.add_argument("--list", action="store_true", help="list the examples and exit")
    tour.add_argument("--traceback", action="store_true", help="print tracebacks of failures")
    tour.set_defaults(handler=_cmd_tour)

    bench = sub.add_parser(
        "bench",
        help="run benchmarks and rewrite their sections of RESULTS.md",
        description="Run benchmarks/bench_<NAME>.py (all, or the NAMEs given) and rewrite "
        "their sections of benchmarks/RESULTS.md, keeping the other sections.",
    )
    bench.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    bench.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    bench.add_argument(
        "--dir",
        help="benchmarks folder (default: ./benchmarks, else the one next to the package)",
    )
    bench.add_argument("--results", help="results file (default: DIR/RESULTS.md)")
    bench.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    bench.add_argument("--traceback", action="store_true", help="print tracebacks of failures")
    bench.set_defaults(handler=_cmd_bench)

    info = sub.add_parser(
        "info",
        help="print versions, devices and the kernel backend",
        description="Print package versions, the devices JAX sees and the hash-grid kernel "
        "backend that backend='auto' picks.",
    )
    info.set_defaults(handler=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    Example:
        >>> main(["info"])  # doctest: +SKIP
        jaxsecond  0.1.0
        ...
        0
    """
    parser = _parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a one-line argparse error
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if ns.command is None:
        print(
            f"{PROG}: error: missing command, choose from tour, bench, info (see {PROG} --help)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        with _INTERRUPTS:
            status = ns.handler(ns)
            _INTERRUPTS.check()  # an interrupt deferred since the last check
            return status
    except _UsageError as exc:
        print(f"{PROG} {ns.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            print(f"{PROG} {ns.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
