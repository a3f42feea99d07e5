"""Building a run's model: the original model fitted to the dataset (zoo table rules, library specs, model
files), checked to run and to output logits, compiled into an ff-EBM with the run's settings (or kept as it
is for `algorithm="bp"`), and the config with every default it resolved written out."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hybridc.errors import HybridcError, ModelLoadError, PlanMismatchError
from hybridc.plan import PartitionConfig
from hybridc.train.experiment import DEFAULT_HIDDEN, ConfigError, ExperimentConfig, validate_config


def fit_model(cfg: ExperimentConfig, shape: tuple[int, ...], classes: int) -> Any:
    """How the run's model meets data of per-sample `shape` (C, H, W) and `classes` classes: a
    `hybridc.models.ZooFit` (factory arguments, the image size the data is resized to first or None, and a
    note saying so). Zoo models are fitted by their table rule (`hybridc.models.fit_zoo_model`; the embedded
    default is the zoo MLP with hidden widths DEFAULT_HIDDEN); a library model (`hf:`/`timm:`) by
    `hybridc.train.library_fit.fit_library_model` (class count, channels, image and patch size; `model_kwargs` are
    overrides on top of its spec); a model file takes the data as it is, resized only to `cfg.input_size`.
    Fitting an already fitted shape changes nothing."""
    from hybridc.load_library import is_library_spec
    from hybridc.models import ZOO, ZooFit, fit_zoo_model
    from hybridc.train.library_fit import fit_library_model

    name = cfg.model or "mlp"
    c, h, w = (int(d) for d in shape)
    size = (cfg.input_size, cfg.input_size) if cfg.input_size is not None else None
    if is_library_spec(name):
        try:
            lib = fit_library_model(name, (c, h, w), classes, cfg.model_kwargs, cfg.input_size)
        except ModelLoadError as exc:
            raise ConfigError(str(exc)) from None
        return ZooFit(lib.kwargs, lib.input_size, lib.how)
    if name not in ZOO:
        if cfg.model_kwargs:
            raise ConfigError("model_kwargs apply to zoo models only; a model file builds itself")
        if size is None or size == (h, w):
            return ZooFit({}, None, "as is")
        return ZooFit({}, size, f"input resized {h}x{w} -> {size[0]}x{size[1]} (input_size)")
    kwargs = dict(cfg.model_kwargs)
    fitted_shape = (c, *size) if size is not None else (c, h, w)
    if name == "mlp":
        hidden = list(DEFAULT_HIDDEN) if cfg.model is None else [1024, 1024]
        kwargs.setdefault("sizes", [math.prod(fitted_shape), *hidden, classes])
    if size is not None and name.startswith(("vgg", "vit")):
        kwargs.setdefault("image_size", size[0])
    try:
        fit = fit_zoo_model(name, fitted_shape, classes, kwargs)
    except ModelLoadError as exc:
        raise ConfigError(f"model {cfg.model_label()} does not fit {cfg.data} ({c}x{h}x{w}): {exc}") from None
    if size is not None and size != (h, w):
        resized = fit.input_size or size
        return ZooFit(fit.kwargs, resized, f"input resized {h}x{w} -> {resized[0]}x{resized[1]} (input_size)")
    return fit


def build_model(
    cfg: ExperimentConfig, shape: tuple[int, ...], classes: int
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The original (uncompiled) model and an example batch, checked to output `classes` logits. `shape` is
    the data's per-sample shape; the model is built for it as `fit_model` fits it (the example batch has the
    fitted shape: resize the data with `fit_model(...).input_size` before feeding it)."""
    from hybridc.load import load_model
    from hybridc.load_library import build_library_model, is_library_spec
    from hybridc.models import ZOO
    from hybridc.output_leaf import leaf_at, logits_path, narrow_output

    name = cfg.model or "mlp"
    fit = fit_model(cfg, shape, classes)
    model_shape = (int(shape[0]), *fit.input_size) if fit.input_size is not None else tuple(shape)
    if is_library_spec(name):
        try:
            model, example = build_library_model(name, tuple(model_shape), 2, fit.kwargs)
        except ModelLoadError as exc:
            raise ConfigError(str(exc)) from None
    else:
        lm = (
            load_model(name, tuple(model_shape), **fit.kwargs)
            if name in ZOO
            else load_model(name, tuple(model_shape))
        )
        model, example = lm.model, lm.example_inputs
    was_training = model.training
    model.eval()
    with torch.no_grad():
        try:
            out = model(*example)
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            hint = ""
            if is_library_spec(name) and fit.input_size is None:
                key = "img_size" if name.startswith("timm:") else "image_size"
                hint = (
                    f"; the images may be too small for its downsampling: give {key}=N in the spec to resize "
                    "them (e.g. 32), or fewer stages"
                )
            raise ConfigError(
                f"model {name} cannot run on {cfg.data} samples of shape {tuple(model_shape)}: "
                f"{type(exc).__name__}: {first}{hint}"
            ) from None
    model.train(was_training)
    if not isinstance(out, torch.Tensor):
        # a structure (transformers' ImageClassifierOutput, a dict, a tuple): train on its logits leaf; the
        # narrowed model returns that tensor, so the compiled ff-EBM, load_run and evaluate_run see logits
        try:
            path = logits_path(out)
        except HybridcError as exc:
            raise ConfigError(f"model {name}: {exc}") from None
        out = leaf_at(out, path)
        model = narrow_output(model, path)
    if out.dim() != 2 or out.shape[1] != classes:
        raise ConfigError(
            f"model {name} outputs {tuple(out.shape)} for a batch of 2, but {cfg.data} needs logits "
            f"of shape (batch, {classes})"
        )
    return model, example


