"""`hybridc zoo` (every zoo model, its input shape, the --model-kwargs it takes, how it fits each dataset) and
`hybridc partition -f png|svg` (the block graph drawn with matplotlib + networkx, no Graphviz)."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import pytest
import torch

from hybridc.cli import main
from hybridc.render_graph import ANALOG, DIGITAL, _lanes, _layout, plan_graph


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def test_zoo_json_lists_every_model_with_valid_kwargs(capsys: pytest.CaptureFixture[str]) -> None:
    from hybridc.data.datasets import DATASETS
    from hybridc.models import ZOO, ZOO_INPUT_SHAPES, build_zoo_model

    code, out, err = _main(["zoo", "-f", "json"], capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert [r["name"] for r in rows] == list(ZOO)
    for r in rows:
        assert tuple(r["input_shape"]) == tuple(ZOO_INPUT_SHAPES[r["name"]])
        assert set(r["fits"]) == set(DATASETS), r["name"]
        assert r["kwargs"], r["name"]
        with torch.device("meta"):  # what is listed is what --model-kwargs accepts
            build_zoo_model(
                r["name"], **{k: tuple(v) if isinstance(v, list) else v for k, v in r["kwargs"].items()}
            )
    vgg12 = next(r for r in rows if r["name"] == "vgg-paper-12")
    assert vgg12["kwargs"]["layers"] == 12  # the factory's value, not the class default


def test_zoo_table(capsys: pytest.CaptureFixture[str]) -> None:
    from hybridc.models import ZOO

    code, out, _ = _main(["zoo"], capsys)
    assert code == 0
    for name in ZOO:
        assert name in out
    assert "--model-kwargs" in out and "digits" in out and "fashion-mnist" in out


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_partition_draws_the_block_graph(
    fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no Graphviz (no `dot`) on the PATH
    out = tmp_path / f"blocks.{fmt}"
    code, stdout, err = _main(
        ["partition", "mlp", "--model-kwargs", '{"sizes": [784, 16, 16, 10]}', "-f", fmt, "-o", str(out)],
        capsys,
    )
    assert code == 0, err
    assert f"wrote {out}" in err and stdout == ""
    data = out.read_bytes()
    if fmt == "png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    else:
        assert b"<svg" in data[:500] and len(data) > 5_000


def test_block_graph_nodes_edges_and_colours() -> None:
    from hybridc.api import partition
    from hybridc.models.mlp import MLP

    model = MLP(sizes=(12, 8, 8, 4), in_shape=(12,))
    plan = partition(model, (torch.randn(2, 12),), max_block_size=2)
    g = plan_graph(plan)
    blocks = {b.name: b for b in plan.blocks}
    assert set(g) == set(blocks) | {f"in:{r.node}" for r in plan.graph_inputs} | {"out"}
    for name, b in blocks.items():
        assert g.nodes[name]["color"] == (ANALOG if b.kind == "analog" else DIGITAL)
        assert f"{b.params:,} params" in g.nodes[name]["label"]
    assert nx.is_directed_acyclic_graph(g) and nx.has_path(g, f"in:{plan.graph_inputs[0].node}", "out")
    last = next(u for u, _ in g.in_edges("out"))
    assert g.edges[last, "out"]["label"] == "4"  # the output's per-sample shape


def test_skip_edges_go_around_the_rows_they_pass() -> None:
    """A residual edge a -> d past b, c is drawn in a lane right of b and c (not through them); two skip
    edges over the same rows get different lanes."""
    g = nx.DiGraph([("a", "b"), ("b", "c"), ("c", "d"), ("a", "d"), ("a", "c")])
    pos = _layout(g)
    lanes = _lanes(g, pos)
    assert set(lanes) == {("a", "d"), ("a", "c")}
    assert lanes[("a", "d")] > max(pos["b"][0], pos["c"][0]) and lanes[("a", "c")] > pos["b"][0]
    assert abs(lanes[("a", "d")] - lanes[("a", "c")]) >= 0.2


def test_picture_format_needs_an_output_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _main(["partition", "mlp", "-f", "svg"], capsys)
    assert code == 2 and out == "" and err.count("error: ") == 1 and "-o blocks.svg" in err
