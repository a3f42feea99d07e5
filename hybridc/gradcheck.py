"""Static gradient analysis (the paper's gradient check): EP vs implicit differentiation vs BPTT for every
parameter tensor of a compiled ff-EBM and, when every analog block is a single layer, the compiled model
against autograd of the original model.

This module computes the check; its result, `GradcheckReport` (re-exported here, as `gradcheck` returns
it), and the report's figure live in `hybridc.gradcheck_report`."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch import nn

from hybridc.api import _as_tuple, compile
from hybridc.errors import HybridcError
from hybridc.gradcheck_report import GradcheckReport, ParamCheck
from hybridc.output_leaf import Path, leaf_at, path_text, select_path
from hybridc.runtime.ffebm import FFEBM


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two gradients (1.0 when both are zero, 0.0 when only one is)."""
    a, b = a.flatten(), b.flatten()
    na, nb = a.norm(), b.norm()
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float((a @ b) / (na * nb))


def _relerr(a: torch.Tensor, ref: torch.Tensor) -> float:
    """‖a − ref‖ / ‖ref‖ (‖a‖ when `ref` is zero)."""
    nr = ref.norm()
    if nr == 0:
        return float(a.norm())
    return float((a - ref).norm() / nr)


def _loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for logits against class indices, else half the squared error summed per sample."""
    if out.dim() == 2 and target.dtype == torch.long:
        return F.cross_entropy(out, target)
    return 0.5 * (out - target).pow(2).reshape(out.shape[0], -1).sum(1).mean()


def _targets(out: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random targets for `out`: class indices for a 2-d output, else N(0, 1) values of its shape."""
    if out.dim() == 2:
        return torch.randint(0, out.shape[1], (out.shape[0],), generator=generator)
    return torch.randn(out.shape, generator=generator, dtype=out.dtype)  # CPU generator; moved by the caller


class _Call:
    """How the models are called (positional tensors or keyword arguments) and which output leaf the loss
    is taken on (its path in the original model's output)."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any], path: Path, reference: Any):
        self.args, self.kwargs, self.path, self.reference = args, kwargs, path, reference

    def output(self, model: nn.Module) -> torch.Tensor:
        return leaf_at(model(*self.args, **self.kwargs), self.path, self.reference)


def _grads(model: nn.Module, call: _Call, target: torch.Tensor) -> tuple[dict[str, torch.Tensor], float]:
    """Every parameter's gradient of the loss (zeros where it gets none), by name, and the loss."""
    model.zero_grad(set_to_none=True)
    loss = _loss(call.output(model), target)
    loss.backward()
    return {
        n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
        for n, p in model.named_parameters()
    }, float(loss.detach())


def _random_batch(example: Any, batch: int, dtype: torch.dtype, gen: torch.Generator) -> Any:
    """The example's structure with `batch` samples: floating tensors redrawn from N(0, 1) in `dtype`,
    integer ones (token ids, masks) kept, their rows repeated or cut to `batch`."""
    leaves, spec = pytree.tree_flatten(example)
    out = []
    for t in leaves:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            out.append(torch.randn((batch, *t.shape[1:]), generator=gen, dtype=dtype))
        elif isinstance(t, torch.Tensor) and t.dim() > 0:
            out.append(t[torch.arange(batch) % t.shape[0]])
        else:
            out.append(t)
    return pytree.tree_unflatten(out, spec)


def _to(example: Any, dtype: torch.dtype | None = None, device: torch.device | None = None) -> Any:
    """The example's tensors moved to `device`, the floating ones converted to `dtype`."""

    def conv(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        return t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else None)

    return pytree.tree_map(conv, example)


def _call_parts(example: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The example as call arguments: a dict as keyword arguments, anything else as positional ones."""
    if isinstance(example, dict):
        return (), dict(example)
    return _as_tuple(example), {}


@contextmanager
def _free_phase_reuse(compiled: FFEBM) -> Iterator[None]:
    """Start every free phase after the first from that phase's equilibrium when the block's inputs are the
    same (EP, ID and BPTT each run the forward again on the same batch). The relaxation still runs and stops
    on the tolerance, so each gradient is still taken at a verified fixed point; it only skips re-converging
    from zero, which is most of a gradient check's time."""
    cache: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for name, blk in compiled.analog_blocks.items():

        def reuse(inputs: Any, _blk: Any = blk, _name: str = name) -> list[torch.Tensor]:
            hit = cache.get(_name)
            if (
                hit is not None
                and len(hit[0]) == len(inputs)
                and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(hit[0], inputs))
            ):
                return _blk.relax(inputs, [s.clone() for s in hit[1]], _blk.solver.t1, "free")
            states = type(_blk).free_phase(_blk, inputs)
            cache[_name] = ([x.detach().clone() for x in inputs], [s.detach().clone() for s in states])
            return states

        blk.free_phase = reuse
    try:
        yield
    finally:
        for blk in compiled.analog_blocks.values():
            del blk.free_phase


