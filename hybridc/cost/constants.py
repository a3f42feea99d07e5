"""Per-operation energy constants of the `hybridc report` cost model, each with its source, and the loader
that lets a user config file (JSON or YAML) override them.

Why constants with sources: a cost model is only as credible as its per-operation numbers, and those
depend on technology node, precision and circuit choices. So every number carries the string that says
where it comes from, the report prints it next to the value, and a config file replaces any of them:

    # energy.yaml                                  # energy.json
    analog_mac_pj: 0.05                            {"adc_enob": {"value": 6, "source": "my 6-bit SAR"},
    adc_enob: {value: 6, source: "my 6-bit SAR"}    "digital_precision": "int8"}

Unknown keys are rejected (a typo must not silently leave a default in place). A bare number keeps the
default's unit and records the file as its source.

Technology assumptions of the defaults (mixed on purpose, as in the literature the numbers come from):
- analog side: a non-volatile resistive crossbar (PCM/RRAM class) with 8-bit inputs and outputs, 14-28 nm
  periphery; array energy is a device-level order-of-magnitude estimate, converters are counted separately;
- digital side: Horowitz's 45 nm, 0.9 V table (ISSCC 2014). Newer nodes are roughly 2-5x cheaper per op,
  so the defaults favour neither side by much; override `digital_*` for your node.
None of the defaults is a measurement of a specific chip; treat results as order-of-magnitude estimates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hybridc.errors import HybridcError
from hybridc.finite import FiniteFloat

DigitalPrecision = Literal["fp32", "fp16", "int32", "int8"]

_HOROWITZ = (
    "M. Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014, "
    "energy table for 45 nm, 0.9 V"
)

#: Horowitz ISSCC 2014 (45 nm, 0.9 V): (add, mult) energy in pJ per operation.
HOROWITZ_45NM: dict[str, tuple[float, float]] = {
    "fp32": (0.9, 3.7),
    "fp16": (0.4, 1.1),
    "int32": (0.1, 3.1),
    "int8": (0.03, 0.2),
}


class ConfigError(HybridcError):
    """A constants file that cannot be read or does not validate."""


class Constant(BaseModel):
    """One number of the cost model, its unit, and where it comes from."""

    model_config = ConfigDict(extra="forbid")

    value: FiniteFloat = Field(ge=0)
    unit: str
    source: str


def _c(value: float, unit: str, source: str) -> Constant:
    return Constant(value=value, unit=unit, source=source)


class EnergyConstants(BaseModel):
    """All constants of the cost model (defaults below; see the module docstring for the assumptions)."""

    model_config = ConfigDict(extra="forbid")

    analog_mac_pj: Constant = _c(
        0.01,
        "pJ per signed MAC (array only)",
        "Order of magnitude, device-level estimate for a PCM/RRAM crossbar: read voltage ~0.2 V across "
        "~1-10 uS for ~10-100 ns gives ~1-100 fJ per device read; 10 fJ per signed weight (both devices of a "
        "differential pair), ADC/DAC excluded (counted separately). Typical read conditions: Sebastian et al., "
        "'Memory devices and applications for in-memory computing', Nat. Nanotechnol. (2020). "
        "For scale, a whole measured chip incl. ADCs, digital periphery and communication is ~20x higher: IBM "
        "HERMES 64-core PCM chip, 14 nm, 9.76 TOPS/W at 8-bit I/O (~0.2 pJ/MAC), Le Gallo et al., "
        "Nat. Electron. (2023).",
    )
    adc_walden_fom_fj: Constant = _c(
        20.0,
        "fJ per conversion-step (Walden FoM = P / (2^ENOB * f_s))",
        "Order of magnitude from B. Murmann, 'ADC Performance Survey 1997-present' (ISSCC & VLSI data), "
        "https://github.com/bmurmann/ADC-survey: the best Walden FoMs are ~1 fJ/conv-step at low rates, "
        "compact ~0.1-1 GS/s converters as shared by crossbar columns are typically 10-100 fJ/conv-step.",
    )
    adc_enob: Constant = _c(
        7.0,
        "effective bits",
        "Assumption: 8-bit nominal ADC (~7 ENOB), the usual analog-IMC output precision "
        "(e.g. 8-bit I/O in the HERMES chip, Le Gallo et al. 2023).",
    )
    dac_pj: Constant = _c(
        0.2,
        "pJ per conversion",
        "Order-of-magnitude estimate (no survey): 8-bit charge-redistribution DAC, 2^8 unit caps x ~1 fF x "
        "(0.8 V)^2 ~ 0.16 pJ, plus driving one crossbar row; IMC energy breakdowns typically put input "
        "drivers/DACs well below the ADCs.",
    )
    digital_precision: DigitalPrecision = "fp32"
    digital_add_pj: Constant | None = Field(
        None, description="override; default from `digital_precision` in Horowitz's 45 nm table"
    )
    digital_mult_pj: Constant | None = Field(
        None, description="override; default from `digital_precision` in Horowitz's 45 nm table"
    )
    memory_access_pj: Constant = _c(
        10.0,
        "pJ per 32-bit word (on-chip SRAM)",
        f"{_HOROWITZ}: 64-bit read from a 32 KB SRAM ~20 pJ (8 KB: 10 pJ, 1 MB: 100 pJ; DRAM 1.3-2.6 nJ), "
        "halved for a 32-bit word. Used only with --memory.",
    )
    dhn_devices_per_weight: Constant = _c(
        2.0,
        "devices per signed weight",
        "hybridc assumption: DHN weights are signed and stored as a differential pair G+ - G- (two devices, "
        "so two physical arrays per logical tile). Set to 1 for a signed-device/reference-column scheme. "
        "DRN conductances are already non-negative (doubled inputs): always 1.",
    )

    # ---- derived per-operation energies -----------------------------------------------------------------
    def add_pj(self) -> Constant:
        """Energy of one digital add (override or Horowitz 45 nm for `digital_precision`)."""
        if self.digital_add_pj is not None:
            return self.digital_add_pj
        return _c(HOROWITZ_45NM[self.digital_precision][0], f"pJ per {self.digital_precision} add", _HOROWITZ)

    def mult_pj(self) -> Constant:
        """Energy of one digital multiply (override or Horowitz 45 nm for `digital_precision`)."""
        if self.digital_mult_pj is not None:
            return self.digital_mult_pj
        return _c(
            HOROWITZ_45NM[self.digital_precision][1], f"pJ per {self.digital_precision} mult", _HOROWITZ
        )

    @property
    def e_flop_pj(self) -> float:
        """Digital energy per FLOP: a MAC is one multiply plus one add = 2 FLOPs, so (add + mult) / 2."""
        return (self.add_pj().value + self.mult_pj().value) / 2

    @property
    def e_adc_pj(self) -> float:
        """Energy per ADC conversion: Walden FoM x 2^ENOB."""
        return self.adc_walden_fom_fj.value * 2**self.adc_enob.value / 1000.0

    @property
    def e_dac_pj(self) -> float:
        return self.dac_pj.value

    @property
    def e_mac_pj(self) -> float:
        return self.analog_mac_pj.value

    @property
    def e_mem_pj(self) -> float:
        return self.memory_access_pj.value

    def table(self) -> dict[str, Constant]:
        """Every constant in effect (digital add/mult resolved), for printing and the JSON report."""
        out = {k: getattr(self, k) for k in ("analog_mac_pj", "adc_walden_fom_fj", "adc_enob", "dac_pj")}
        out["digital_add_pj"] = self.add_pj()
        out["digital_mult_pj"] = self.mult_pj()
        out["memory_access_pj"] = self.memory_access_pj
        out["dhn_devices_per_weight"] = self.dhn_devices_per_weight
        out["derived: e_adc_pj"] = _c(
            round(self.e_adc_pj, 6), "pJ per conversion", "adc_walden_fom_fj x 2^adc_enob"
        )
        out["derived: e_flop_pj"] = _c(
            self.e_flop_pj,
            "pJ per FLOP",
            "(digital_add_pj + digital_mult_pj) / 2: a MAC = 1 mult + 1 add = 2 FLOPs",
        )
        return out


class _ConstantOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: FiniteFloat = Field(ge=0)
    unit: str | None = None
    source: str | None = None


_Value = Annotated[FiniteFloat, Field(ge=0)] | _ConstantOverride


class ConstantsFile(BaseModel):
    """What a user constants file may contain: any subset of the constants, as a number or as
    {value, unit?, source?}; `digital_precision` as fp32|fp16|int32|int8. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    analog_mac_pj: _Value | None = None
    adc_walden_fom_fj: _Value | None = None
    adc_enob: _Value | None = None
    dac_pj: _Value | None = None
    digital_precision: DigitalPrecision | None = None
    digital_add_pj: _Value | None = None
    digital_mult_pj: _Value | None = None
    memory_access_pj: _Value | None = None
    dhn_devices_per_weight: _Value | None = None


