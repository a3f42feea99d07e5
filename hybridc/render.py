"""Human-facing renderings: plan tables, the block graph in Graphviz dot, gradient-check tables."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from hybridc.plan import Plan

if TYPE_CHECKING:
    from hybridc.gradcheck_report import GradcheckReport


def _shape(shape: list[int] | None) -> str:
    return "×".join(str(d) for d in shape[1:]) if shape else "?"


def _io(refs: list) -> str:
    return ", ".join(_shape(r.shape) for r in refs) or "-"


def plan_table(plan: Plan) -> Table:
    cfg = plan.config
    title = (
        f"{plan.model.model_class}: {len(plan.analog_blocks)} analog / "
        f"{len(plan.blocks) - len(plan.analog_blocks)} digital blocks  "
        f"(max_block_size={cfg.max_block_size}, norm={cfg.norm}, layer_norm={cfg.layer_norm}, "
        f"pool={cfg.pool}, attention={cfg.attention}, activation={cfg.activation}, trace={plan.model.trace})"
    )
    t = Table(title=title, title_justify="left", show_lines=False)
    for col in ("block", "kind", "weight layers", "params", "in → out (per sample)", "notes"):
        t.add_column(col, overflow="fold")
    for b in plan.blocks:
        notes = []
        if b.kind == "analog":
            acts = sorted({str(n.activation) for n in b.neurons})
            notes.append(f"{len(b.neurons)} neuron layers ({', '.join(acts)})")
            if b.eb_kind and b.eb_kind != "dhn":
                notes.append(b.eb_kind)
        else:
            ops = [n for n in b.nodes]
            notes.append(", ".join(ops[:4]) + (f", … ({len(ops)} nodes)" if len(ops) > 4 else ""))
        if b.identity_nodes:
            notes.append(f"{len(b.identity_nodes)} removed")
        style = "bold yellow" if b.kind == "analog" else "cyan"
        t.add_row(
            f"[{style}]{b.name}[/]",
            b.kind,
            "\n".join(b.weight_layers) or "-",
            f"{b.params:,}",
            f"{_io(b.inputs)} → {_io(b.outputs)}",
            "; ".join(notes),
        )
    return t


def decisions_table(plan: Plan) -> Table:
    t = Table(title="decisions", title_justify="left")
    for col in ("node", "block", "action", "reason"):
        t.add_column(col, overflow="fold")
    for d in plan.decisions:
        t.add_row(d.node, d.block or "-", d.action, d.reason)
    return t


def plan_dot(plan: Plan) -> str:
    """The block graph: analog blocks orange, digital blocks blue, edges labelled with tensor shapes."""
    lines = [
        "digraph hybrid {",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica"];',
    ]
    producer: dict[str, str] = {}
    for r in plan.graph_inputs:
        producer[r.node] = f"in_{r.node}"
        lines.append(
            f'  "in_{r.node}" [label="input {r.node}\\n{_shape(r.shape)}", shape=ellipse, fillcolor="#eeeeee"];'
        )
    for b in plan.blocks:
        for o in b.outputs:
            producer[o.node] = b.name
        color = "#f6b26b" if b.kind == "analog" else "#9fc5e8"
        label = f"{b.name} ({b.kind})"
        if b.weight_layers:
            label += "\\n" + "\\n".join(b.weight_layers)
        lines.append(f'  "{b.name}" [label="{label}", fillcolor="{color}"];')
    for b in plan.blocks:
        for r in b.inputs:
            src = producer.get(r.node)
            if src:
                lines.append(f'  "{src}" -> "{b.name}" [label="{_shape(r.shape)}", fontsize=9];')
    lines.append('  "output" [shape=ellipse, fillcolor="#eeeeee"];')
    for name in plan.graph_outputs:
        if name in producer:
            lines.append(f'  "{producer[name]}" -> "output";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def gradcheck_table(report: GradcheckReport) -> Table:
    """One row per tensor; a structurally-zero true gradient shows its norm and "zero" for the comparisons
    (its cosines compare rounding noise)."""
    t = Table(
        title=f"gradient check: {report.dtype}, beta={report.beta:g}, init={report.init}, "
        f"loss={report.loss:.4g} on output {report.output or '?'}",
        title_justify="left",
    )
    for col in (
        "parameter",
        "block",
        "|grad ID|",
        "cos EP·ID",
        "relerr EP·ID",
        "cos ID·BPTT",
        "relerr ID·BPTT",
        "cos EP·autograd",
    ):
        t.add_column(col, justify="right" if col != "parameter" else "left")
    for p in report.params:
        ag = "-" if p.cos_ep_autograd is None else f"{p.cos_ep_autograd:.6f}"
        style = "" if p.analog else "dim"
        if p.structural_zero:
            t.add_row(
                p.name,
                p.block,
                f"{p.id_norm:.1e}",
                "zero",
                "zero",
                "zero",
                "zero",
                "-" if ag == "-" else "zero",
                style="dim italic",
            )
            continue
        t.add_row(
            p.name,
            p.block,
            f"{p.id_norm:.2e}",
            f"{p.cos_ep_id:.6f}",
            f"{p.relerr_ep_id:.2e}",
            "-" if p.cos_id_bptt is None else f"{p.cos_id_bptt:.6f}",
            "-" if p.relerr_id_bptt is None else f"{p.relerr_id_bptt:.2e}",
            ag,
            style=style,
        )
    if any(p.structural_zero for p in report.params):
        t.caption = (
            f"zero: true gradient structurally zero (norm <= {report.zero_rtol:g} of the largest); "
            "left out of the summary"
        )
    return t
