"""`hybridc train hf:...`: Hugging Face vision models trained end to end on the bundled digits (fitted to the
data: num_labels, num_channels, image_size, patch_size), their runs reloaded by `load_run`/`evaluate_run`, and
one-line errors for a num_labels that contradicts the data and for text models. Tiny configs (hidden 32,
1 layer, 32 training samples, 1 epoch) keep each fast test well under 20 s on 2 CPU cores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hybridc.evaluate import evaluate_run, load_run
from hybridc.load_library import library_label
from hybridc.output_leaf import output_path
from hybridc.train.build import build_model
from hybridc.train.experiment import ConfigError, validate_config
from hybridc.train.library_fit import fit_library_model
from hybridc.train.loop import Trainer, train

pytest.importorskip("transformers")

VIT = "hf:vit,hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=32"
BERT = "hf:bert,vocab_size=64,hidden_size=16,num_hidden_layers=1,num_attention_heads=2,intermediate_size=32"
DIGITS = (1, 8, 8)
SMALL = {"epochs": 1, "train_subset": 32, "test_subset": 64, "batch_size": 16, "progress": False}


def _cfg(model: str, **kw: object):  # noqa: ANN202
    return validate_config({"model": model, **SMALL, **kw})


# --------------------------------------------------------------------------------------------- fitting


def test_fit_vit_to_digits() -> None:
    """num_labels/num_channels/image_size from the data; ViT's default 16x16 patches cannot tile 8x8 images,
    so patch_size becomes 2 (a 4x4 grid); the spec's own keys are not repeated in the recorded kwargs."""
    fit = fit_library_model(VIT, DIGITS, 10)
    assert fit.kwargs == {"num_labels": 10, "num_channels": 1, "image_size": 8, "patch_size": 2}
    assert fit.input_size is None
    assert "patch_size=2 (4x4 patches)" in fit.how
    again = fit_library_model(VIT, DIGITS, 10, fit.kwargs)  # a run rebuilt from its config.json
    assert again.kwargs == fit.kwargs and again.input_size == fit.input_size


def test_fit_image_size_resizes_the_data() -> None:
    """image_size given (in the spec or as input_size) resizes the data to it; the two must agree."""
    fit = fit_library_model(VIT + ",image_size=16", DIGITS, 10)
    assert fit.input_size == (16, 16) and fit.kwargs["patch_size"] == 4 and "image_size" not in fit.kwargs
    assert "input resized 8x8 -> 16x16 (image_size)" in fit.how
    fit = fit_library_model(VIT, DIGITS, 10, input_size=16)
    assert fit.input_size == (16, 16) and fit.kwargs["image_size"] == 16
    with pytest.raises(Exception, match="image_size=16 but input_size is 32"):
        fit_library_model(VIT + ",image_size=16", DIGITS, 10, input_size=32)


def test_model_kwargs_clash_with_spec() -> None:
    with pytest.raises(Exception, match="hidden_size=32 in the spec but 64 in model_kwargs"):
        fit_library_model(VIT, DIGITS, 10, {"hidden_size": 64})


def test_library_label_is_path_safe() -> None:
    assert library_label(VIT) == "hf-vit"
    assert _cfg(VIT).model_label() == "hf-vit"


# ----------------------------------------------------------------------------------------- end to end


def test_train_vit_on_digits_and_reload(tmp_path: Path) -> None:
    """One epoch of a tiny hf:vit by EP: the run records accuracy and every analog block's residual, its
    config records the spec and the fitted overrides, and load_run rebuilds exactly the trained model."""
    out = tmp_path / "run"
    trainer = Trainer(_cfg(VIT), out)
    result = trainer.run()
    rec = result.records[-1]
    assert 0.0 <= rec["test_acc"] <= 1.0 and 0.0 <= rec["train_acc"] <= 1.0
    assert set(rec["residual"]) == set(trainer.block_names) and trainer.block_names
    assert all(v < 0.1 for v in rec["residual"].values())  # at equilibrium (blocks are guarded)
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"] == VIT
    assert saved["model_kwargs"] == {"num_labels": 10, "num_channels": 1, "image_size": 8, "patch_size": 2}
    # the model as written (its forward narrowed to the logits), not a wrapper: a partition plan of it fits
    assert json.loads((out / "plan.json").read_text())["model"]["model_class"] == "ViTForImageClassification"

    loaded = load_run(out)
    x = torch.rand(5, *DIGITS)
    with torch.no_grad():
        got = loaded(x)
        want = trainer.module.eval()(loaded.preprocess(x))
    assert isinstance(got, torch.Tensor) and got.shape == (5, 10)
    assert torch.equal(got, want)

    ev = evaluate_run(out, subset=64, device="cpu")
    assert ev.accuracy == pytest.approx(rec["test_acc"], abs=1.5 / 64)
    assert set(ev.residual) == set(trainer.block_names)


