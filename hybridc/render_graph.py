"""The block graph of a plan drawn as a picture (PNG or SVG) with matplotlib and a networkx layered layout:
no Graphviz needed (`hybridc partition -f dot` still writes the Graphviz source for those who have it).

Analog blocks orange, digital blue (the dot output's colours), inputs and the output grey; each box names
the block, its kind, its weight layers (count) and parameters; edges carry the tensor's per-sample shape.
Blocks are placed in layers by topological generation (inputs at the top), so a chain reads top to bottom
and parallel branches sit side by side.
"""

from __future__ import annotations

from pathlib import Path

import networkx as nx

from hybridc.plan import Plan

ANALOG = "#f6b26b"
DIGITAL = "#9fc5e8"
TERMINAL = "#eeeeee"


def _shape(shape: list[int] | None) -> str:
    return "×".join(str(d) for d in shape[1:]) if shape else "?"


def plan_graph(plan: Plan) -> nx.DiGraph:
    """The block graph: one node per graph input, block and the output (attributes `label`, `color`),
    edges from the producer of each block input (attribute `label`: the per-sample shape)."""
    g = nx.DiGraph()
    producer: dict[str, str] = {}
    shapes: dict[str, list[int] | None] = {}
    for r in plan.graph_inputs:
        node = f"in:{r.node}"
        producer[r.node] = node
        g.add_node(node, label=f"input {r.node}\n{_shape(r.shape)}", color=TERMINAL)
    for b in plan.blocks:
        for o in b.outputs:
            producer[o.node] = b.name
            shapes[o.node] = o.shape
        layers = len(b.weight_layers)
        size = (
            f"{layers} weight layer{'s' if layers != 1 else ''}, {b.params:,} params"
            if layers
            else f"{b.params:,} params"
        )
        g.add_node(
            b.name, label=f"{b.name} ({b.kind})\n{size}", color=ANALOG if b.kind == "analog" else DIGITAL
        )
    for b in plan.blocks:
        for r in b.inputs:
            src = producer.get(r.node)
            if src is not None and src != b.name:
                g.add_edge(src, b.name, label=_shape(r.shape))
    g.add_node("out", label="output", color=TERMINAL)
    for name in plan.graph_outputs:
        if name in producer:
            g.add_edge(producer[name], "out", label=_shape(shapes.get(name)) if name in shapes else "")
    return g


def _layout(g: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """Layered positions: generation k of the topological order on row -k, the row's nodes centred."""
    pos: dict[str, tuple[float, float]] = {}
    generations = list(nx.topological_generations(g)) if nx.is_directed_acyclic_graph(g) else [list(g)]
    for depth, nodes in enumerate(generations):
        for i, n in enumerate(sorted(nodes)):
            pos[n] = (i - (len(nodes) - 1) / 2, -float(depth))
    return pos


def _lanes(g: nx.DiGraph, pos: dict[str, tuple[float, float]]) -> dict[tuple[str, str], float]:
    """For each edge that skips rows (a residual connection, an input reused later): the x of a vertical lane
    right of every node on the rows it passes, so it is drawn around them, not through them (and its label
    stays readable); edges sharing rows get lanes side by side."""
    lanes: dict[tuple[str, str], float] = {}
    used: list[tuple[float, float, float]] = []  # (top y, bottom y, lane x)
    long_edges = sorted((e for e in g.edges if pos[e[0]][1] - pos[e[1]][1] > 1), key=lambda e: -pos[e[0]][1])
    for u, v in long_edges:
        top, bottom = pos[u][1], pos[v][1]
        passed = [x for x, y in pos.values() if bottom < y < top]
        x = max(passed, default=max(pos[u][0], pos[v][0])) + 0.62
        while any(b < top and bottom < t and abs(x - lx) < 0.2 for t, b, lx in used):
            x += 0.22
        used.append((top, bottom, x))
        lanes[(u, v)] = x
    return lanes


def draw_plan(plan: Plan, path: str | Path, fmt: str = "png") -> None:
    """Draw `plan`'s block graph into `path` as `fmt` (png or svg). Uses a bare matplotlib Figure (no pyplot,
    no global backend switch), so it works without a display."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    g = plan_graph(plan)
    pos = _layout(g)
    lanes = _lanes(g, pos)
    depth = 1 + max((-y for _, y in pos.values()), default=0)
    breadth = max(
        (sum(1 for p in pos.values() if p[1] == y) for y in {p[1] for p in pos.values()}), default=1
    )
    xs = [p[0] for p in pos.values()] + list(lanes.values())
    span = max(xs) - min(xs) + 1.6
    fig = Figure(figsize=(max(5.0, 3.2 * max(breadth, span / 1.6)), max(3.0, 1.05 * depth)))
    ax = fig.subplots()
    arrow = {"arrowstyle": "-|>", "color": "0.35", "lw": 1.0, "shrinkA": 0, "shrinkB": 0}
    for u, v, data in g.edges(data=True):
        (x0, y0), (x1, y1) = pos[u], pos[v]
        lane = lanes.get((u, v))
        if lane is None:
            ax.annotate("", xy=(x1, y1 + 0.22), xytext=(x0, y0 - 0.22), arrowprops=arrow)
            label_at = ((x0 + x1) / 2 + 0.04, (y0 + y1) / 2)
        else:  # around the rows in between: out to the lane, down, back in
            ax.plot([x0 + 0.3, lane, lane], [y0 - 0.1, y0 - 0.5, y1 + 0.5], color="0.35", lw=1.0)
            ax.annotate("", xy=(x1 + 0.3, y1 + 0.1), xytext=(lane, y1 + 0.5), arrowprops=arrow)
            label_at = (lane + 0.04, (y0 + y1) / 2)
        if data.get("label"):
            ax.text(*label_at, data["label"], fontsize=7, color="0.3", va="center")
    for n, (x, y) in pos.items():
        ax.text(
            x,
            y,
            g.nodes[n]["label"],
            ha="center",
            va="center",
            fontsize=8,
            bbox={"boxstyle": "round,pad=0.4", "facecolor": g.nodes[n]["color"], "edgecolor": "0.4"},
        )
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(-depth + 0.5, 0.6)
    ax.axis("off")
    n_analog = len(plan.analog_blocks)
    readout = getattr(plan.config, "readout", "analog")
    ax.set_title(
        f"{plan.model.model_class}: {n_analog} analog / {len(plan.blocks) - n_analog} digital blocks "
        f"(max_block_size={plan.config.max_block_size}"
        + (f", readout={readout}" if readout != "analog" else "")
        + ")",
        fontsize=9,
    )
    ax.legend(
        handles=[
            Patch(facecolor=ANALOG, edgecolor="0.4", label="analog (energy-based)"),
            Patch(facecolor=DIGITAL, edgecolor="0.4", label="digital"),
        ],
        loc="upper right",
        fontsize=7,
        frameon=False,
    )
    fig.tight_layout()
    fig.savefig(path, format=fmt, dpi=120)
