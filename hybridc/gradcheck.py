"""Static gradient analysis (the paper's gradient check): EP vs implicit differentiation vs BPTT for every
parameter tensor of a compiled ff-EBM and, when every analog block is a single layer, the compiled model
against autograd of the original model."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import nn

from hybridc.api import _as_tuple, compile
from hybridc.errors import HybridcError
from hybridc.runtime.ffebm import FFEBM


class ParamCheck(BaseModel):
    name: str
    block: str
    analog: bool
    numel: int
    cos_ep_id: float
    relerr_ep_id: float
    cos_id_bptt: float
    relerr_id_bptt: float
    cos_ep_autograd: float | None = None


class GradcheckReport(BaseModel):
    forward_max_abs_diff: float | None
    params: list[ParamCheck]
    beta: float
    dtype: str
    init: str
    loss: float
    tol: float
    equilibrium_residuals: dict[str, float]

    def unconverged(self) -> list[str]:
        """Analog blocks whose free phase ended above 100x the tolerance (their gradients are suspect)."""
        return [k for k, v in self.equilibrium_residuals.items() if not v <= 100 * self.tol]

    def public_json(self) -> dict[str, Any]:
        """The documented JSON shape (one object; `params` with the four comparison fields)."""
        return {
            "forward_max_abs_diff": self.forward_max_abs_diff,
            "beta": self.beta,
            "dtype": self.dtype,
            "init": self.init,
            "equilibrium_residuals": self.equilibrium_residuals,
            "params": [p.model_dump() for p in self.params],
        }


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten(), b.flatten()
    na, nb = a.norm(), b.norm()
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float((a @ b) / (na * nb))


def _relerr(a: torch.Tensor, ref: torch.Tensor) -> float:
    nr = ref.norm()
    if nr == 0:
        return float(a.norm())
    return float((a - ref).norm() / nr)


def _loss(out: Any, target: torch.Tensor) -> torch.Tensor:
    out = out[0] if isinstance(out, (tuple, list)) else out
    if out.dim() == 2 and target.dtype == torch.long:
        return F.cross_entropy(out, target)
    return 0.5 * (out - target).pow(2).sum(1).mean()


def _targets(out: Any, generator: torch.Generator) -> torch.Tensor:
    out = out[0] if isinstance(out, (tuple, list)) else out
    if out.dim() == 2:
        return torch.randint(0, out.shape[1], (out.shape[0],), generator=generator)
    return torch.randn(out.shape, generator=generator, dtype=out.dtype)  # CPU generator; moved by the caller


def _grads(model: nn.Module, inputs: tuple[torch.Tensor, ...], target: torch.Tensor) -> tuple[dict, float]:
    model.zero_grad(set_to_none=True)
    loss = _loss(model(*inputs), target)
    loss.backward()
    return {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in model.named_parameters()}, float(loss.detach())


def gradcheck(model: nn.Module, example_inputs: Any, max_block_size: int = 2, beta: float | None = None,
              dtype: torch.dtype = torch.float64, batch: int = 4, seed: int = 0, bptt_steps: int = 200,
              solver: dict | None = None, init: str = "keep", device: str | torch.device = "cpu",
              **policies: Any) -> GradcheckReport:
    """Compare EP, ID and BPTT gradients of `model` compiled at `max_block_size` on a random batch.

    `init="keep"` (default) checks the model's own weights; "goe" the paper's init. Note that with GOE's
    small variance most hard-sigmoid pre-activations sit next to the kink at 0, where any finite β
    biases EP; expect to need a smaller β there."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HybridcError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(model).to(dtype).eval()
    ex = _as_tuple(example_inputs)
    inputs = tuple(torch.randn((batch, *t.shape[1:]), generator=gen, dtype=dtype) if t.is_floating_point()
                   else t for t in ex)
    if beta is None:
        beta = 1e-6 if dtype == torch.float64 else 1e-2
    tight = {"tol": 1e-13 if dtype == torch.float64 else 1e-6, "max_steps": 5000, "check_every": 10}
    compiled: FFEBM = compile(model, tuple(t.to(dtype) if t.is_floating_point() else t for t in ex),
                              max_block_size=max_block_size, beta=beta,
                              solver={**tight, **(solver or {})}, init=init, **policies)
    compiled = compiled.to(device=device, dtype=dtype).eval()
    model = model.to(device)
    inputs = tuple(t.to(device) for t in inputs)
    target = _targets(compiled(*inputs), gen).to(device)

    ep, loss = _grads(compiled, inputs, target)
    compiled.set_gradient("id")
    idg, _ = _grads(compiled, inputs, target)
    compiled.set_gradient("bptt", bptt_steps=bptt_steps)
    bp, _ = _grads(compiled, inputs, target)
    compiled.set_gradient("ep")

    residuals = {k: float(v.last_residual) for k, v in compiled.analog_blocks.items()
                 if v.last_residual is not None}
    single = all(len(b.weight_layers) == 1 for b in compiled.plan.analog_blocks)
    fwd_diff = None
    ref: dict[str, torch.Tensor] = {}
    if single:
        with torch.no_grad():
            a, b = compiled(*inputs), model(*inputs)
            a = a[0] if isinstance(a, (tuple, list)) else a
            b = b[0] if isinstance(b, (tuple, list)) else b
            fwd_diff = float((a - b).abs().max())
        ref, _ = _grads(model, inputs, target)

    traced_names = _original_names(compiled, model)
    owner = {}
    for bname, blk in compiled.blocks.items():
        for n, _ in blk.named_parameters(prefix=f"blocks.{bname}"):
            owner[n] = bname
    analog = set(compiled.analog_blocks)
    rows = []
    for n, p in compiled.named_parameters():
        orig = traced_names.get(n, n)
        rows.append(ParamCheck(
            name=orig, block=owner.get(n, "?"), analog=owner.get(n) in analog, numel=p.numel(),
            cos_ep_id=_cos(ep[n], idg[n]), relerr_ep_id=_relerr(ep[n], idg[n]),
            cos_id_bptt=_cos(idg[n], bp[n]), relerr_id_bptt=_relerr(bp[n], idg[n]),
            cos_ep_autograd=_cos(ep[n], ref[orig]) if single and orig in ref else None))
    return GradcheckReport(forward_max_abs_diff=fwd_diff, params=rows, beta=beta, init=init,
                           equilibrium_residuals=residuals, tol=compiled_tol(compiled),
                           dtype=str(dtype).replace("torch.", ""), loss=loss)


