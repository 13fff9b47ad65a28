"""Optimizers: AdaHessian's step time against Adam and Sophia, and accuracy at equal epochs.

Three comparisons on the CNN of ``examples/adahessian_digits.py`` (conv 3x3 to 8 channels,
conv 3x3 stride 2 to 16, linear to 10; 3,818 parameters) and scikit-learn's digits, float32:

a. time per training step (loss, gradient, optimizer update, parameter update), jitted,
   on the same network and batch in the same run: ``jaxsecond.adahessian`` over
   ``optax.adam`` (goals: <= 2.5x with a Hessian estimate every step, <= 1.3x with one
   every 10 steps), AdaHessian both with ``update(..., obj_fn=...)`` (the transform draws
   the probes and recomputes a gradient inside its Hessian-vector product) and with the
   one-pass helper ``jaxsecond.value_grad_and_hessian_diagonal`` passed as
   ``hessian_diagonal=``; and over ``optax.contrib.sophia`` (Sophia-H, also a Hutchinson
   diagonal from ``obj_fn``) with its Hessian interval set to 1 (goal: ours faster);
b. test accuracy at equal epochs (same initial networks, same mini-batches) of
   AdaHessian, Adam, AdamW and SGD with momentum, mean and range over seeds, with the
   example's code and learning rates;
c. torch-optimizer's ``Adahessian`` on the same problem, when PyTorch and torch-optimizer
   are installed (the ``bench`` extra); otherwise the section says it was skipped.

Run: ``python benchmarks/bench_optim.py [--quick]``.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxsecond
from jaxsecond import _harness

PACKAGES = ("optax", "equinox", "torch", "torch-optimizer")  # versions recorded
TITLE = "Optimizers: AdaHessian step time and accuracy on digits"

STEPS_PER_CALL = 10  # optimizer steps per timed call (one full lazy-Hessian cycle)
LAZY_INTERVAL = 10  # Hessian every this many steps in the lazy rows
EVERY_STEP_GOAL = 2.5  # AdaHessian (Hessian every step) time / Adam time
LAZY_GOAL = 1.3  # AdaHessian (Hessian every 10 steps) time / Adam time
SOPHIA_GOAL = 1.0  # AdaHessian time / Sophia time (both estimating every step)
ACCURACY_OPTIMIZERS = ("adahessian", "adam", "adamw", "sgd")
EXAMPLE = "adahessian_digits"


def load_example():
    """The digits example module (shipped with the package as ``jaxsecond.examples``)."""
    return importlib.import_module(f"jaxsecond.examples.{EXAMPLE}")


# --------------------------------------------------------------------------- a: step time


def training_step(
    loss: Callable,
    optimizer,
    *,
    hessian: str | None = None,
    interval: int = 1,
    dispatch: str = "python",
):
    """``step(params, opt_state, batch, key, i) -> (params, opt_state, loss)``: training step
    number ``i`` (a Python int) of ``optimizer`` on ``loss(params, batch)``, jitted.

    ``hessian`` says how the optimizer gets its curvature: ``None`` (first-order),
    ``"obj_fn"`` (``update(..., obj_fn=...)``, also Sophia's way) or ``"one_pass"``
    (:func:`jaxsecond.value_grad_and_hessian_diagonal`, passed as ``hessian_diagonal=``).
    With ``"one_pass"`` and ``interval > 1`` the pass runs only on the steps that refresh
    the estimate; the other steps take a plain gradient and pass zeros, which the optimizer
    ignores between refreshes. ``dispatch`` says where that choice is made: ``"python"``
    (two jitted programs, picked by ``i % interval`` on the host) or ``"cond"`` (one program
    with a ``lax.cond`` on ``i``).
    """
    if hessian not in (None, "obj_fn", "one_pass"):
        raise ValueError(f"training_step: unknown hessian mode {hessian!r}")
    if dispatch not in ("python", "cond"):
        raise ValueError(f"training_step: dispatch must be 'python' or 'cond', got {dispatch!r}")

    def make(mode):  # mode: None, "obj_fn", "one_pass", "skip" or "cond"
        @jax.jit
        def step(params, opt_state, batch, key, i):
            fun = lambda p: loss(p, batch)

            def with_hessian(p):
                return jaxsecond.value_grad_and_hessian_diagonal(fun)(p, key)

            def without_hessian(p):
                value, grads = jax.value_and_grad(fun)(p)
                return value, grads, jax.tree.map(jnp.zeros_like, grads)

            if mode in ("one_pass", "skip", "cond"):
                if mode == "cond":
                    value, grads, diag = jax.lax.cond(
                        i % interval == 0, with_hessian, without_hessian, params
                    )
                else:
                    value, grads, diag = (with_hessian if mode == "one_pass" else without_hessian)(
                        params
                    )
                updates, opt_state = optimizer.update(
                    grads, opt_state, params, hessian_diagonal=diag
                )
            else:
                value, grads = jax.value_and_grad(fun)(params)
                extra = {} if mode is None else {"obj_fn": fun}
                updates, opt_state = optimizer.update(grads, opt_state, params, **extra)
            return optax.apply_updates(params, updates), opt_state, value

        return step

    if hessian != "one_pass" or interval == 1:
        jitted = make(hessian)
        return lambda params, opt_state, batch, key, i: jitted(params, opt_state, batch, key, i)
    if dispatch == "cond":
        jitted = make("cond")
        return lambda params, opt_state, batch, key, i: jitted(params, opt_state, batch, key, i)
    refresh, skip = make("one_pass"), make("skip")

    def step(params, opt_state, batch, key, i):
        return (refresh if i % interval == 0 else skip)(params, opt_state, batch, key, i)

    return step


def run_steps(step: Callable, params, opt_state, batch, key, num_steps: int = STEPS_PER_CALL):
    """``num_steps`` consecutive steps from ``(params, opt_state)``; returns the final
    ``(params, opt_state, losses)`` once computed."""
    losses = []
    for i in range(num_steps):
        params, opt_state, value = step(params, opt_state, batch, jax.random.fold_in(key, i), i)
        losses.append(value)
    return jax.block_until_ready((params, opt_state, jnp.stack(losses)))


def step_contenders(loss: Callable, params):
    """``name -> (jitted step function, its initial opt_state)`` for table a."""
    lr = load_example().LEARNING_RATES
    specs = {
        "adam": (optax.adam(lr["adam"]), None, 1),
        "adahessian one-pass, every step": (jaxsecond.adahessian(), "one_pass", 1),
        "adahessian obj_fn, every step": (jaxsecond.adahessian(), "obj_fn", 1),
        f"adahessian one-pass, every {LAZY_INTERVAL}": (
            jaxsecond.adahessian(update_interval=LAZY_INTERVAL),
            "one_pass",
            LAZY_INTERVAL,
        ),
        f"adahessian one-pass, every {LAZY_INTERVAL}, lax.cond": (
            jaxsecond.adahessian(update_interval=LAZY_INTERVAL),
            "one_pass_cond",
            LAZY_INTERVAL,
        ),
        f"adahessian obj_fn, every {LAZY_INTERVAL}": (
            jaxsecond.adahessian(update_interval=LAZY_INTERVAL),
            "obj_fn",
            LAZY_INTERVAL,
        ),
        # Sophia's default learning rate is not at issue here (timing only).
        "sophia, every step": (optax.contrib.sophia(1e-3, update_interval=1), "sophia", 1),
        f"sophia, every {LAZY_INTERVAL} (its default)": (
            optax.contrib.sophia(1e-3, update_interval=LAZY_INTERVAL),
            "sophia",
            LAZY_INTERVAL,
        ),
    }
    out = {}
    for name, (opt, mode, interval) in specs.items():
        hessian = {"sophia": "obj_fn", "one_pass_cond": "one_pass"}.get(mode, mode)
        dispatch = "cond" if mode == "one_pass_cond" else "python"
        fn = training_step(loss, opt, hessian=hessian, interval=interval, dispatch=dispatch)
        out[name] = (fn, opt.init(params))
    return out


def cnn_step_problem(batch_size: int, seed: int = 0):
    """``(loss, params, batch)``: the example's CNN at seed ``seed`` on the first
    ``batch_size`` training images."""
    ex = load_example()
    X_tr, y_tr, _, _ = ex.load_data()
    params, static = eqx.partition(ex.CNN(jax.random.key(seed)), eqx.is_inexact_array)

    def loss(p, batch):
        return ex.loss_fn(eqx.combine(p, static), *batch)

    return loss, params, (X_tr[:batch_size], y_tr[:batch_size])


def time_steps(step: Callable, args: tuple, *, repeats: int) -> tuple[float, float]:
    """``(first call seconds, median seconds of repeats)`` of :func:`run_steps` from the same
    starting point ``args = (params, opt_state, batch, key)``."""
    start = time.perf_counter()
    run_steps(step, *args)
    first = time.perf_counter() - start
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_steps(step, *args)
        samples.append(time.perf_counter() - start)
    return first, float(np.median(samples))


def interleaved_timings(contenders: dict, params, batch, key, *, rounds: int, repeats: int):
    """``name -> (compile seconds, per-round median seconds per STEPS_PER_CALL steps)``.
    ``contenders`` maps names to ``(step function, opt_state)``; they take turns in every
    round, so that a change in machine load hits all of them."""
    compile_s: dict[str, float] = {}
    samples: dict[str, list] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, (fn, opt_state) in contenders.items():
            # The untimed first call of every round (compilation in the first) is the warmup.
            first, median = time_steps(fn, (params, opt_state, batch, key), repeats=repeats)
            compile_s.setdefault(name, first)
            samples[name].append(median)
    return {name: (compile_s[name], np.array(samples[name])) for name in contenders}


def ratio(num, den) -> float:
    """Median over rounds of the per-round ratio (the two were timed back to back)."""
    return float(np.median(np.asarray(num) / np.asarray(den)))


def ratio_cell(num, den) -> str:
    r = np.asarray(num) / np.asarray(den)
    return f"{ratio(num, den):.2f} ({np.min(r):.2f}-{np.max(r):.2f})"


def _verdict(label: str, value: float, best: float, goal: float) -> str | None:
    if value <= goal:
        return None
    noise = ", within round-to-round noise" if best <= goal else ""
    return f"{label} ({value:.2f}; per-round minimum {best:.2f}{noise})"


def _step_section(batch_sizes, rounds: int, repeats: int) -> str:
    rows, lost_every, lost_lazy, lost_sophia, control, cond_penalty = [], [], [], [], [], []
    every = ("adahessian one-pass, every step", "adahessian obj_fn, every step")
    lazy = (
        f"adahessian one-pass, every {LAZY_INTERVAL}",
        f"adahessian one-pass, every {LAZY_INTERVAL}, lax.cond",
        f"adahessian obj_fn, every {LAZY_INTERVAL}",
    )
    sophia = "sophia, every step"
    for batch_size in batch_sizes:
        loss, params, batch = cnn_step_problem(batch_size)
        contenders = step_contenders(loss, params)
        t = interleaved_timings(
            contenders, params, batch, jax.random.key(0), rounds=rounds, repeats=repeats
        )
        r = {name: v[1] for name, v in t.items()}
        adam = r["adam"]
        # Control-flow cost: the same work inside lax.cond vs dispatched from the host, and
        # Sophia (which keeps its lax.cond at interval 1) vs our obj_fn step (same arithmetic).
        host, cond = lazy[0], lazy[1]
        cond_penalty.append(ratio(r[cond], r[host]))
        control.append(
            f"batch {batch_size}: one-pass every {LAZY_INTERVAL} under `lax.cond` / on the host "
            f"{ratio(r[cond], r[host]):.2f}, Sophia every step / AdaHessian obj_fn every step "
            f"{ratio(r[sophia], r[every[1]]):.2f}, AdaHessian obj_fn every {LAZY_INTERVAL} / "
            f"every step {ratio(r[lazy[2]], r[every[1]]):.2f}"
        )
        for name, (compile_s, times) in t.items():
            per_step = np.median(times) / STEPS_PER_CALL
            versus_sophia = ratio_cell(times, r[sophia]) if name in every + lazy else ""
            rows.append(
                [
                    batch_size,
                    name,
                    _harness.fmt_seconds(per_step),
                    ratio_cell(times, adam) if name != "adam" else "1",
                    versus_sophia,
                    _harness.fmt_seconds(compile_s),
                ]
            )
        for name in every:
            miss = _verdict(
                f"{name}, batch {batch_size}",
                ratio(r[name], adam),
                float(np.min(r[name] / adam)),
                EVERY_STEP_GOAL,
            )
            if miss:
                lost_every.append(miss)
            miss = _verdict(
                f"{name}, batch {batch_size}",
                ratio(r[name], r[sophia]),
                float(np.min(r[name] / r[sophia])),
                SOPHIA_GOAL,
            )
            if miss:
                lost_sophia.append(miss)
        for name in lazy:
            miss = _verdict(
                f"{name}, batch {batch_size}",
                ratio(r[name], adam),
                float(np.min(r[name] / adam)),
                LAZY_GOAL,
            )
            if miss:
                lost_lazy.append(miss)
    table = _harness.markdown_table(
        [
            "batch",
            "optimizer",
            "time per step",
            "/ Adam (range over rounds)",
            "/ Sophia every step (range)",
            "compile",
        ],
        rows,
    )

    if min(cond_penalty) > 1.5:
        control_text = (
            "Control flow matters more than the optimizers' arithmetic here. Measured ratios: "
            + "; ".join(control)
            + ". On this backend XLA runs the convolutions of a step several times slower "
            "inside a `lax.cond` branch than at the top level of a program. So estimating "
            "every step costs Sophia more than AdaHessian because Sophia keeps its "
            "`lax.cond` even at interval 1, and `update(..., obj_fn=...)` with "
            "`update_interval > 1` (AdaHessian's own `lax.cond`) saves little over "
            "estimating every step; the lazy interval pays off when the estimate is skipped "
            "outside the jitted step (the one-pass row without `lax.cond`)."
        )
    else:
        control_text = (
            "`lax.cond` costs little on this backend. Measured ratios: " + "; ".join(control) + "."
        )

    def verdict(goal_text: str, lost: list[str]) -> str:
        if not lost:
            return f"Goal {goal_text}: met."
        return f"Goal {goal_text} NOT met for: " + "; ".join(lost) + "."

    return "\n".join(
        [
            "### a. Time per training step",
            "",
            "One step is loss, gradient, optimizer update and parameter update, jitted as one "
            f"program. Each timed sample is {STEPS_PER_CALL} consecutive steps on one batch, "
            "called from Python, from the same starting state every sample, so a sample of "
            f"the lazy variants holds exactly one Hessian estimate in {LAZY_INTERVAL} steps; "
            f"'time per step' is the sample's median over rounds / {STEPS_PER_CALL}. (Steps "
            "are not fused into one `lax.scan`: on the CPU, XLA ran these convolutions about "
            "5x slower inside a rolled loop, which hides the optimizers' differences.) "
            f"Medians over {rounds} rounds in which all contenders take turns ({repeats} "
            "timed samples each); ratios: median (range) of the per-round ratios. "
            "'compile' is the first sample (compilation plus the steps). 'one-pass': loss, "
            "gradient and Hutchinson diagonal from one forward-over-reverse pass "
            "(`jaxsecond.value_grad_and_hessian_diagonal`), passed as `hessian_diagonal=`; with "
            "the lazy interval the pass runs only on refresh steps (a plain gradient "
            "otherwise), chosen on the host between two jitted programs, or, in the "
            "'lax.cond' row, inside one program. 'obj_fn': a gradient, then "
            "`update(..., obj_fn=loss)`, whose Hessian-vector product recomputes the gradient "
            "(this is also how `optax.contrib.sophia` gets its estimate). One Rademacher "
            "probe per estimate everywhere.",
            "",
            table,
            "",
            verdict(f"AdaHessian every step / Adam <= {EVERY_STEP_GOAL:g}", lost_every),
            "",
            verdict(f"AdaHessian every {LAZY_INTERVAL} steps / Adam <= {LAZY_GOAL:g}", lost_lazy),
            "",
            verdict("AdaHessian every step faster than Sophia every step", lost_sophia),
            "",
            control_text,
        ]
    )


# --------------------------------------------------------------------------- b: accuracy


def _accuracy_section(seeds, num_epochs: int, names=ACCURACY_OPTIMIZERS) -> str:
    ex = load_example()
    data = ex.load_data()
    histories = ex.train_all(names, seeds, data, num_epochs=num_epochs, progress=False)
    stats = ex.summarize(histories)
    rows = []
    for name in names:
        s = stats[name]
        # The first seed's time includes compilation; the others reuse the compiled epoch.
        later = [h.seconds for h in histories[name][1:]] or [histories[name][0].seconds]
        hp = (
            f"lr {ex.LEARNING_RATES[name]:g}"
            + (f", momentum {ex.MOMENTUM:g}" if name == "sgd" else "")
            + (f", weight decay {ex.WEIGHT_DECAY:g}" if name == "adamw" else "")
        )
        rows.append(
            [
                ex.LABELS[name],
                hp,
                f"{100 * s['accuracy_mean']:.1f}% ({100 * s['accuracy_min']:.1f}-"
                f"{100 * s['accuracy_max']:.1f})",
                f"{s['loss_mean']:.4f} ({s['loss_min']:.4f}-{s['loss_max']:.4f})",
                _harness.fmt_seconds(float(np.median(later))),
            ]
        )
    table = _harness.markdown_table(
        [
            "optimizer",
            "settings",
            "test accuracy, mean (min-max)",
            "final training loss, mean (min-max)",
            "time per run",
        ],
        rows,
    )
    ours = stats["adahessian"]
    others = {n: s for n, s in stats.items() if n != "adahessian"}
    best_name = max(others, key=lambda n: others[n]["accuracy_mean"])
    best = others[best_name]
    gap = 100 * (ours["accuracy_mean"] - best["accuracy_mean"])
    overlap = (
        ours["accuracy_min"] <= best["accuracy_max"]
        and best["accuracy_min"] <= (ours["accuracy_max"])
    )
    position = "above" if gap > 0 else "below"
    verdict = (
        f"AdaHessian's mean test accuracy is {abs(gap):.1f} points {position} the best "
        f"first-order optimizer's ({ex.LABELS[best_name]}); their ranges over seeds "
        + ("overlap, so the difference is within seed-to-seed variation." if overlap else "")
        + ("do not overlap." if not overlap else "")
    )
    steps = num_epochs * (data[0].shape[0] // ex.BATCH_SIZE)
    return "\n".join(
        [
            "### b. Accuracy at equal epochs",
            "",
            f"{len(seeds)} seeds x {num_epochs} epochs ({steps} steps of batches of "
            f"{ex.BATCH_SIZE}); per seed every optimizer starts from the same network and sees "
            "the same batches. Test set: 360 images (one image = 0.28 points). AdaHessian "
            "runs at the paper's defaults, untuned (one-pass helper); Adam's and SGD's "
            "learning rates are the best of a grid on a validation split of the training set "
            "(see the example's docstring); AdamW uses Adam's. 'time per run' is the "
            "median over the seeds after the first (compiled once), evaluation included; "
            "the example runs each epoch as one `lax.scan`, so on the CPU these times carry "
            "the loop penalty described under table a (table a is the fair step-cost "
            "comparison).",
            "",
            table,
            "",
            verdict,
        ]
    )


# --------------------------------------------------------------------------- c: torch


def torch_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "torch_optimizer"))


def _torch_section(seeds, num_epochs: int) -> str:
    heading = "### c. torch-optimizer's Adahessian on the same problem"
    if not torch_available():
        return "\n".join(
            [
                heading,
                "",
                "Skipped: PyTorch and torch-optimizer are not both installed here (they come "
                'with the `bench` extra: `pip install -e ".[bench]"`).',
            ]
        )
    import torch
    import torch_optimizer

    ex = load_example()
    X_tr, y_tr, X_te, y_te = (np.asarray(a) for a in ex.load_data())
    torch.set_num_threads(max(1, torch.get_num_threads()))
    accs, seconds = [], []
    for seed in seeds:
        torch.manual_seed(seed)
        net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Flatten(),
            torch.nn.Linear(256, 10),
        )
        opt = torch_optimizer.Adahessian(
            net.parameters(), lr=0.15, betas=(0.9, 0.999), eps=1e-4, hessian_power=1.0
        )
        Xt, yt = torch.from_numpy(X_tr), torch.from_numpy(y_tr).long()
        start = time.perf_counter()
        for epoch in range(num_epochs):
            batches = np.asarray(ex.batch_indices(ex.epoch_keys(seed, epoch)[0], len(X_tr)))
            for idx in batches:
                idx = torch.from_numpy(idx).long()
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(net(Xt[idx]), yt[idx])
                loss.backward(create_graph=True)
                opt.step()
        seconds.append(time.perf_counter() - start)
        with torch.no_grad():
            pred = net(torch.from_numpy(X_te)).argmax(-1).numpy()
        accs.append(float(np.mean(pred == y_te)))
    accs = np.asarray(accs)
    steps = num_epochs * (len(X_tr) // ex.BATCH_SIZE)
    table = _harness.markdown_table(
        ["optimizer", "test accuracy, mean (min-max)", "time per step (eager)"],
        [
            [
                "torch-optimizer Adahessian (lr 0.15)",
                f"{100 * accs.mean():.1f}% ({100 * accs.min():.1f}-{100 * accs.max():.1f})",
                _harness.fmt_seconds(float(np.median(seconds)) / steps),
            ]
        ],
    )
    return "\n".join(
        [
            heading,
            "",
            f"Same network shape (PyTorch's default initialisation, seeded per run), data and "
            f"batch order, {len(seeds)} seeds x {num_epochs} epochs; eager PyTorch on the "
            "CPU, so its step time is not comparable with the jitted times of table a "
            "beyond order of magnitude.",
            "",
            table,
        ]
    )


# --------------------------------------------------------------------------- benchmark


def run(quick: bool) -> str:
    ex = load_example()
    rounds, repeats = (5, 5) if quick else (10, 20)
    batch_sizes = (ex.BATCH_SIZE, 256)
    seeds = ex.SEEDS if quick else tuple(range(5))
    num_epochs = ex.QUICK_EPOCHS if quick else ex.FULL_EPOCHS
    return "\n".join(
        [
            f"optax {optax.__version__}; float32, jitted; "
            f"{load_example().num_parameters(ex.CNN(jax.random.key(0))):,}-parameter CNN "
            "on digits (8x8x1).",
            "",
            _step_section(batch_sizes, rounds, repeats),
            "",
            _accuracy_section(seeds, num_epochs),
            "",
            _torch_section(seeds, num_epochs),
        ]
    )


if __name__ == "__main__":
    _harness.run_main(TITLE, run, packages=PACKAGES)
