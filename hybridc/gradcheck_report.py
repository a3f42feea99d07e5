"""The result of a gradient check (`hybridc.gradcheck.gradcheck`): one row per parameter tensor comparing EP,
implicit differentiation (ID, the true gradient) and BPTT (and, where the blocks allow, autograd of the
original model), its documented JSON shape, and its figure (`hybridc gradcheck --plot`).

Kept apart from the computation so that the report can be read, rendered (`hybridc.render.gradcheck_table`)
and plotted without importing torch or the compiler.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ParamCheck(BaseModel):
    """One parameter tensor: EP and BPTT against the ID (true) gradient, and the ID gradient's norm.

    `structural_zero`: the true gradient is zero by structure (norm ≤ `GradcheckReport.zero_rtol` of the
    largest tensor's: a bias a following LayerNorm removes, a key bias, a zero-initialised residual branch);
    its cosines and relative errors compare rounding noise and mean nothing, so summaries leave it out.
    `block`: every block using the tensor, joined by '+' (a tied embedding/lm_head is used by two);
    `analog`: some analog block uses it. `cos_id_bptt`/`relerr_id_bptt` are None when the BPTT reference was
    skipped (`bptt_steps=0`)."""

    name: str
    block: str
    analog: bool
    numel: int
    cos_ep_id: float
    relerr_ep_id: float
    cos_id_bptt: float | None
    relerr_id_bptt: float | None
    cos_ep_autograd: float | None = None
    relerr_ep_autograd: float | None = None
    id_norm: float = 0.0
    ep_norm: float = 0.0
    structural_zero: bool = False


class GradcheckReport(BaseModel):
    """A whole check: one `ParamCheck` per distinct parameter tensor, the settings it ran with (β, dtype, init,
    the output leaf the loss is on, BPTT's unrolled steps), the free phase's and the adjoint's residuals per
    analog block (`tol`: the solvers' tolerance), and the seconds each phase took.

    `forward_max_abs_diff`: max |compiled - original| of the loss's output, when every analog block is a
    single layer (the compiled model then computes the original one); None otherwise."""

    forward_max_abs_diff: float | None
    params: list[ParamCheck]
    beta: float
    dtype: str
    init: str
    loss: float
    tol: float
    equilibrium_residuals: dict[str, float]
    adjoint_residuals: dict[str, float] = {}
    adjoint_steps: dict[str, int] = {}
    output: str = ""
    zero_rtol: float = 1e-12
    bptt_steps: int = 0
    seconds: dict[str, float] = {}

    def unconverged(self) -> list[str]:
        """Analog blocks whose free phase ended above 100x the tolerance (their gradients are suspect)."""
        return [k for k, v in self.equilibrium_residuals.items() if not v <= 100 * self.tol]

    def checked(self, analog_only: bool = True) -> list[ParamCheck]:
        """The tensors whose comparison means something: not structurally zero (and analog, by default)."""
        return [p for p in self.params if not p.structural_zero and (p.analog or not analog_only)]

    def min_cos_ep_id(self, analog_only: bool = True) -> float | None:
        """The worst cosine between EP and ID over the checked tensors (None when there are none)."""
        rows = self.checked(analog_only)
        return min(p.cos_ep_id for p in rows) if rows else None

    def max_relerr_ep_id(self, analog_only: bool = True) -> float | None:
        """The largest relative error of EP against ID over the checked tensors (None when there are none)."""
        rows = self.checked(analog_only)
        return max(p.relerr_ep_id for p in rows) if rows else None

    def public_json(self) -> dict[str, Any]:
        """The documented JSON shape (one object; `params` with the comparison fields, norms and flags)."""
        return {
            "forward_max_abs_diff": self.forward_max_abs_diff,
            "beta": self.beta,
            "dtype": self.dtype,
            "init": self.init,
            "output": self.output,
            "zero_rtol": self.zero_rtol,
            "bptt_steps": self.bptt_steps,
            "equilibrium_residuals": self.equilibrium_residuals,
            "adjoint_residuals": self.adjoint_residuals,
            "params": [p.model_dump() for p in self.params],
        }


def plot_report(report: GradcheckReport, path: str) -> None:
    """Per-tensor figure: relative errors (log axis) above 1 − cosine (log axis) for EP vs ID, ID vs BPTT and,
    with single-layer blocks, EP vs autograd. Cosines of agreeing gradients all read 1.0 on a linear axis,
    so both panels are logarithmic; structurally-zero tensors are shaded and carry no bars; legends sit above
    the axes, not on them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report.params
    x = list(range(len(rows)))
    floor = 1e-17  # below float64 resolution: an exact match is drawn at the floor, not dropped
    nan = float("nan")
    comparisons = (
        ("EP vs ID", "relerr_ep_id", "cos_ep_id", "tab:blue"),
        ("ID vs BPTT", "relerr_id_bptt", "cos_id_bptt", "tab:orange"),  # None when BPTT was skipped
        ("EP vs autograd", "relerr_ep_autograd", "cos_ep_autograd", "tab:green"),  # single-layer blocks only
    )
    series = [
        (
            label,
            [nan if getattr(r, rel) is None else getattr(r, rel) for r in rows],
            [nan if getattr(r, cos) is None else 1 - getattr(r, cos) for r in rows],
            colour,
        )
        for label, rel, cos, colour in comparisons
        if any(getattr(r, cos) is not None for r in rows)
    ]
    width = 0.8 / len(series)
    fig, axes = plt.subplots(2, 1, sharex=True, figsize=(max(7, 0.32 * len(rows) + 3), 7.5))
    for ax, which, label in ((axes[0], 1, "relative error ‖g − g_ref‖/‖g_ref‖"), (axes[1], 2, "1 − cosine")):
        for k, item in enumerate(series):
            vals = [float("nan") if r.structural_zero else max(floor, v) for r, v in zip(rows, item[which])]
            ax.bar(
                [i + (k - (len(series) - 1) / 2) * width for i in x],
                vals,
                width,
                label=item[0],
                color=item[3],
            )
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.grid(axis="y", which="major", alpha=0.3)
        for i, r in enumerate(rows):
            if r.structural_zero:
                ax.axvspan(i - 0.45, i + 0.45, color="0.85", zorder=0)
            if not r.analog:
                ax.axvspan(i - 0.5, i + 0.5, color="0.96", zorder=-1)
    zero = [i for i, r in enumerate(rows) if r.structural_zero]
    for i in zero:
        axes[0].text(
            i,
            0.5,
            "zero grad",
            rotation=90,
            ha="center",
            va="center",
            fontsize=7,
            color="0.35",
            transform=axes[0].get_xaxis_transform(),
        )
    axes[0].legend(loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=len(series), fontsize=8, frameon=False)
    axes[1].set_xticks(x)
    axes[1].set_xticklabels(
        [r.name + ("" if r.analog else " (digital)") for r in rows], rotation=75, ha="right", fontsize=7
    )
    on = "" if not report.output or report.output.startswith("(") else f", loss on output '{report.output}'"
    note = f"\n{len(zero)} tensors with a structurally zero true gradient (shaded, no bars)" if zero else ""
    fig.suptitle(
        f"gradient check: {report.dtype}, beta={report.beta:g}, init={report.init}{on}{note}\n"
        f"(values below {floor:g} drawn at {floor:g}; light background: digital tensor)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["GradcheckReport", "ParamCheck", "plot_report"]