def compiled_tol(compiled: FFEBM) -> float:
    return min((b.solver.tol or 0.0) for b in compiled.analog_blocks.values()) if compiled.analog_blocks else 0.0


def _original_names(compiled: FFEBM, model: nn.Module) -> dict[str, str]:
    """Compiled parameter name -> original model name, matched by the qualified path inside the block."""
    original = dict(model.named_parameters())
    out = {}
    for n, _ in compiled.named_parameters():
        parts = n.split(".")
        # blocks.<block>[.synapses].<original path>
        rest = parts[3:] if len(parts) > 3 and parts[2] == "synapses" else parts[2:]
        cand = ".".join(rest)
        if cand in original:
            out[n] = cand
        else:
            # export graphs name get_attr parameters with underscores; match by suffix
            match = [o for o in original if o.replace(".", "_") == cand.replace(".", "_")]
            out[n] = match[0] if match else f"{parts[1]}.{cand}"  # a block's own parameter (e.g. drn)
    return out


def plot_report(report: GradcheckReport, path: str) -> None:
    """Per-layer bar chart of the gradient cosines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report.params
    names = [r.name for r in rows]
    x = range(len(rows))
    width = 0.27
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows) + 2), 4.5))
    ax.bar([i - width for i in x], [r.cos_ep_id for r in rows], width, label="EP vs ID")
    ax.bar(list(x), [r.cos_id_bptt for r in rows], width, label="ID vs BPTT")
    if any(r.cos_ep_autograd is not None for r in rows):
        ax.bar([i + width for i in x], [r.cos_ep_autograd or 0.0 for r in rows], width, label="EP vs autograd")
    low = min([r.cos_ep_id for r in rows] + [r.cos_id_bptt for r in rows] + [1.0])
    ax.set_ylim(max(-1.0, min(0.9, low - 0.02)), 1.005)
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=75, ha="right", fontsize=7)
    ax.set_ylabel("cosine similarity")
    ax.set_title(f"gradient check ({report.dtype}, beta={report.beta:g})")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