def _read_mapping(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read constants file {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        raise ConfigError(
            f"constants file {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"constants file {path} must hold a mapping of constant names to values")
    return data


def apply_overrides(base: EnergyConstants, data: dict, origin: str = "config") -> EnergyConstants:
    """`base` with the entries of `data` (validated as a ConstantsFile) replacing its constants."""
    try:
        parsed = ConstantsFile.model_validate(data)
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        known = ", ".join(ConstantsFile.model_fields)
        raise ConfigError(f"invalid constants in {origin}: {msgs} (known keys: {known})") from None
    fields: dict = {}
    for name in parsed.model_fields_set:
        val = getattr(parsed, name)
        if name == "digital_precision":
            fields[name] = val
            continue
        old = getattr(base, name)
        if name == "digital_add_pj" and old is None:
            old = base.add_pj()
        if name == "digital_mult_pj" and old is None:
            old = base.mult_pj()
        if isinstance(val, _ConstantOverride):
            fields[name] = Constant(
                value=val.value, unit=val.unit or old.unit, source=val.source or f"user override ({origin})"
            )
        else:
            fields[name] = Constant(value=float(val), unit=old.unit, source=f"user override ({origin})")
    devices = fields.get("dhn_devices_per_weight")
    if devices is not None and (devices.value < 1 or not float(devices.value).is_integer()):
        raise ConfigError(
            f"invalid constants in {origin}: dhn_devices_per_weight must be a whole number >= 1"
        )
    return base.model_copy(update=fields)


def load_constants(
    path: str | Path | None = None, digital_precision: DigitalPrecision | None = None
) -> EnergyConstants:
    """The default constants, then `digital_precision` (if given), then the overrides in `path` (if given)."""
    consts = EnergyConstants()
    if digital_precision is not None:
        consts = consts.model_copy(update={"digital_precision": digital_precision})
    if path is not None:
        p = Path(path)
        consts = apply_overrides(consts, _read_mapping(p), origin=p.name)
    return consts
