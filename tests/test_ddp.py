"""Data parallelism: two gloo processes (spawned, free localhost port) give the gradients of one process on the
same global batch, train to the same metrics as one process, and only rank 0 writes the run directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from hybridc.train import distributed as D
from hybridc.train.experiment import ExperimentConfig
from hybridc.train.metrics import strip_timings

GLOBAL_BATCH = 9  # odd on purpose: shards of 5 and 4 samples must still average to the global mean
CFG = {
    "train_subset": 150,
    "test_subset": 61,
    "batch_size": 15,
    "epochs": 2,
    "t1": 6,
    "t2": 3,
    "model_kwargs": {"sizes": [64, 24, 24, 10]},
    "progress": False,
    "lr": 1e-2,
    "device": "cpu",
}


def _compiled():  # noqa: ANN202
    from hybridc.train.build import build_model, compile_model

    torch.manual_seed(0)
    cfg = ExperimentConfig(**CFG)
    model, example = build_model(cfg, (1, 8, 8), 10)
    return compile_model(cfg, model, example)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(GLOBAL_BATCH, 1, 8, 8, generator=g), torch.randint(0, 10, (GLOBAL_BATCH,), generator=g)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
        }
    )
    torch.set_num_threads(1)
    ctx, device = D.init_distributed("cpu")
    assert ctx.world_size == world and ctx.rank == rank and ctx.backend == "gloo"
    # 1. gradients of one step on a global batch
    ff = _compiled()
    ddp = D.wrap_ddp(ff, ctx, device)
    x, y = _batch()
    loss = F.cross_entropy(ddp(D.shard(x, ctx)), D.shard(y, ctx), reduction="sum") * D.loss_scale(len(x), ctx)
    loss.backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in ff.named_parameters()}, Path(out) / "grads.pt")
    dist.barrier()
    # 2. a whole training run; count the run-directory writes each process makes
    import hybridc.train.loop as T
    import hybridc.train.metrics as M

    writes = []
    for mod, name in (
        (T, "atomic_write_text"),
        (T, "save_checkpoint"),
        (T, "plot_curves"),
        (M, "atomic_write_text"),
    ):
        orig = getattr(mod, name)

        def counted(*a, _orig=orig, _name=name, **k):  # noqa: ANN002, ANN003, ANN202
            writes.append(_name)
            return _orig(*a, **k)

        setattr(mod, name, counted)
    res = T.train(ExperimentConfig(**CFG), out=Path(out) / "run")
    (Path(out) / f"rank{rank}.json").write_text(
        json.dumps({"writes": writes, "run_dir": str(res.run_dir), "records": res.records})
    )


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, D.free_port(), str(out)), nprocs=2, join=True)
    return out


def test_two_process_gradients_equal_one_process(two_process_run: Path) -> None:
    ff = _compiled()
    x, y = _batch()
    F.cross_entropy(ff(x), y).backward()
    ddp_grads = torch.load(two_process_run / "grads.pt", weights_only=True)
    assert ddp_grads.keys() == {n for n, _ in ff.named_parameters()}
    for n, p in ff.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
        torch.testing.assert_close(ddp_grads[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_two_process_training_matches_one_and_only_rank0_writes(
    two_process_run: Path, tmp_path: Path
) -> None:
    from hybridc.train.loop import train

    r0 = json.loads((two_process_run / "rank0.json").read_text())
    r1 = json.loads((two_process_run / "rank1.json").read_text())
    assert r1["writes"] == [] and r1["run_dir"] == "None"
    assert {"atomic_write_text", "save_checkpoint", "plot_curves"} <= set(r0["writes"])
    run = two_process_run / "run"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == CFG["epochs"]
    single = train(ExperimentConfig(**CFG), out=tmp_path / "single")
    for a, b in zip(strip_timings(r0["records"]), strip_timings(single.records), strict=True):
        for key in ("train_loss", "test_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-3), key
        for key in ("train_acc", "test_acc"):
            assert abs(a[key] - b[key]) <= 1.5 / CFG["test_subset"], key
        assert a["residual"].keys() == b["residual"].keys()
