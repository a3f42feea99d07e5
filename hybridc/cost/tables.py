"""The report rendered as rich tables: per block with a total row, the energy breakdown next to an
all-digital reference, and the constants with their sources (`hybridc report`'s table format).
"""

from __future__ import annotations

from hybridc.cost.schema import CostReport


def si(n: float) -> str:
    """1234567 -> '1.23M' (k, M, G, T); small integers unchanged."""
    if abs(n) < 1000:
        return f"{n:.0f}" if float(n).is_integer() else f"{n:.3g}"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def joules(pj: float) -> str:
    """An energy in pJ with a readable unit (pJ, nJ, µJ, mJ, J)."""
    for unit, scale in (("J", 1e12), ("mJ", 1e9), ("µJ", 1e6), ("nJ", 1e3)):
        if abs(pj) >= scale:
            return f"{pj / scale:.3g} {unit}"
    return f"{pj:.3g} pJ"


def report_table(rep: CostReport):  # noqa: ANN201 - rich.table.Table (rich imported lazily)
    """The per-block table with a total row; the counting rules are its caption."""
    from rich.markup import escape
    from rich.table import Table

    s = rep.settings
    title = (
        f"{s.model}: hardware cost per sample (max_block_size={s.max_block_size}, eb_kind={s.eb_kind}, "
        f"tile={s.tile_rows}x{s.tile_cols}, T1={s.t1}, T2={s.t2}, digital={s.digital_precision}"
        f"{', +SRAM' if s.include_memory else ''})"
    )
    t = Table(
        title=title,
        title_justify="left",
        caption=escape("\n".join(rep.conventions)),
        caption_justify="left",
        show_footer=False,
    )
    cols = [
        ("block", "left"),
        ("kind", "left"),
        ("layers", "right"),
        ("tiles", "right"),
        ("analog MACs\ninf / train", "right"),
        ("digital FLOPs\ninf / train", "right"),
        ("DAC\ninf / train", "right"),
        ("ADC\ninf / train", "right"),
        ("energy\ninference", "right"),
        ("energy\ntrain step", "right"),
    ]
    for name, just in cols:
        t.add_column(name, justify=just)

    def pair(a: int, b: int) -> str:
        return f"{si(a)} / {si(b)}"

    for b in rep.blocks:
        kind = b.kind if b.kind == "digital" else f"analog ({b.eb_kind or 'dhn'})"
        style = "bold yellow" if b.kind == "analog" else "cyan"
        t.add_row(
            f"[{style}]{b.name}[/]",
            kind,
            str(len(b.weight_layers)) if b.kind == "analog" else "-",
            f"{b.tiles:,}" if b.kind == "analog" else "-",
            pair(b.inference.analog_macs, b.training.analog_macs),
            pair(b.inference.digital_flops, b.training.digital_flops),
            pair(b.inference.dac, b.training.dac),
            pair(b.inference.adc, b.training.adc),
            joules(b.inference.energy_pj.total),
            joules(b.training.energy_pj.total),
        )
    tot = rep.total
    t.add_section()
    t.add_row(
        "[bold]total[/]",
        "",
        str(sum(len(b.weight_layers) for b in rep.blocks if b.kind == "analog")),
        f"{tot.tiles:,}",
        pair(tot.inference.analog_macs, tot.training.analog_macs),
        pair(tot.inference.digital_flops, tot.training.digital_flops),
        pair(tot.inference.dac, tot.training.dac),
        pair(tot.inference.adc, tot.training.adc),
        f"[bold]{joules(tot.inference.energy_pj.total)}[/]",
        f"[bold]{joules(tot.training.energy_pj.total)}[/]",
    )
    return t


def breakdown_table(rep: CostReport):  # noqa: ANN201 - rich.table.Table
    """Where the total energy goes, next to an all-digital reference of the same model."""
    from rich.table import Table

    t = Table(title="energy breakdown (total, per sample)", title_justify="left")
    for col in ("", "analog MAC", "ADC", "DAC", "digital", "SRAM", "total", "all-digital reference"):
        t.add_column(col, justify="right" if col else "left")
    for label, ph in (("inference", rep.total.inference), ("EP training step", rep.total.training)):
        e = ph.energy_pj
        ref = rep.total.all_digital["inference" if label == "inference" else "training"]
        t.add_row(
            label,
            joules(e.analog_mac),
            joules(e.adc),
            joules(e.dac),
            joules(e.digital),
            joules(e.memory) if rep.settings.include_memory else "-",
            f"[bold]{joules(e.total)}[/]",
            f"{joules(ref.energy_pj.total)} ({si(ref.digital_flops)} FLOPs{', BP' if ph is rep.total.training else ''})",
        )
    return t


def constants_table(rep: CostReport):  # noqa: ANN201 - rich.table.Table
    """The constants in effect and their sources."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="constants (override with --constants FILE)", title_justify="left")
    for col in ("constant", "value", "unit", "source"):
        t.add_column(col, overflow="fold")
    for name, c in rep.constants.items():
        t.add_row(escape(name), f"{c.value:g}", escape(c.unit), escape(c.source))
    return t