def test_train_vit_bp_baseline(tmp_path: Path) -> None:
    """algorithm=bp trains the wrapped original model (logits leaf) and reloads it too."""
    result = train(_cfg(VIT, algorithm="bp"), out=tmp_path / "bp")
    assert result.summary["analog_blocks"] == 0
    loaded = load_run(tmp_path / "bp")
    assert output_path(loaded.net) == ("logits",)
    with torch.no_grad():
        assert loaded(torch.rand(3, *DIGITS)).shape == (3, 10)


def test_build_model_takes_the_logits_leaf() -> None:
    model, example = build_model(_cfg(VIT), DIGITS, 10)
    assert type(model).__name__ == "ViTForImageClassification" and output_path(model) == ("logits",)
    assert not any(k.startswith("model.") for k in model.state_dict())  # the model's own parameter names
    with torch.no_grad():
        out = model(*example)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)


def test_train_with_a_partition_plan(tmp_path: Path) -> None:
    """A plan from `hybridc partition` of the fitted spec compiles the trained model (--plan)."""
    from hybridc.api import partition
    from hybridc.load import load_model

    fitted = VIT + ",num_labels=10,num_channels=1,image_size=8,patch_size=2"
    lm = load_model(fitted)
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(partition(lm.model, lm.example_inputs).to_json())
    result = train(_cfg(VIT, plan=str(plan_path)), out=tmp_path / "run")
    assert result.summary["analog_blocks"] >= 1
    assert load_run(tmp_path / "run")(torch.rand(2, *DIGITS)).shape == (2, 10)


# --------------------------------------------------------------------------------------------- errors


def test_num_labels_mismatch_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        train(_cfg(VIT + ",num_labels=5"), out=tmp_path / "r")
    msg = str(info.value)
    assert "\n" not in msg and "num_labels=5" in msg and "10 classes" in msg
    assert not (tmp_path / "r").exists()  # the run directory it made is removed again


def test_text_model_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        train(_cfg(BERT), out=tmp_path / "r")
    msg = str(info.value)
    assert "\n" not in msg and "text model" in msg and "hf:vit" in msg and "1x8x8" in msg


def test_cli_text_model_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`hybridc train hf:bert,...` ends in one `error:` line, no traceback."""
    from hybridc.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", BERT, "--epochs", "1", "--no-progress", "--out", str(tmp_path / "r")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert exc.value.code != 0
    assert len(err) == 1 and err[0].startswith("error:") and "text model" in err[0]


# ------------------------------------------------------------------------------------------- slow: CNNs


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec",
    [
        "hf:resnet,embedding_size=16,hidden_sizes=[16,32],depths=[1,1],layer_type=basic",
        "hf:convnext,hidden_sizes=[16,32],depths=[1,1],num_stages=2",
        "hf:mobilevit,hidden_sizes=[32,48,64],neck_hidden_sizes=[8,8,16,16,24,32,64],num_attention_heads=2,"
        "mlp_ratio=1.0",
    ],
)
def test_train_vision_families(tmp_path: Path, spec: str) -> None:
    result = train(_cfg(spec), out=tmp_path / "run")
    assert result.records and 0.0 <= result.records[-1]["test_acc"] <= 1.0
    loaded = load_run(tmp_path / "run")
    with torch.no_grad():
        assert loaded(torch.rand(2, *DIGITS)).shape == (2, 10)


def test_fit_timm_spec_without_timm() -> None:
    """timm models get num_classes and in_chans; img_size resizes the data (fitting imports no timm)."""
    fit = fit_library_model("timm:resnet18", DIGITS, 10)
    assert fit.kwargs == {"num_classes": 10, "in_chans": 1} and fit.input_size is None
    fit = fit_library_model("timm:vit_tiny_patch16_224,img_size=32,patch_size=8", DIGITS, 10)
    assert fit.input_size == (32, 32)
    with pytest.raises(Exception, match="in_chans=3, but the data has 1 channel"):
        fit_library_model("timm:resnet18,in_chans=3", DIGITS, 10)


def test_resume_an_hf_run(tmp_path: Path) -> None:
    """A resumed hf run rebuilds its model from config.json (spec + fitted model_kwargs) and continues."""
    out = tmp_path / "run"
    train(_cfg(VIT, schedule="none"), out=out)
    result = train(resume=out, resume_overrides={"epochs": 2})
    assert [r["epoch"] for r in result.records] == [1, 2]
