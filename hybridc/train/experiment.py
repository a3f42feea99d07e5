"""The experiment configuration of `hybridc train`: one pydantic model for the YAML/JSON file, the CLI flags
and the `config.json` of a run directory.

Precedence: built-in defaults < experiment file (`--config exp.yaml`) < command-line flags. Unknown keys are
rejected (a typo in an experiment file must not silently train something else). The resolved config is
written to the run directory and is what `--resume` checks a continuation against.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from hybridc.energy.settings import GradientConfig, SolverConfig
from hybridc.errors import HybridcError
from hybridc.fields import SHOWN, field_of, optional_fields
from hybridc.finite import FiniteFloat
from hybridc.plan import AnalogSpec, PartitionConfig

Algorithm = Literal["ep", "id", "bptt", "bp"]

#: Hidden widths of the embedded default model (an MLP fitted to the dataset's input and classes).
DEFAULT_HIDDEN: tuple[int, ...] = (256, 256)
#: Feedback-gain bound of the embedded default (see `feedback_gain`).
EMBEDDED_FEEDBACK_GAIN = 0.9

#: Fields that may differ between a run and its `--resume`: where things live and how they are shown,
#: never what is computed (`epochs` may grow when the learning-rate schedule does not depend on it).
RESUMABLE_FIELDS = frozenset({"data_dir", "download", "device", "progress", "log_every", "epochs"})


class ConfigError(HybridcError):
    """An experiment file or a combination of training options is invalid."""


def _optional_t1() -> tuple[object, object]:
    """`SolverConfig.t1` as the run's optional T1: not given (the default), each free phase runs to its
    equilibrium; given, exactly that many steps (the paper's fixed-iteration version)."""
    annotation, info = optional_fields(SolverConfig, ["t1"])["t1"]
    info.description = (
        "free-phase relaxation steps: exactly T1 per free phase (the paper's fixed-iteration version)"
    )
    info.json_schema_extra = {
        SHOWN: "none: each free phase runs to equilibrium (free_tol), capped from its block's "
        "feedback-gain bound"
    }
    return annotation, info


#: The settings a run shares with the compiler, declared once where they live (`PartitionConfig`,
#: `SolverConfig`, `GradientConfig`) and copied here: the partition policies as optional overrides (None:
#: the partitioner's default), the relaxation and nudging settings with their defaults.
_CompilerSettings = create_model(
    "_CompilerSettings",
    __config__=ConfigDict(extra="forbid", validate_assignment=True),
    **optional_fields(PartitionConfig),
    beta=field_of(GradientConfig, "beta"),
    t1=_optional_t1(),
    free_tol=field_of(SolverConfig, "free_tol"),
    t2=field_of(SolverConfig, "t2", description="nudged-phase relaxation steps (and BPTT unroll)"),
    solver_mode=field_of(SolverConfig, "mode"),
)


class ExperimentConfig(_CompilerSettings):
    """Everything that defines a training run: the compiler's settings (partition policies, beta, t1, t2,
    solver_mode: see `_CompilerSettings`) and the fields below. Every field has a CLI flag of the same name
    (dashes for underscores), generated from it (`hybridc.cli.flags`); `hybridc train` with no arguments
    trains the embedded default below."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # ---- model and partition ----------------------------------------------------------------------
    model: str | None = Field(
        None,
        description="zoo name, path/model.py[:factory], or a library model hf:MODEL_TYPE[,key=value...] / "
        "timm:NAME[,key=value...]; None = the embedded default MLP "
        f"(hidden {'-'.join(map(str, DEFAULT_HIDDEN))}, fitted to the dataset)",
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments of a zoo model's factory (e.g. sizes, width; "
        "`hybridc zoo` lists them), or overrides on top of a library model's "
        "spec (e.g. hidden_size); input shape and class count are filled from "
        "the dataset when absent",
        examples=[{"width": 0.25}],
    )
    input_size: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="resize the images to N x N (bilinear) before the model; the run's "
        "header and config.json record the size used",
        json_schema_extra={
            SHOWN: "the data's own size; a zoo model that needs more, the smallest it accepts "
            "(VGG on 8x8 digits: 16)"
        },
    )
    plan: str | None = Field(
        None,
        description="compile exactly this plan JSON (from hybridc partition) instead of partition settings",
    )
    analog: dict[str, Any] = Field(
        default_factory=dict,
        description="device effects of every analog block, AnalogSpec fields ("
        + ", ".join(AnalogSpec.model_fields)
        + ")",
        examples=[{"read_noise": 0.01}],
        json_schema_extra={SHOWN: "none (an ideal device)"},
    )
    init: Literal["keep", "goe", "goe-conv"] = Field(
        "keep",
        description="analog weights: keep (the model's init), goe (GOE for every analog weight) or goe-conv "
        "(the reference code's: convs only, biases zero, Linear layers kept)",
    )
    goe_variance: FiniteFloat = Field(5e-5, gt=0, description="GOE init variance (init=goe)")

    # ---- gradient and solver ----------------------------------------------------------------------
    algorithm: Algorithm = Field(
        "ep",
        description="ep, id, bptt through analog blocks; bp = the original "
        "feedforward model by backprop (the baseline)",
    )
    feedback_gain: FiniteFloat | None = Field(
        None,
        ge=0,
        description="equilibrium by construction: bound every multi-layer Hopfield block's feedback "
        "gain ρ = ‖D_a^½ A D_a^½‖ (its free phase is then a contraction) at compile time "
        "and after every optimizer step (hybridc.energy.contraction); 0 = off",
        json_schema_extra={SHOWN: f"0.8; {EMBEDDED_FEEDBACK_GAIN} for the embedded default"},
    )

    # ---- data -------------------------------------------------------------------------------------
    data: str = Field(
        "digits",
        description="digits (bundled with scikit-learn), fashion-mnist, mnist, kmnist, "
        "cifar10, cifar100, imagenet32 (found in data_dir, standard places or "
        "downloaded)",
    )
    data_dir: str | None = Field(
        None, description="directory with the dataset files", json_schema_extra={SHOWN: "standard places"}
    )
    download: bool = Field(True, description="download missing dataset files where a network exists")
    augment: Literal["auto", "none", "crop-flip"] = Field(
        "auto", description="auto = random crop + flip for 32x32 data, none otherwise"
    )
    train_subset: int | None = Field(
        None, ge=1, description="use only the first N training samples", json_schema_extra={SHOWN: "all"}
    )
    test_subset: int | None = Field(
        None, ge=1, description="use only the first N test samples", json_schema_extra={SHOWN: "all"}
    )

    # ---- optimisation -----------------------------------------------------------------------------
    epochs: int = Field(20, ge=1, description="passes over the training set")
    batch_size: int = Field(64, ge=1, description="global batch (split across torchrun processes)")
    test_batch_size: int = Field(500, ge=1, description="batch of the test evaluation")
    lr: FiniteFloat = Field(1e-3, gt=0, le=100.0, description="learning rate")
    optimizer: Literal["adam", "sgd"] = Field(
        "adam", description="optimizer of all parameters (see analog_optimizer)"
    )
    momentum: FiniteFloat = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: FiniteFloat = Field(
        0.0, ge=0, description="decoupled weight decay, on ≥2-D weights only (not biases/norms)"
    )
    schedule: Literal["cosine", "none"] = Field("cosine", description="per-epoch learning-rate schedule")
    analog_optimizer: Literal["sgd", "analog-sgd", "tiki-taka"] | None = Field(
        None,
        description="optimizer of the analog weights (≥2-D parameters of analog blocks; with algorithm=bp "
        "the Linear/Conv weights): sgd = ideal device, analog-sgd/tiki-taka = soft-bounds "
        "device with bound analog_tau",
        json_schema_extra={SHOWN: "the optimizer"},
    )
    analog_lr: FiniteFloat | None = Field(
        None, gt=0, description="learning rate of the analog optimizer", json_schema_extra={SHOWN: "lr"}
    )
    analog_tau: FiniteFloat = Field(
        1.0, gt=0, description="soft-bounds device bound τ (weights live in [−τ, τ])"
    )
    transfer_lr: FiniteFloat | None = Field(
        None,
        gt=0,
        description="Tiki-Taka transfer rate β from P to W",
        json_schema_extra={SHOWN: "analog_lr"},
    )
    transfer_every: int = Field(1, ge=1, description="Tiki-Taka transfer period (optimizer steps)")

    # ---- execution --------------------------------------------------------------------------------
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto = cuda when torch sees a GPU, else cpu; torchrun: one GPU per process"
    )
    amp: Literal["none", "bf16"] = Field("none", description="bf16 autocast of digital blocks")
    compile: bool = Field(False, description="torch.compile digital blocks and the analog step map")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="random seed (init, NumPy, data order)")
    log_every: int = Field(20, ge=1, description="batches between host reads of running loss/accuracy")
    progress: bool = Field(True, description="progress bars on a terminal, periodic lines otherwise")

    @field_validator("analog")
    @classmethod
    def _analog_spec(cls, v: dict[str, Any]) -> dict[str, Any]:
        """Device effects are AnalogSpec fields: checked here (names and values), not when the first block
        is built."""
        try:
            AnalogSpec(**v)
        except ValidationError as exc:
            reasons = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: "
                + (
                    "unknown key (valid keys: " + ", ".join(AnalogSpec.model_fields) + ")"
                    if e["type"] == "extra_forbidden"
                    else e["msg"]
                )
                for e in exc.errors()
            )
            raise ValueError(reasons) from None
        return v

    @field_validator("data")
    @classmethod
    def _known_data(cls, v: str) -> str:
        from hybridc.data import canonical_name

        try:
            return canonical_name(v)
        except HybridcError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="before")
    @classmethod
    def _embedded_default_is_contractive(cls, data: Any) -> Any:
        """The embedded default (no model given) trains at equilibrium: its hidden↔output loop is kept
        contractive (unguarded, its 2-layer block ends ~0.15 away from a fixed point after T1 steps)."""
        if isinstance(data, dict) and data.get("model") is None and "feedback_gain" not in data:
            return {**data, "feedback_gain": EMBEDDED_FEEDBACK_GAIN}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        if self.plan is not None and self.algorithm == "bp":
            raise ValueError("plan is meaningless with algorithm=bp (the original model is trained)")
        analog_opt_only = {"analog_lr": self.analog_lr, "transfer_lr": self.transfer_lr}
        stray = [k for k, v in analog_opt_only.items() if v is not None and self.analog_optimizer is None]
        if stray:
            raise ValueError(
                f"{', '.join(stray)} only apply with analog_optimizer (sgd, analog-sgd or tiki-taka)"
            )
        if self.transfer_lr is not None and self.analog_optimizer != "tiki-taka":
            raise ValueError("transfer_lr only applies to analog_optimizer=tiki-taka")
        if self.plan is not None and (self.policies() or self.max_block_size is not None):
            raise ValueError(
                "give either a plan or partition settings (max_block_size, norm, pool, ...), "
                "not both: the plan already fixes the partition"
            )
        return self

    # ---- helpers ----------------------------------------------------------------------------------
    def policies(self) -> dict[str, Any]:
        """Partition policies that were set (the rest take the partitioner's defaults)."""
        return {
            k: getattr(self, k)
            for k in PartitionConfig.model_fields
            if k != "max_block_size" and getattr(self, k) is not None
        }

    def model_label(self) -> str:
        """A short name of the model for titles and run-directory names."""
        if self.model is None:
            return "mlp-default"
        from hybridc.load_library import is_library_spec, library_label

        if is_library_spec(
            self.model
        ):  # `hf:vit,hidden_size=32` -> `hf-vit` (path-safe, for run directories)
            return library_label(self.model)
        path, _, factory = self.model.partition(":")
        if "/" in path or path.endswith(".py"):
            return Path(path).stem + (f"-{factory}" if factory else "")
        return self.model

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def _format_errors(exc: ValidationError, where: str) -> str:
    lines = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown key (valid keys: {', '.join(ExperimentConfig.model_fields)})"
        lines.append(f"{loc}: {msg}")
    return f"invalid experiment settings ({where}):\n  - " + "\n  - ".join(lines)


def validate_config(fields: dict[str, Any], where: str = "options") -> ExperimentConfig:
    """Build an ExperimentConfig, turning pydantic's errors into one ConfigError naming each bad key."""
    try:
        return ExperimentConfig(**fields)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, where)) from None


