"""Cost of one training step: EP (sync and even/odd async), ID and BPTT through the compiled ff-EBM vs plain
backprop (BP) of the original model, with the measured EP/BP ratio beside the ideal (T1 + 2·T2)·2/3 of
DESIGN.md's performance model, and the memory of a step (EP flat in T, BPTT linear in its unrolled steps).

Models: the ff-EBM paper's 6-layer VGG (`vgg-paper`, split as the paper's `splitting_small_2block`: max block
size 3 → blocks of 3 + 3 layers, digital readout, the entry BatchNorm in the first block's input synapse,
hard sigmoid clamp(u, 0, 1), the reference code's conv GOE init) and an MLP 784-1024-1024-10 (max block size
2). A given T1 runs exactly T1 free steps (the paper's fixed-iteration version), T2 each nudged phase.

Rows: ID and BPTT relax synchronously (BPTT unrolls T2 steps, ID solves its adjoint to 1e-6 in ≤ 50 steps);
every row trains with Adam, with hybridc's feedback guard on (the compile default: its rescaling runs after each
optimizer step and is part of our step's time, measured in its steady state past the cold start of its
first 10 steps: see `past_guard_cold_start`; `--no-guard` compiles without it). Per model, batch and T1/T2, BP and the selected algorithms are
timed interleaved (one step of each in turn), so a drift in the machine's load hits all alike.

Columns: s/step is the median over `--steps` timed steps after `--warmup`; "× BP" that over BP's of the same
model and batch, timed in the same interleave; memory is measured on one extra, untimed step: "saved MB" = the distinct tensor storages
autograd saved for backward during the step (parameters excluded); "peak MB" = on CUDA
`max_memory_allocated` during the step minus what was allocated before it; on CPU the peak of glibc malloc's
bytes in use (`mallinfo2`, sampled every 0.2 ms on a thread: the live tensors, not what the allocator caches)
during the step minus its value before it (the resident-set growth where `mallinfo2` is missing; the JSON's
`peak_kind` says which).

`--reference DIR` times instead the reference implementation's EP step (a checkout of
rain-neuromorphics/hybrid_bp_ep_official; see benchmarks/reference_ffebm.py — its code is not part of hybridc)
interleaved with ours in this one process (reference, ours sync, ours async, reference, ...), its
`splitting_small_2block` VGG on its even/odd schedule against our vgg-paper at the same T1/T2, β, batch and
channel widths (the work of both is printed, layer by layer; `--vgg-width` other than 1 makes ours narrower
than the reference's config), and prints the ratio reference/ours for our EP sync and async.

    python benchmarks/step_cost.py                                  # the full table (slow on CPU)
    python benchmarks/step_cost.py --batch 16 --schedule 20/5 --algorithms ep-sync,ep-async,bp
    python benchmarks/step_cost.py --batch 16 --schedule 20/5 --profile --algorithms ep-async
    python benchmarks/step_cost.py --reference /tmp/ref --batch 16,64 --schedule 20/5
    python benchmarks/step_cost.py --device cuda --batch 128 --json
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from hybridc.api import compile
from hybridc.energy.feedback_guard import DHNConstraint
from hybridc.load import load_model
from hybridc.progress import StepProgress

#: `with measuring(row):` a line on stderr when a measured row starts and when it ends (and a "still running"
#: line during a long one), so a run of minutes shows where it is; stdout keeps only the table / JSON.
measuring = StepProgress("step_cost", None, rich=False, numbered=False).step

ALGORITHMS = ("ep-sync", "ep-async", "id", "bptt", "bp")
MODELS = ("vgg", "mlp")
#: the reference config's GOE variance for conv weights (`splitting_small_2block.yaml`: V = 0.00008351)
PAPER_GOE_V = 8.351e-5
PAPER_BETA = 0.2
#: the keys of every JSON row (tests/test_step_cost_smoke.py checks them)
ROW_KEYS = (
    "model",
    "blocks",
    "batch",
    "t1",
    "t2",
    "algorithm",
    "s_per_step",
    "ratio_bp",
    "ideal_ratio",
    "saved_mb",
    "peak_mb",
    "peak_kind",
)


class ModelSpec(NamedTuple):
    """One benchmarked network: its zoo model, how it is compiled, and its label. (A NamedTuple, not a
    dataclass: tests load this script by path, without a sys.modules entry, which dataclasses need.)"""

    key: str
    label: str
    zoo: str
    zoo_kwargs: dict[str, Any]
    compile_kwargs: dict[str, Any]


def model_specs(width: float, quick: bool) -> dict[str, ModelSpec]:
    """The two benchmarked models at VGG channel multiplier `width` (tiny ones with `quick`)."""
    sizes = (784, 64, 64, 10) if quick else (784, 1024, 1024, 10)
    return {
        "vgg": ModelSpec(
            "vgg",
            f"vgg-paper (width {width:g})",
            "vgg-paper",
            {"width": width},
            {
                "max_block_size": 3,
                "readout": "digital",
                "norm": "synapse",
                "hardsigmoid_slope": 1.0,
                "init": "goe-conv",
                "goe_variance": PAPER_GOE_V,
            },
        ),
        "mlp": ModelSpec(
            "mlp",
            "mlp " + "-".join(map(str, sizes)),
            "mlp",
            {"sizes": sizes},
            {"max_block_size": 2, "init": "goe"},
        ),
    }


# ---- measuring one step ------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def saved_storage_counter(box: list[int], exclude: set[int]) -> Iterator[None]:
    """Add to box[0] the bytes of every distinct tensor storage autograd saves for backward inside the
    context (a storage saved by several ops counts once; storages whose data pointer is in `exclude`, the
    parameters, not at all)."""
    seen: set[int] = set(exclude)

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            st = t.untyped_storage()
            ptr, nbytes = st.data_ptr(), st.nbytes()
        except (RuntimeError, NotImplementedError):  # e.g. a tensor subclass without storage
            ptr, nbytes = id(t), t.numel() * t.element_size()
        if ptr not in seen:
            seen.add(ptr)
            box[0] += nbytes
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _malloc_in_use_reader() -> Callable[[], int] | None:
    """A function returning the bytes glibc malloc has handed out and not had back (heap in use + mmapped
    chunks, `mallinfo2`): the live CPU tensors, whatever the allocator keeps cached. None without glibc ≥ 2.33."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2

    def read() -> int:
        m = fn()
        return int(m.uordblks + m.hblkhd)

    return read