class _Phases:
    """Timings and progress reports of the check's phases."""

    def __init__(self, progress: Any | None):
        self.progress, self.seconds = progress, {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[dict[str, str]]:
        info = {"detail": ""}
        if self.progress is not None:
            self.progress.start(name)
        t0 = time.perf_counter()
        yield info
        self.seconds[name] = time.perf_counter() - t0
        if self.progress is not None:
            self.progress.done(name, info["detail"])


def _residual_text(values: dict[str, float]) -> str:
    """Per-block residuals for a progress line: 'analog1 3.2e-14, analog3 8.0e-15'."""
    return ", ".join(f"{k} {v:.1e}" for k, v in values.items())


def gradcheck(
    model: nn.Module,
    example_inputs: Any,
    max_block_size: int = 2,
    beta: float | None = None,
    dtype: torch.dtype = torch.float64,
    batch: int = 2,
    seed: int = 0,
    bptt_steps: int | None = None,
    solver: dict | None = None,
    init: str = "keep",
    device: str | torch.device = "cpu",
    output: str | int | None = None,
    progress: Any | None = None,
    batch_data: tuple[Any, torch.Tensor] | None = None,
    **policies: Any,
) -> GradcheckReport:
    """Compare EP, ID and BPTT gradients of `model` compiled at `max_block_size` on a random batch.

    The loss is taken on one tensor of the model's output: `output` names it by its path (`"logits"`, `0`,
    `"hidden_states.2"`), default the first tensor leaf (a transformers ModelOutput's `logits`).
    `init="keep"` (default) checks the model's own weights; "goe" the paper's init. Note that with GOE's
    small variance most hard-sigmoid pre-activations sit next to the kink at 0, where any finite β
    biases EP; expect to need a smaller β there. `progress`: a `hybridc.gradcheck_progress.PhaseProgress`.
    `batch_data`: (inputs, targets) of a real batch to check on (class indices for a 2-d output, else values
    of the output's shape) instead of the random batch and targets; `batch` is then ignored.
    `bptt_steps` None: unroll 1.5× the longest free phase from zero (which reached the tolerance, so the
    truncation error ρ^T of BPTT is below the tolerance too: (tol/|s*|)^1.5), at least 20; 0: skip the BPTT
    reference (its memory grows with the steps unrolled: a float64 check whose free phase needs hundreds of
    steps to reach 1e-13 can need tens of GB), leaving its columns None."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HybridcError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    phase = _Phases(progress)
    own = next((t.dtype for t in model.parameters() if t.is_floating_point()), dtype)
    model = copy.deepcopy(model).eval()
    # compile in the model's own precision, then convert: the same weights (float32 values are exact in float64),
    # and compile-time work on them (the feedback-gain calibration's power iterations) runs at float32 speed
    build_dtype = own if torch.finfo(own).bits < torch.finfo(dtype).bits else dtype
    build_model = copy.deepcopy(model).to(build_dtype)
    model = model.to(dtype)
    example = _to(example_inputs, dtype)
    inputs = (
        _to(batch_data[0], dtype) if batch_data is not None else _random_batch(example, batch, dtype, gen)
    )
    if beta is None:
        beta = 1e-6 if dtype == torch.float64 else 1e-2
    tight = {"tol": 1e-13 if dtype == torch.float64 else 1e-6, "max_steps": 5000, "check_every": 10}
    with torch.no_grad():  # a wrong `output` fails here, before the compile
        path = select_path(model(*_call_parts(inputs)[0], **_call_parts(inputs)[1]), output)
    with phase("compile") as info:
        compiled: FFEBM = compile(
            build_model,
            _to(example_inputs, build_dtype),
            max_block_size=max_block_size,
            beta=beta,
            solver={**tight, **(solver or {})},
            init=init,
            **policies,
        )
        compiled = compiled.to(device=device, dtype=dtype).eval()
        info["detail"] = f"{len(compiled.analog_blocks)} analog blocks"
    model = model.to(device)
    args, kwargs = _call_parts(_to(inputs, device=device))
    with torch.no_grad():
        reference = model(*args, **kwargs)
    call = _Call(args, kwargs, path, reference)

    with _free_phase_reuse(compiled):
        with phase("free phase") as info, torch.no_grad():
            out = call.output(compiled)  # the free phase whose residuals are reported
            target = (batch_data[1] if batch_data is not None else _targets(out, gen)).to(device)
            residuals = {
                k: float(v.last_residual)
                for k, v in compiled.analog_blocks.items()
                if v.last_residual is not None
            }
            free_steps = max((int(v.last_steps) for v in compiled.analog_blocks.values()), default=0)
            if bptt_steps is None:
                bptt_steps = max(20, math.ceil(1.5 * free_steps))
            info["detail"] = "residual " + _residual_text(residuals)
        with phase("EP"):
            ep, loss = _grads(compiled, call, target)
        with phase("ID") as info:
            compiled.set_gradient("id")
            idg, _ = _grads(compiled, call, target)
            adj_res = {
                k: float(b.last_adjoint_residual)
                for k, b in compiled.analog_blocks.items()
                if getattr(b, "last_adjoint_residual", None) is not None
            }
            adj_steps = {
                k: int(b.last_adjoint_steps)
                for k, b in compiled.analog_blocks.items()
                if getattr(b, "last_adjoint_steps", None) is not None
            }
            info["detail"] = "adjoint residual " + _residual_text(adj_res)
        bp: dict[str, torch.Tensor] | None = None
        if bptt_steps:
            with phase("BPTT") as info:
                info["detail"] = f"{bptt_steps} steps unrolled"
                compiled.set_gradient("bptt", bptt_steps=bptt_steps)
                bp, _ = _grads(compiled, call, target)
                compiled.set_gradient("ep")

    single = all(len(b.weight_layers) == 1 for b in compiled.plan.analog_blocks)
    fwd_diff = None
    ref: dict[str, torch.Tensor] = {}
    if single:
        with phase("autograd") as info, torch.no_grad():
            fwd_diff = float((call.output(compiled) - leaf_at(reference, path)).abs().max())
            info["detail"] = f"forward max |compiled - original| {fwd_diff:.1e}"
        with torch.enable_grad():
            ref, _ = _grads(model, call, target)

    rows = _rows(
        compiled,
        model,
        ep,
        idg,
        bp,
        ref if single else None,
        zero_rtol=1e-12 if dtype == torch.float64 else 1e-6,
    )
    return GradcheckReport(
        forward_max_abs_diff=fwd_diff,
        params=rows,
        beta=beta,
        init=init,
        equilibrium_residuals=residuals,
        tol=compiled_tol(compiled),
        dtype=str(dtype).replace("torch.", ""),
        loss=loss,
        adjoint_residuals=adj_res,
        adjoint_steps=adj_steps,
        output=path_text(path),
        zero_rtol=1e-12 if dtype == torch.float64 else 1e-6,
        seconds=phase.seconds,
        bptt_steps=bptt_steps,
    )


def _rows(
    compiled: FFEBM,
    model: nn.Module,
    ep: dict[str, torch.Tensor],
    idg: dict[str, torch.Tensor],
    bp: dict[str, torch.Tensor],
    ref: dict[str, torch.Tensor] | None,
    zero_rtol: float,
) -> list[ParamCheck]:
    """One row per distinct parameter tensor (a tied one once, with every block that uses it)."""
    owners: dict[int, list[str]] = {}
    for bname, blk in compiled.blocks.items():
        for _, p in blk.named_parameters(remove_duplicate=False):
            if bname not in owners.setdefault(id(p), []):
                owners[id(p)].append(bname)
    traced = original_parameter_names(compiled, model)
    analog = set(compiled.analog_blocks)
    id_norms = {n: float(g.norm()) for n, g in idg.items()}
    largest = max(id_norms.values(), default=0.0)
    rows = []
    for n, p in compiled.named_parameters():
        orig = traced.get(n, n)
        blocks = owners.get(id(p), ["?"])
        rows.append(
            ParamCheck(
                name=orig,
                block="+".join(blocks),
                analog=any(b in analog for b in blocks),
                numel=p.numel(),
                cos_ep_id=_cos(ep[n], idg[n]),
                relerr_ep_id=_relerr(ep[n], idg[n]),
                cos_id_bptt=None if bp is None else _cos(idg[n], bp[n]),
                relerr_id_bptt=None if bp is None else _relerr(bp[n], idg[n]),
                cos_ep_autograd=_cos(ep[n], ref[orig]) if ref is not None and orig in ref else None,
                relerr_ep_autograd=_relerr(ep[n], ref[orig]) if ref is not None and orig in ref else None,
                id_norm=id_norms[n],
                ep_norm=float(ep[n].norm()),
                structural_zero=id_norms[n] <= zero_rtol * largest,
            )
        )
    return rows


def compiled_tol(compiled: FFEBM) -> float:
    """The tightest solver tolerance of the compiled model's analog blocks (0.0 without analog blocks)."""
    return (
        min((b.solver.tol or 0.0) for b in compiled.analog_blocks.values()) if compiled.analog_blocks else 0.0
    )


def original_parameter_names(compiled: FFEBM, model: nn.Module) -> dict[str, str]:
    """Compiled parameter name -> original model name, matched by the qualified path inside the block. Every
    alias of a tied original parameter maps to its first name (the one `named_parameters()` lists)."""
    canonical = {id(p): n for n, p in model.named_parameters()}
    original = {n: canonical[id(p)] for n, p in model.named_parameters(remove_duplicate=False)}
    under = {o.replace(".", "_"): c for o, c in original.items()}
    out = {}
    for n, _ in compiled.named_parameters():
        parts = n.split(".")
        # blocks.<block>[.synapses].<original path>
        rest = parts[3:] if len(parts) > 3 and parts[2] == "synapses" else parts[2:]
        cand = ".".join(rest)
        if cand in original:
            out[n] = original[cand]
        else:
            # export graphs name get_attr parameters with underscores; match by that spelling
            match = under.get(cand.replace(".", "_"))
            out[n] = match if match else f"{parts[1]}.{cand}"  # a block's own parameter (e.g. drn)
    return out


__all__ = ["GradcheckReport", "ParamCheck", "compiled_tol", "gradcheck", "original_parameter_names"]