def compile_model(
    cfg: ExperimentConfig, model: nn.Module, example: tuple[torch.Tensor, ...], plan: Any = None
) -> nn.Module:
    """The trainable module: the compiled ff-EBM, or the original model itself for `bp`."""
    if cfg.algorithm == "bp":
        return model
    from hybridc.api import compile as hc_compile

    solver: dict[str, Any] = {"t2": cfg.t2, "mode": cfg.solver_mode, "free_tol": cfg.free_tol}
    if cfg.t1 is not None:  # fixed steps: one divergence check per phase (at its end), fewer host syncs
        solver |= {"t1": cfg.t1, "free": "fixed", "check_every": max(cfg.t1, cfg.t2)}
    common: dict[str, Any] = {
        "gradient": cfg.algorithm,
        "solver": solver,
        "init": cfg.init,
        "beta": cfg.beta,
        "goe_variance": cfg.goe_variance,
        "analog": cfg.analog or None,
        # equilibrium by construction (None: the compiler's default gain, 0: off); the
        # bound is kept after every optimizer step by hybridc.energy.contraction's hook
        "feedback_gain": cfg.feedback_gain,
    }
    if plan is not None:
        return hc_compile(model, example, plan=plan, **common)
    return hc_compile(model, example, max_block_size=cfg.max_block_size, **common, **cfg.policies())


def _check_model_finite(model: nn.Module, loader: Any, cfg: ExperimentConfig) -> None:
    """The original model's own forward pass on the first test batch (real data, as training sees it) must be
    finite: NaN/Inf there comes from the model's ops (a log of a non-positive value, a division by zero), and
    no learning rate fixes it. One forward pass, on the CPU copy of the model, no RNG consumed."""
    loader.set_epoch(0)
    batch = next(iter(loader))[0].cpu()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(batch.float())
    except Exception:  # noqa: BLE001 - build_model already checked that the model runs: nothing new to say
        return
    finally:
        model.train(was_training)
    if isinstance(out, torch.Tensor) and not bool(torch.isfinite(out).all()):
        raise ConfigError(
            f"model {cfg.model_label()} outputs NaN/Inf on the first {batch.shape[0]} {cfg.data} "
            "samples before any training: its own operations (a log of a non-positive value, a "
            "division by zero, ...) produce them; fix the model (no training setting can)"
        )