def read_experiment_file(path: str | Path) -> dict[str, Any]:
    """Read the raw mapping of a YAML (.yaml/.yml) or JSON experiment file (validated later, after flags)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError: both mean "not parseable"
        raise ConfigError(
            f"experiment file {path} is not valid {path.suffix.lstrip('.').upper() or 'JSON'}: {exc}"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"experiment file {path} must hold a mapping of settings, not {type(data).__name__}"
        )
    return data


def resolve_config(
    file: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> ExperimentConfig:
    """Defaults < experiment file < overrides (flags; None values mean "not given")."""
    fields: dict[str, Any] = {}
    where = "defaults"
    if file is not None:
        fields.update(read_experiment_file(file))
        where = str(file)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if given:
        where += " + command-line flags"
    fields.update(given)
    return validate_config(fields, where)


def check_resume_compatible(saved: ExperimentConfig, requested: dict[str, Any]) -> ExperimentConfig:
    """The config of a resumed run: the saved one, with only RESUMABLE_FIELDS taken from `requested`.

    Any other requested value that differs from the saved run is an error naming the keys: a resumed run
    that silently trained with other settings would not be the continuation it claims to be.
    """
    problems = []
    updates: dict[str, Any] = {}
    saved_dump = saved.model_dump()
    probe = validate_config(saved_dump | requested, "resume flags")
    for key in requested:
        new = getattr(probe, key)
        if new == saved_dump.get(key):
            continue
        if key in RESUMABLE_FIELDS:
            updates[key] = new
        else:
            problems.append(f"{key}: run has {saved_dump.get(key)!r}, requested {new!r}")
    if "epochs" in updates:
        if saved.schedule == "cosine":
            problems.append(
                f"epochs: the cosine schedule of this run was laid out for {saved.epochs} epochs; "
                "it cannot be extended (train with --schedule none to extend runs)"
            )
        elif updates["epochs"] < saved.epochs:
            problems.append(f"epochs: cannot shrink a run from {saved.epochs} to {updates['epochs']} epochs")
    if problems:
        raise ConfigError(
            "--resume: the requested settings differ from the run's:\n  - "
            + "\n  - ".join(problems)
            + "\n  Drop these flags to continue the run as it was configured."
        )
    return validate_config(saved_dump | updates, "resume")
