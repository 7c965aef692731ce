"""Unit conversion of device readings to the profile's canonical UN/CEFACT unit.

Every numeric profile attribute declares its canonical unit (`unitCode`, UN/CEFACT Recommendation
20). What is stored, range-checked and published is always in that unit. A device that measures
in another unit says so IN THE PAYLOAD KEY, with the unit code after an `@`:

    {"temperature@FAH": 71.6, "co@59": 1.2, "level@CMT": 231}

is read as temperature 22.0 °C, CO 1.2 ppm → 1.374 mg/m³ (25 °C, 1 atm, M = 28.010 g/mol) and
level 2.31 m. Why the key and not a per-device setting: ThingsBoard payloads are flat key/value
maps, so the key is the only place a unit can travel with the value; the reading stays
self-describing in the dead-letter queue and on replay; a gateway can mix firmware that reports
in different units; and provisioning needs no new field. `@` is not allowed in profile keys.

A profile attribute lists the alternative units it accepts (`acceptedUnits`), and, for gases
reported as a mixing ratio (ppm "59", ppb "61"), its molar mass (`molarMass`, g/mol). A reading
in its canonical unit with the suffix (`pm25@GQ`) is accepted as is. Refusals (dead letters):

- `unknown_unit`: the code after `@` is not a unit CityOS can convert;
- `incompatible_unit`: a known unit that the attribute does not accept, or of another quantity
  (e.g. `temperature@KPA`), or an attribute without a unit (booleans, strings).

The conversion is pure (no I/O): `to_canonical(profile, key, value)`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

UNIT_SEPARATOR = "@"

# The molar volume of an ideal gas at 25 °C (298.15 K) and 101.325 kPa, in litres per mole: the
# reference conditions of ppm ↔ µg/m³ conversions in air-quality work (R·T/p = 24.465 L/mol).
MOLAR_VOLUME_25C = 8.314462618 * 298.15 / 101.325


@dataclass(frozen=True)
class Unit:
    code: str
    name: str
    quantity: str
    factor: float  # value in the quantity's base unit = value * factor + offset
    offset: float = 0.0


# Base units: CEL, GQ (µg/m³; mg/L is 1e6 of it), 61 (ppb), A97 (hPa), MTR, MQS, KMH, KWH, KWT, C62.
UNITS: dict[str, Unit] = {u.code: u for u in (
    Unit("CEL", "degree Celsius", "temperature", 1.0),
    Unit("FAH", "degree Fahrenheit", "temperature", 5 / 9, -32 * 5 / 9),
    Unit("KEL", "kelvin", "temperature", 1.0, -273.15),
    Unit("GQ", "microgram per cubic metre", "mass concentration", 1.0),
    Unit("GP", "milligram per cubic metre", "mass concentration", 1e3),
    Unit("H29", "microgram per litre", "mass concentration", 1e3),
    Unit("M1", "milligram per litre", "mass concentration", 1e6),
    Unit("GL", "gram per litre", "mass concentration", 1e9),
    Unit("61", "part per billion", "mixing ratio", 1.0),
    Unit("59", "part per million", "mixing ratio", 1e3),
    Unit("A97", "hectopascal", "pressure", 1.0),
    Unit("MBR", "millibar", "pressure", 1.0),
    Unit("PAL", "pascal", "pressure", 0.01),
    Unit("KPA", "kilopascal", "pressure", 10.0),
    Unit("BAR", "bar", "pressure", 1e3),
    Unit("MTR", "metre", "length", 1.0),
    Unit("CMT", "centimetre", "length", 0.01),
    Unit("MMT", "millimetre", "length", 0.001),
    Unit("KMT", "kilometre", "length", 1e3),
    Unit("INH", "inch", "length", 0.0254),
    Unit("FOT", "foot", "length", 0.3048),
    Unit("MQS", "cubic metre per second", "volume flow", 1.0),
    Unit("MQH", "cubic metre per hour", "volume flow", 1 / 3600),
    Unit("G51", "litre per second", "volume flow", 1e-3),
    Unit("KMH", "kilometre per hour", "speed", 1.0),
    Unit("MTS", "metre per second", "speed", 3.6),
    Unit("HM", "mile per hour", "speed", 1.609344),
    Unit("KNT", "knot", "speed", 1.852),
    Unit("KWH", "kilowatt hour", "energy", 1.0),
    Unit("WHR", "watt hour", "energy", 1e-3),
    Unit("MWH", "megawatt hour", "energy", 1e3),
    Unit("KWT", "kilowatt", "power", 1.0),
    Unit("WTT", "watt", "power", 1e-3),
    Unit("VLT", "volt", "voltage", 1.0),
    Unit("C62", "one", "ratio", 1.0),
    Unit("P1", "percent", "ratio", 0.01),
    Unit("2N", "decibel", "sound level", 1.0),
    Unit("NTU", "nephelometric turbidity unit", "turbidity", 1.0),
    Unit("5K", "counts per minute", "rate", 1.0),
    Unit("E27", "vehicles per hour", "rate", 1.0),
    Unit("SEC", "second", "time", 1.0),
    Unit("DD", "degree (angle)", "angle", 1.0),
)}


class UnitError(ValueError):
    """A reading whose unit cannot be turned into the canonical one; `reason` names the dead letter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _tidy(value: float) -> float:
    """Nine significant digits: 71.6 °F is 22.0 °C, not 22.000000000000004."""
    return float(f"{value:.9g}")