def resolved_config(
    cfg: ExperimentConfig, fit: Any, shape: tuple[int, ...], plan: Any, augment: str
) -> ExperimentConfig:
    """`cfg` with every default that was resolved while building the run written out, so config.json says
    exactly what ran: the zoo factory arguments (or a library model's spec overrides: num_labels, image_size,
    ...) fitted to the data, the input size, the partition settings of the compiled plan (unless a --plan
    fixed them) and the feedback-gain bound. Compiling the resolved config again gives the same model (the
    values are the ones the defaults stood for)."""
    from hybridc.load_library import is_library_spec
    from hybridc.models import ZOO

    updates: dict[str, Any] = {"augment": augment}
    if (cfg.model or "mlp") in ZOO or is_library_spec(cfg.model or ""):
        updates["model_kwargs"] = dict(fit.kwargs)
    updates["input_size"] = fit.input_size[0] if fit.input_size is not None else int(shape[-1])
    if cfg.algorithm != "bp":
        if cfg.plan is None and plan is not None:
            updates |= {
                k: getattr(plan.config, k) for k in PartitionConfig.model_fields if getattr(cfg, k) is None
            }
        if cfg.feedback_gain is None:
            from hybridc.energy.contraction import DEFAULT_FEEDBACK_GAIN

            updates["feedback_gain"] = DEFAULT_FEEDBACK_GAIN
    return validate_config(cfg.model_dump() | updates, "resolved run config")


def load_plan_file(path: Path) -> Any:
    """A plan file, every problem a ConfigError naming the file and each reason."""
    from hybridc.plan import PlanFileError, read_plan

    try:
        return read_plan(path)
    except PlanFileError as exc:
        raise ConfigError(str(exc)) from None


def _compile_checked(
    cfg: ExperimentConfig, model: nn.Module, example: tuple[torch.Tensor, ...], plan: Any
) -> nn.Module:
    """`compile_model`, with a hand-edited plan that does not describe a runnable graph (a cycle, a missing
    node) reported as such instead of as an internal KeyError."""
    try:
        return compile_model(cfg, model, example, plan)
    except PlanMismatchError as exc:
        if plan is None:
            raise
        made_for = plan.model.model_class
        text = str(exc)
        head = f"the plan does not match model {made_for}:"
        detail = text[len(head) :] if text.startswith(head) else f"\n  - {text}"
        raise ConfigError(
            f"the plan{f' {cfg.plan}' if cfg.plan else ''} was made for model {made_for}; it does "
            f"not match the model being trained, {cfg.model_label()} ({type(model).__name__}):"
            f"{detail}"
        ) from None
    except HybridcError:
        raise
    except (KeyError, IndexError, ValueError) as exc:
        if plan is None:
            raise
        raise ConfigError(
            f"the plan{f' {cfg.plan}' if cfg.plan else ''} does not describe a graph this model "
            f"can run ({type(exc).__name__}: {exc}); was it edited by hand? Re-create it with "
            "`hybridc partition -f json`"
        ) from None


def analog_blocks(module: nn.Module) -> dict[str, nn.Module]:
    """The analog blocks of a compiled model (empty for a plain model)."""
    return dict(getattr(module, "analog_blocks", {}) or {})


def _compiled_step(step: Callable[..., list[torch.Tensor]]) -> Callable[..., list[torch.Tensor]]:
    """`step` under torch.compile, called without the phase's step cache: the compiled graph recomputes what
    the cache would reuse (the cache's tensor-identity checks would make dynamo recompile every step)."""
    compiled = torch.compile(step, dynamic=True)

    def step_prepared(prepared, states, nudge=None, differentiable=False, cache=None):  # noqa: ANN001, ANN202
        return compiled(prepared, states, nudge, differentiable)

    return step_prepared


def apply_torch_compile(module: nn.Module, algorithm: str) -> list[str]:
    """torch.compile what a training step runs: the digital blocks' forward and, in every analog block, the
    relaxation step its phases call on every iteration (`step_prepared`, not `step_map`, which the phases do
    not call). Instance attributes, so parameters and state_dict are untouched. Returns what was compiled."""
    done: list[str] = []
    if algorithm == "bp":
        module.forward = torch.compile(module.forward)
        return ["model"]
    blocks = getattr(module, "blocks", {})
    for name, blk in blocks.items():
        if name in analog_blocks(module):
            blk.step_prepared = _compiled_step(blk.step_prepared)
        else:
            blk.forward = torch.compile(blk.forward, dynamic=True)
        done.append(name)
    return done