def _rss_bytes() -> int:
    """Resident set size of this process (Linux /proc), 0 where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class CPUPeak:
    """Samples the CPU memory in use every `interval` seconds on a thread during a `with`: glibc malloc's bytes
    in use where `mallinfo2` exists (kind "cpu_malloc_peak"), else the resident set size ("cpu_rss_growth",
    which misses memory the allocator reuses from earlier steps). `.growth` = the largest sample minus the
    value on entry."""

    def __init__(self, interval: float = 2e-4) -> None:
        reader = _malloc_in_use_reader()
        self.read: Callable[[], int] = reader or _rss_bytes
        self.kind = "cpu_malloc_peak" if reader else "cpu_rss_growth"
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.read())
            time.sleep(self.interval)

    def __enter__(self) -> CPUPeak:
        self.start = self.peak = self.read()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())

    @property
    def growth(self) -> int:
        return max(0, self.peak - self.start)


def measure_memory(
    step: Callable[[], object], device: torch.device, params: Sequence[torch.Tensor]
) -> tuple[float, float, str]:
    """(saved-for-backward MB, peak MB, what the peak is) of one call of `step` (see the module docstring)."""
    exclude = {p.untyped_storage().data_ptr() for p in params}
    box = [0]
    gc.collect()
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with saved_storage_counter(box, exclude):
            step()
        _sync(device)
        peak, kind = (torch.cuda.max_memory_allocated(device) - base) / 2**20, "cuda_max_allocated"
    else:
        with CPUPeak() as mem, saved_storage_counter(box, exclude):
            step()
        peak, kind = mem.growth / 2**20, mem.kind
    return box[0] / 2**20, peak, kind


def time_one(step: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of `step` takes (the device synchronised before and after)."""
    _sync(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - t0


def time_interleaved(
    steps: dict[str, Callable[[], object]], n: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Warm every step function up, then run them in turn (a, b, c, a, b, c, ...) `n` times each: the
    machine's load drifts over all of them alike. Returns each one's seconds per call."""
    for fn in steps.values():
        for _ in range(warmup):
            time_one(fn, device)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(n):
        for k, fn in steps.items():
            times[k].append(time_one(fn, device))
    return times


def train_step(
    model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> Callable[[], None]:
    """One training step of `model` on (x, y): forward, cross-entropy, backward, optimizer step."""

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return step


# ---- our models ----------------------------------------------------------------------------------------------
def compile_spec(
    spec: ModelSpec, device: torch.device, t1: int, t2: int, guard: bool = True
) -> tuple[Any, torch.nn.Module]:
    """(the loaded model, its compiled ff-EBM on `device`); `guard` False compiles without the feedback guard
    (`constrain=False`: no rescaling after optimizer steps, the reference's work)."""
    lm = load_model(spec.zoo, **spec.zoo_kwargs)
    ff = compile(
        lm.model,
        lm.example_inputs,
        gradient="ep",
        beta=PAPER_BETA,
        solver={"t1": t1, "t2": t2},
        constrain=guard,
        **spec.compile_kwargs,
    )
    ff = ff.to(device).train()
    if guard:
        past_guard_cold_start(ff)
    return lm, ff


def past_guard_cold_start(ff: Any) -> None:
    """Take each guarded block's per-step ρ measurement through its cold start, so that timed steps are the
    steady state a training run spends its steps in. The first `cold_first` (10) measurements of a run are cold
    (25 power iterations from fixed starts: ~300 ms a step on the paper's VGG at width 1, against ~56 ms warm),
    then every `cold_every`-th (100th: amortised ~2.5 ms a step). Timing within the first 10 steps would charge
    every step with a cost a run pays 10 times. Measuring changes no weight."""
    for block in ff.analog_blocks.values():
        constraint = getattr(block, "constraint", None)
        if isinstance(constraint, DHNConstraint) and constraint.warm_start:
            for _ in range(constraint.cold_first):
                constraint.measure()


def configure(ff: Any, algorithm: str, t1: int, t2: int) -> None:
    """Set `ff`'s gradient rule and solver for one row: EP sync/async; ID and BPTT relax synchronously."""
    mode = "async" if algorithm == "ep-async" else "sync"
    ff.set_solver(t1=t1, t2=t2, mode=mode)
    grad = algorithm.split("-")[0]
    if grad == "ep":
        ff.set_gradient("ep")
    elif grad == "id":
        ff.set_gradient("id", id_tol=1e-6, id_max_steps=50)
    else:
        ff.set_gradient("bptt", bptt_steps=t2)


def block_sizes(ff: Any) -> str:
    """'3+3': neuron layers of each analog block (from the plan)."""
    return "+".join(str(len(b.neurons)) for b in ff.plan.analog_blocks)


def random_batch(shape: Sequence[int], batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A random input batch of `batch` samples of per-sample `shape` and random labels of 10 classes."""
    return torch.randn(batch, *shape, device=device), torch.randint(0, 10, (batch,), device=device)


def profile_step(
    step: Callable[[], object], device: torch.device, top: int = 15
) -> tuple[str, list[dict[str, Any]]]:
    """torch.profiler over one call of `step` (after one warm-up call): the table of the `top` ops by self
    CPU time (self CUDA time on CUDA), and the same as rows."""
    from torch.profiler import ProfilerActivity, profile

    step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step()
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    avgs = prof.key_averages()
    table = avgs.table(sort_by=key, row_limit=top)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, attr, 0) for e in avgs) or 1
    ranked = sorted(avgs, key=lambda e: getattr(e, attr, 0), reverse=True)[:top]
    rows = [
        {
            "op": e.key,
            "calls": e.count,
            "self_ms": getattr(e, attr, 0) / 1e3,
            "self_pct": 100 * getattr(e, attr, 0) / total,
        }
        for e in ranked
    ]
    return table, rows


# ---- the table ------------------------------------------------------------------------------------------------
def run_table(args: argparse.Namespace, device: torch.device, out: dict[str, Any]) -> None:
    """Fill out["rows"] (and out["profile"]) with the step-cost table's rows. Per model, batch and T1/T2, BP and
    every selected algorithm of ours are timed interleaved (bp, ep-sync, ep-async, id, bptt, bp, ...), so a
    drift in the machine's load hits them alike; memory is measured afterwards, one untimed step each."""
    specs = model_specs(args.vgg_width, args.quick)
    rows: list[dict[str, Any]] = out["rows"]
    ours = [a for a in args.algorithms if a != "bp"]
    for key in args.models:
        spec = specs[key]
        lm = load_model(spec.zoo, **spec.zoo_kwargs)
        ff: Any = None
        if ours:
            with measuring(f"{spec.label}: compile"):
                _, ff = compile_spec(spec, device, *args.schedule[0], guard=not args.no_guard)
        for batch in args.batch:
            x, y = random_batch(lm.example_inputs[0].shape[1:], batch, device)
            base = lm.model.to(device).train()
            bp = train_step(base, torch.optim.Adam(base.parameters(), lr=1e-4), x, y)
            step = train_step(ff, torch.optim.Adam(ff.parameters(), lr=1e-4), x, y) if ff is not None else bp
            for n_sched, (t1, t2) in enumerate(args.schedule):
                fns: dict[str, Callable[[], object]] = {"bp": bp}
                fns.update({a: _configured(ff, step, a, t1, t2) for a in ours})
                label = f"{spec.label}: batch {batch}, T1 {t1}, T2 {t2}, {' / '.join(fns)} interleaved"
                with measuring(label):
                    times = time_interleaved(fns, args.steps, args.warmup, device)
                    mem = {
                        a: measure_memory(fn, device, list((base if a == "bp" else ff).parameters()))
                        for a, fn in fns.items()
                    }
                bp_s = statistics.median(times["bp"])
                if "bp" in args.algorithms and n_sched == 0:
                    rows.append(_row(spec.label, "-", batch, None, None, "bp", bp_s, bp_s, None, *mem["bp"]))
                for alg in ours:
                    ideal = (t1 + 2 * t2) * 2 / 3 if alg.startswith("ep") else None
                    s = statistics.median(times[alg])
                    rows.append(
                        _row(spec.label, block_sizes(ff), batch, t1, t2, alg, s, bp_s, ideal, *mem[alg])
                    )
                first = key == args.models[0] and batch == args.batch[0] and n_sched == 0
                for alg in [a for a in ours if a.startswith("ep")] if args.profile and first else []:
                    with measuring(f"{spec.label}: profile of one {alg} step"):
                        text, prof_rows = profile_step(fns[alg], device)
                    out["profile"].append(
                        {
                            "model": spec.label,
                            "batch": batch,
                            "t1": t1,
                            "t2": t2,
                            "algorithm": alg,
                            "top": prof_rows,
                        }
                    )
                    header = (
                        f"profile: {spec.label}, batch {batch}, T1 {t1}, T2 {t2}, {alg} (top 15 by self time)"
                    )
                    print(f"{header}\n{text}", file=sys.stderr if args.json else sys.stdout)


def _configured(ff: Any, step: Callable[[], None], alg: str, t1: int, t2: int) -> Callable[[], None]:
    """`step` with `ff` set up for `alg` at T1/T2 first (a settings update: microseconds beside a step)."""

    def run() -> None:
        configure(ff, alg, t1, t2)
        step()

    return run


def _row(
    model: str,
    blocks: str,
    batch: int,
    t1: int | None,
    t2: int | None,
    algorithm: str,
    s: float,
    bp_s: float,
    ideal: float | None,
    saved: float,
    peak: float,
    kind: str,
) -> dict[str, Any]:
    return dict(
        zip(
            ROW_KEYS,
            (model, blocks, batch, t1, t2, algorithm, s, s / bp_s, ideal, saved, peak, kind),
            strict=True,
        )
    )


def print_table(args: argparse.Namespace, device: torch.device, rows: list[dict[str, Any]]) -> None:
    """The rows as a rich table on stdout."""
    cuda = device.type == "cuda"
    peak_col = "CUDA peak MB" if cuda else "CPU peak MB"
    t = Table(
        title=f"training step cost on {device} ({torch.cuda.get_device_name(device) if cuda else 'CPU'}, "
        f"{torch.get_num_threads()} thread(s)), torch {torch.__version__}; median of {args.steps} steps"
    )
    cols = (
        "model",
        "blocks",
        "batch",
        "T1/T2",
        "algorithm",
        "s / step",
        "× BP",
        "ideal × BP",
        "saved MB",
        peak_col,
    )
    for col in cols:
        t.add_column(col, justify="left" if col in ("model", "algorithm") else "right")
    for r in rows:
        t.add_row(
            r["model"],
            r["blocks"],
            str(r["batch"]),
            "-" if r["t1"] is None else f"{r['t1']}/{r['t2']}",
            r["algorithm"],
            f"{r['s_per_step']:.4f}",
            f"{r['ratio_bp']:.1f}",
            "-" if r["ideal_ratio"] is None else f"{r['ideal_ratio']:.1f}",
            f"{r['saved_mb']:.3g}",
            f"{r['peak_mb']:.3g}",
        )
    Console(width=170).print(t)


# ---- the reference, interleaved --------------------------------------------------------------------------------
def run_reference(args: argparse.Namespace, device: torch.device, out: dict[str, Any]) -> None:
    """Time the reference EP step and ours (EP sync and async from --algorithms) interleaved; fill out["reference"]."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from reference_ffebm import ReferenceEP, model_work

    spec = model_specs(args.vgg_width, False)["vgg"]
    ours = [a for a in args.algorithms if a in ("ep-sync", "ep-async")] or ["ep-sync", "ep-async"]
    for t1, t2 in args.schedule:
        with measuring(f"reference and ours: build, T1 {t1}, T2 {t2}"):
            ref = ReferenceEP(args.reference, t1, t2, asynchronous=True, beta=PAPER_BETA, device=device)
            lm, ff = compile_spec(spec, device, t1, t2, guard=not args.no_guard)
        if args.vgg_width != 1.0:
            print(
                f"note: the reference runs its config's channels; ours runs width {args.vgg_width:g}",
                file=sys.stderr,
            )
        probe = torch.randn(2, 3, 32, 32, device=device)
        ref_work, our_work = ref.work(probe), model_work(lm.model.to(device), probe)
        ref_states, our_states = ref.state_shapes(), state_shapes(ff)
        work_note = _work_note(ref_work, our_work, ref_states, our_states) + (
            "\n  hybridc compiled without its feedback guard (--no-guard)"
            if args.no_guard
            else "\n  hybridc's feedback guard is on: its rescaling after each optimizer step is work the reference"
            " does not do (--no-guard drops it)"
        )
        if not out["work"]:
            out["work"] = {
                "reference": ref_work.describe(),
                "ours": our_work.describe(),
                "reference_mmac": ref_work.macs / 1e6,
                "ours_mmac": our_work.macs / 1e6,
                "reference_states": [[list(s) for s in b] for b in ref_states],
                "ours_states": [[list(s) for s in b] for b in our_states],
                "ours_blocks": block_sizes(ff),
                "note": work_note,
            }
            print(work_note, file=sys.stderr if args.json else sys.stdout)
        for batch in args.batch:
            x, y = random_batch((3, 32, 32), batch, device)
            opt = torch.optim.Adam(ff.parameters(), lr=5e-5, weight_decay=3e-4)
            fns = reference_steps(ref, ff, train_step(ff, opt, x, y), x, y, ours, t1, t2)
            with measuring(f"interleaved reference / {' / '.join(ours)}: batch {batch}, T1 {t1}, T2 {t2}"):
                times = time_interleaved(fns, args.steps, args.warmup, device)
                mem = {
                    "reference": measure_memory(fns["reference"], device, list(ref.model.parameters())),
                    **{a: measure_memory(fns[a], device, list(ff.parameters())) for a in ours},
                }
            med = {k: statistics.median(v) for k, v in times.items()}
            row: dict[str, Any] = {
                "batch": batch,
                "t1": t1,
                "t2": t2,
                "reference_schedule": "async (even/odd)",
                "reference_s": med["reference"],
                "reference_saved_mb": mem["reference"][0],
                "reference_peak_mb": mem["reference"][1],
                "peak_kind": mem["reference"][2],
                "times": times,
            }
            for a in ours:
                row[f"{a}_s"] = med[a]
                row[f"ratio_ref_over_{a}"] = med["reference"] / med[a]
                # the same ratio taken round by round (each round ran both back to back), then its median:
                # steadier than the ratio of medians when the machine's load drifts
                row[f"round_ratio_ref_over_{a}"] = statistics.median(
                    r / o for r, o in zip(times["reference"], times[a], strict=True)
                )
                row[f"{a}_saved_mb"], row[f"{a}_peak_mb"] = mem[a][0], mem[a][1]
            out["reference"].append(row)


def reference_steps(
    ref: Any,
    ff: Any,
    our_step: Callable[[], None],
    x: torch.Tensor,
    y: torch.Tensor,
    ours: Sequence[str],
    t1: int,
    t2: int,
) -> dict[str, Callable[[], object]]:
    """The step functions interleaved: the reference's EP step, and ours in each mode of `ours` (each sets
    its solver mode first: a pydantic update, microseconds beside a step of seconds)."""

    fns: dict[str, Callable[[], object]] = {"reference": lambda: ref.step(x, y)}
    fns.update({a: _configured(ff, our_step, a, t1, t2) for a in ours})
    return fns


def _get(row: dict[str, Any], key: str, fmt: str) -> str:
    return format(row[key], fmt) if key in row else "-"


def state_shapes(ff: Any) -> list[list[tuple[int, ...]]]:
    """Per analog block of `ff`, the per-sample shape of each neuron layer it relaxes (from the plan)."""
    return [[tuple(n.shape[1:]) if n.shape else () for n in b.neurons] for b in ff.plan.analog_blocks]


def _fmt_states(states: list[list[tuple[int, ...]]]) -> str:
    return " | ".join(", ".join("×".join(map(str, s)) for s in b) for b in states)


def _work_note(
    ref: Any, ours: Any, ref_states: list[list[tuple[int, ...]]], our_states: list[list[tuple[int, ...]]]
) -> str:
    """Both networks' weight layers and relaxed states side by side, their MACs per sample and where they
    differ."""
    lines = [
        "work per sample, one feedforward pass (reference splitting_small_2block vs hybridc vgg-paper):",
        f"  states relaxed, per block: reference {_fmt_states(ref_states)}; hybridc {_fmt_states(our_states)}",
        f"  reference: {ref.macs / 1e6:.2f} M MAC: " + "; ".join(ref.describe()),
        f"  hybridc:   {ours.macs / 1e6:.2f} M MAC: " + "; ".join(ours.describe()),
    ]
    diffs = [
        f"layer {i + 1}: reference {a[0]} {a[1]} vs hybridc {b[0]} {b[1]}"
        for i, (a, b) in enumerate(zip(ref.layers, ours.layers, strict=False))
        if a[:2] != b[:2]
    ]
    if len(ref.layers) != len(ours.layers):
        diffs.append(f"{len(ref.layers)} vs {len(ours.layers)} weight layers")
    lines.append(
        "  differences: "
        + ("; ".join(diffs) if diffs else "none")
        + f" (MACs ours/reference = {ours.macs / max(ref.macs, 1):.4f})"
    )
    return "\n".join(lines)


def print_reference(rows: list[dict[str, Any]]) -> None:
    """The interleaved rows as a rich table on stdout."""
    t = Table(
        title="EP step, reference vs hybridc, interleaved in one process "
        f"({torch.get_num_threads()} thread(s)); s/step = median; ref/ours = ratio of the medians "
        "(in parentheses: the median of the per-round ratios)"
    )
    for col in (
        "batch",
        "T1/T2",
        "reference s/step (async)",
        "ours async s/step",
        "ref/ours async (per round)",
        "ours sync s/step",
        "ref/ours sync (per round)",
        "peak MB ref | async | sync",
    ):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(
            str(r["batch"]),
            f"{r['t1']}/{r['t2']}",
            f"{r['reference_s']:.3f}",
            _get(r, "ep-async_s", ".3f"),
            f"{_get(r, 'ratio_ref_over_ep-async', '.2f')} ({_get(r, 'round_ratio_ref_over_ep-async', '.2f')})",
            _get(r, "ep-sync_s", ".3f"),
            f"{_get(r, 'ratio_ref_over_ep-sync', '.2f')} ({_get(r, 'round_ratio_ref_over_ep-sync', '.2f')})",
            " | ".join(
                _get(r, k, ".0f") for k in ("reference_peak_mb", "ep-async_peak_mb", "ep-sync_peak_mb")
            ),
        )
    Console(width=170).print(t)


# ---- command line ------------------------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _schedules(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        t1, _, t2 = part.strip().partition("/")
        if not (t1.isdigit() and t2.isdigit() and int(t1) > 0 and int(t2) > 0):
            raise argparse.ArgumentTypeError(f"expected T1/T2 pairs such as 20/5,60/20, got {part.strip()!r}")
        out.append((int(t1), int(t2)))
    return out


def _choices(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        vals = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in vals if v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(allowed)}")
        return vals

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=_ints, default=None, help="batch sizes, e.g. 16,64 (default 16,64,128)")
    ap.add_argument(
        "--schedule",
        type=_schedules,
        default=None,
        help="T1/T2 pairs, e.g. 20/5,60/20 (the default)",
    )
    ap.add_argument(
        "--algorithms",
        type=_choices(ALGORITHMS),
        default=list(ALGORITHMS),
        help=f"subset of {','.join(ALGORITHMS)}",
    )
    ap.add_argument("--models", type=_choices(MODELS), default=list(MODELS), help="subset of vgg,mlp")
    ap.add_argument("--vgg-width", type=float, default=1.0, help="VGG channel multiplier (1 = the paper's)")
    ap.add_argument(
        "--no-guard",
        action="store_true",
        help="compile without the feedback guard (constrain=False): no weight rescaling after each optimizer "
        "step, which the reference does not do either",
    )
    ap.add_argument("--steps", type=int, default=5, help="timed steps per row (median)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch.set_num_threads (default 1, for comparability)"
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="print the top 15 ops of one EP step (first model/batch/schedule)",
    )
    ap.add_argument(
        "--reference",
        metavar="DIR",
        default=None,
        help="time the reference implementation (a checkout of hybrid_bp_ep_official) interleaved with ours",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="tiny models (VGG width 1/32, MLP 784-64-64-10), 1 step; batch 4, T1/T2 3/2 unless given: a smoke run",
    )
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.vgg_width = 1, 1, 1 / 32
    quick_or_full = {"batch": ([4], [16, 64, 128]), "schedule": ([(3, 2)], [(20, 5), (60, 20)])}
    for name, (quick, full) in quick_or_full.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    out: dict[str, Any] = {
        "settings": {
            "device": str(device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "steps": args.steps,
            "warmup": args.warmup,
            "vgg_width": args.vgg_width,
            "feedback_guard": not args.no_guard,
            "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "rows": [],
        "profile": [],
        "reference": [],
        "work": {},
    }
    if args.reference:
        run_reference(args, device, out)
    else:
        run_table(args, device, out)
    if args.json:
        print(json.dumps(out, indent=2))
    elif args.reference:
        print_reference(out["reference"])
    else:
        print_table(args, device, out["rows"])


if __name__ == "__main__":
    from hybridc.cli import run_script

    run_script(main)