def convert(value: float, source: str, target: str, molar_mass: float | None = None) -> float:
    """`value` in unit `source` expressed in unit `target` (UN/CEFACT codes).

    Mixing ratios (ppm, ppb) and mass concentrations convert into each other at 25 °C and
    1 atm when the gas's molar mass (g/mol) is given.
    """
    src, dst = UNITS.get(source), UNITS.get(target)
    if src is None:
        raise UnitError("unknown_unit", f"unit {source[:16]!r} is not a known UN/CEFACT unit code")
    if dst is None:
        raise UnitError("unknown_unit", f"unit {target[:16]!r} is not a known UN/CEFACT unit code")
    base = value * src.factor + src.offset
    if src.quantity != dst.quantity:
        gases = {src.quantity, dst.quantity} == {"mixing ratio", "mass concentration"}
        if not gases:
            raise UnitError("incompatible_unit", f"{src.name} ({source}) is a {src.quantity}; "
                            f"it cannot become {dst.name} ({target}), a {dst.quantity}")
        if molar_mass is None or not molar_mass > 0:
            raise UnitError("incompatible_unit", f"converting {src.name} to {dst.name} needs the gas's molar mass")
        # ppb × M / Vm = µg/m³ (Vm in L/mol)
        base = base * molar_mass / MOLAR_VOLUME_25C if src.quantity == "mixing ratio" \
            else base * MOLAR_VOLUME_25C / molar_mass
    return _tidy((base - dst.offset) / dst.factor)


def split_key(key: str) -> tuple[str, str | None]:
    """"temperature@FAH" → ("temperature", "FAH"); a key without a unit → (key, None)."""
    if UNIT_SEPARATOR not in key:
        return key, None
    base, _, code = key.rpartition(UNIT_SEPARATOR)
    return base, code


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def to_canonical(profile: Any, key: str, value: Any) -> tuple[str, Any]:
    """The profile key and the value in the attribute's canonical unit for one payload entry.

    `profile` is an `iot.models.Profile` (its `raw` JSON is read for `acceptedUnits` and
    `molarMass`). Keys without a unit, keys the profile does not know and non-numeric values
    pass through unchanged: the ordinary validation reports them.
    """
    base, code = split_key(key)
    if code is None:
        return key, value
    attributes: Mapping[str, Any] = profile.raw.get("attributes", {})
    spec = attributes.get(base)
    if not isinstance(spec, Mapping):
        return key, value
    canonical = spec.get("unitCode")
    if not canonical:
        raise UnitError("incompatible_unit", f"{base!r} has no unit; {key!r} cannot be converted")
    if code == canonical:
        return base, value
    if code not in UNITS:
        raise UnitError("unknown_unit", f"{key!r}: {code[:16]!r} is not a known UN/CEFACT unit code")
    accepted = spec.get("acceptedUnits") or []
    if code not in accepted:
        also = f"; it also accepts {', '.join(accepted)}" if accepted else ""
        raise UnitError("incompatible_unit", f"{key!r}: {base} is reported in {canonical}{also}, not in {code}")
    if not _is_number(value):
        return base, value
    return base, convert(float(value), code, canonical, spec.get("molarMass"))


def check_profiles(profiles: Mapping[str, Any]) -> list[str]:
    """Problems in the profiles' unit declarations (empty when all is well): unknown codes, units
    that cannot be converted to the canonical one, `@` in a key."""
    problems: list[str] = []
    for profile in profiles.values():
        for key, spec in _keys_and_fields(profile.raw.get("attributes", {})):
            where = f"{profile.id}.{key}"
            if UNIT_SEPARATOR in key:
                problems.append(f"{where}: '@' is reserved for units")
            canonical = spec.get("unitCode")
            if canonical is not None and canonical not in UNITS:
                problems.append(f"{where}: unitCode {canonical} is not in cityos.iot.units.UNITS")
                continue
            for code in spec.get("acceptedUnits") or []:
                try:
                    convert(1.0, code, canonical, spec.get("molarMass"))
                except UnitError as exc:
                    problems.append(f"{where}: {exc.detail}")
    return problems


def _keys_and_fields(attributes: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """A profile's keys and its list keys' item fields (`key.field`), whose units are declared the same way."""
    found: list[tuple[str, Any]] = []
    for key, spec in attributes.items():
        found.append((key, spec))
        found.extend((f"{key}.{name}", field) for name, field in (spec.get("items") or {}).items())
    return found
