"""What a training run says when it goes wrong without failing: a loss that explodes, an accuracy stuck at
chance, a free phase that ends away from its fixed point. Nothing stops the run (the user decides), but a
finished run at chance or off equilibrium must not look like a success: each warning is printed once and
kept for the run's summary."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hybridc.plan import Plan
from hybridc.train.console import UNCONVERGED_RESIDUAL, chance_causes, free_phase_text
from hybridc.train.experiment import ExperimentConfig

#: train loss above this multiple of the first epoch's: the run is blowing up (warned once)
LOSS_EXPLOSION_FACTOR = 10.0
#: epochs after which a train accuracy still at chance level (≤ 1.5 / classes) is warned about
CHANCE_EPOCHS = 3


class TrainingDiagnosis:
    """The warnings of one run: `after_epoch` checks the records so far; `warnings` lists what was said."""

    def __init__(
        self, cfg: ExperimentConfig, plan: Plan | None, num_classes: int, say: Callable[[str], None]
    ) -> None:
        self.cfg, self.plan, self.num_classes, self.say = cfg, plan, num_classes, say
        self.warnings: list[str] = []
        self._warned: set[str] = set()

    def after_epoch(self, records: list[dict[str, Any]]) -> None:
        """Check the run after its latest epoch (`records`: every epoch's record so far)."""
        self._unconverged(records[-1]["residual"])
        self._bad_training(records)

    def _bad_training(self, recs: list[dict[str, Any]]) -> None:
        """The loss exploding to LOSS_EXPLOSION_FACTOR x its first epoch's, or the train accuracy still at
        chance after CHANCE_EPOCHS epochs (over every training sample, so less noisy than a test subset)."""
        cfg = self.cfg
        first, last = recs[0], recs[-1]
        if (
            "explode" not in self._warned
            and first["train_loss"] > 0
            and last["train_loss"] > LOSS_EXPLOSION_FACTOR * first["train_loss"]
        ):
            self._warned.add("explode")
            self._warning(
                f"train loss {last['train_loss']:.4g} at epoch {last['epoch']} is over {LOSS_EXPLOSION_FACTOR:g}x "
                f"the first epoch's ({first['train_loss']:.4g}): training is blowing up; lower --lr"
                + (" or --beta" if cfg.algorithm == "ep" else "")
                + ("" if cfg.feedback_gain != 0 else ", or keep blocks contractive: drop --feedback-gain 0")
            )
        chance = 1.0 / max(self.num_classes, 1)
        if (
            "chance" not in self._warned
            and len(recs) >= min(CHANCE_EPOCHS, max(cfg.epochs, 2))
            and all(r["train_acc"] <= 1.5 * chance for r in recs[-2:])
        ):
            self._warned.add("chance")
            causes = chance_causes(cfg, self.plan, recs, self.num_classes)
            self._warning(
                f"after {len(recs)} epochs train accuracy {100 * last['train_acc']:.1f} % and test accuracy "
                f"{100 * last['test_acc']:.1f} % are at chance ({100 * chance:.1f} % for {self.num_classes} "
                "classes): the model is not learning. "
                + ("Likely: " + "; ".join(causes) if causes else "Check --lr, the data and the model")
            )

    def _warning(self, text: str) -> None:
        from rich.markup import escape

        self.warnings.append(text)
        self.say(f"[yellow]warning: {escape(text)}[/]")

    def _unconverged(self, residual: dict[str, float]) -> None:
        """Once per block, a free phase that ends far from its fixed point: EP's gradient assumes an
        equilibrium, so the run may still learn but its gradients are no longer the ones EP promises."""
        for name, r in residual.items():
            if r > UNCONVERGED_RESIDUAL and name not in self._warned:
                self._warned.add(name)
                fixed = self.cfg.t1 is not None
                self.say(
                    f"[yellow]warning: {name}'s free phase ends {r:.2g} away from a fixed point (mean "
                    f"max|Δs| of its last step, {free_phase_text(self.cfg)}): EP gradients are estimated "
                    "off equilibrium. "
                    + (
                        "Raise --t1 or drop it (run to equilibrium), try --solver-mode async"
                        if fixed
                        else "It hits its step cap: keep its blocks contractive (a lower --feedback-gain), try "
                        "--solver-mode async"
                    )
                    + (", or lower --hardsigmoid-slope" if self._hardsigmoid() else "")
                    + ".[/]"
                )

    def _hardsigmoid(self) -> bool:
        pc = self.plan.config if self.plan is not None else None
        return pc is None or pc.activation == "hardsigmoid"
