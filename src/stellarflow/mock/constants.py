"""Fixed physical and chemical inputs of the mock survey.

Everything here is a constant of the generative model: the elements and their atomic
data, the nucleosynthetic processes and which elements each one feeds, and the reference
star at which line strengths are specified. The numbers are rounded literature values
(solar abundances from Asplund et al. 2009, first ionisation energies from NIST) used only
to make the mock behave plausibly; nothing downstream should treat them as data.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

__all__ = [
    "ABUNDANCE_ELEMENTS",
    "ELEMENT_DATA",
    "LABEL_ERRORS",
    "PROCESSES",
    "PROCESS_VECTORS",
    "REFERENCE_STAR",
    "SPEED_OF_LIGHT_KMS",
    "ElementData",
    "abundance_label",
]

SPEED_OF_LIGHT_KMS: Final = 299_792.458


@dataclass(frozen=True)
class ElementData:
    """Atomic data of one element.

    Attributes:
        solar: solar photospheric abundance A(X) = log10(N_X / N_H) + 12, dex.
        mass: atomic mass, amu.
        chi_ion: first ionisation energy, eV.
        log_partition: log10(2 u_II / u_I), the partition-function term of the Saha
            equation (rounded, temperature independent).
        scatter: intrinsic star-to-star scatter of [X/Fe] at fixed process amplitudes, dex.
    """

    solar: float
    mass: float
    chi_ion: float
    log_partition: float
    scatter: float


# fmt: off
ELEMENT_DATA: Final = MappingProxyType({
    "H":  ElementData(12.00, 1.008, 13.60, 0.00, 0.0),
    "C":  ElementData(8.43, 12.011, 11.26, 0.30, 0.02),
    "N":  ElementData(7.83, 14.007, 14.53, 0.30, 0.03),
    "O":  ElementData(8.69, 15.999, 13.62, 0.30, 0.015),
    "Na": ElementData(6.24, 22.990, 5.14, 0.00, 0.03),
    "Mg": ElementData(7.60, 24.305, 7.65, 0.60, 0.01),
    "Al": ElementData(6.45, 26.982, 5.99, -0.48, 0.02),
    "Si": ElementData(7.51, 28.086, 8.15, 0.12, 0.01),
    "S":  ElementData(7.12, 32.065, 10.36, -0.05, 0.02),
    "K":  ElementData(5.03, 39.098, 4.34, 0.00, 0.02),
    "Ca": ElementData(6.34, 40.078, 6.11, 0.60, 0.015),
    "Ti": ElementData(4.95, 47.867, 6.83, 0.60, 0.02),
    "V":  ElementData(3.93, 50.942, 6.75, 0.18, 0.03),
    "Cr": ElementData(5.64, 51.996, 6.77, 0.08, 0.02),
    "Mn": ElementData(5.43, 54.938, 7.43, 0.37, 0.015),
    "Fe": ElementData(7.50, 55.845, 7.90, 0.48, 0.0),
    "Co": ElementData(4.99, 58.933, 7.88, 0.15, 0.025),
    "Ni": ElementData(6.22, 58.693, 7.64, -0.18, 0.01),
    "Cu": ElementData(4.19, 63.546, 7.73, 0.00, 0.03),
    "Ce": ElementData(1.58, 140.116, 5.54, 0.50, 0.03),
    "Nd": ElementData(1.42, 144.242, 5.53, 0.50, 0.03),
})
# fmt: on

ABUNDANCE_ELEMENTS: Final[tuple[str, ...]] = (
    "C",
    "N",
    "O",
    "Na",
    "Mg",
    "Al",
    "Si",
    "S",
    "K",
    "Ca",
    "Ti",
    "V",
    "Cr",
    "Mn",
    "Co",
    "Ni",
    "Cu",
    "Ce",
    "Nd",
)
"""Elements with an ``X_FE`` label (iron is ``FE_H``)."""


def abundance_label(element: str) -> str:
    """APOGEE allStar column of an element's abundance: ``"Mg"`` -> ``"MG_FE"``."""
    return "FE_H" if element == "Fe" else f"{element.upper()}_FE"


PROCESSES: Final[tuple[str, ...]] = ("cc", "ia", "agb", "odd")
"""Nucleosynthetic processes: core-collapse supernovae, Type Ia supernovae, AGB stars
(s-process), and a metallicity-dependent odd-Z yield channel (Na, Al, K, V, Cu)."""

# Fraction of each element's solar abundance made by each process (rows sum to 1).
# [X/H] = log10(sum_p A_p q_pX) with amplitudes A_p = 1 for the Sun.
# fmt: off
PROCESS_VECTORS: Final = MappingProxyType({
    "C":  {"cc": 0.60, "ia": 0.00, "agb": 0.40, "odd": 0.00},
    "N":  {"cc": 0.50, "ia": 0.00, "agb": 0.50, "odd": 0.00},
    "O":  {"cc": 1.00, "ia": 0.00, "agb": 0.00, "odd": 0.00},
    "Na": {"cc": 0.55, "ia": 0.00, "agb": 0.10, "odd": 0.35},
    "Mg": {"cc": 1.00, "ia": 0.00, "agb": 0.00, "odd": 0.00},
    "Al": {"cc": 0.60, "ia": 0.00, "agb": 0.00, "odd": 0.40},
    "Si": {"cc": 0.82, "ia": 0.18, "agb": 0.00, "odd": 0.00},
    "S":  {"cc": 0.85, "ia": 0.15, "agb": 0.00, "odd": 0.00},
    "K":  {"cc": 0.60, "ia": 0.00, "agb": 0.00, "odd": 0.40},
    "Ca": {"cc": 0.75, "ia": 0.25, "agb": 0.00, "odd": 0.00},
    "Ti": {"cc": 0.75, "ia": 0.25, "agb": 0.00, "odd": 0.00},
    "V":  {"cc": 0.55, "ia": 0.30, "agb": 0.00, "odd": 0.15},
    "Cr": {"cc": 0.50, "ia": 0.50, "agb": 0.00, "odd": 0.00},
    "Mn": {"cc": 0.30, "ia": 0.70, "agb": 0.00, "odd": 0.00},
    "Fe": {"cc": 0.50, "ia": 0.50, "agb": 0.00, "odd": 0.00},
    "Co": {"cc": 0.65, "ia": 0.25, "agb": 0.00, "odd": 0.10},
    "Ni": {"cc": 0.60, "ia": 0.40, "agb": 0.00, "odd": 0.00},
    "Cu": {"cc": 0.30, "ia": 0.20, "agb": 0.00, "odd": 0.50},
    "Ce": {"cc": 0.15, "ia": 0.00, "agb": 0.85, "odd": 0.00},
    "Nd": {"cc": 0.30, "ia": 0.00, "agb": 0.70, "odd": 0.00},
})
# fmt: on

# Measurement errors (dex, K for TEFF, km/s for the velocities) at S/N = 100 for a star at
# the reference temperature; they grow at low S/N and for warmer stars (weaker lines).
# fmt: off
LABEL_ERRORS: Final = MappingProxyType({
    "TEFF": 30.0, "LOGG": 0.04, "FE_H": 0.010,
    "C_FE": 0.020, "N_FE": 0.030, "O_FE": 0.020, "NA_FE": 0.090, "MG_FE": 0.015,
    "AL_FE": 0.025, "SI_FE": 0.015, "S_FE": 0.040, "K_FE": 0.030, "CA_FE": 0.020,
    "TI_FE": 0.030, "V_FE": 0.060, "CR_FE": 0.040, "MN_FE": 0.020, "CO_FE": 0.050,
    "NI_FE": 0.015, "CU_FE": 0.080, "CE_FE": 0.060, "ND_FE": 0.100,
    "VMICRO": 0.10, "VMACRO": 0.40,
})
# fmt: on

REFERENCE_STAR: Final = MappingProxyType(
    {"TEFF": 4500.0, "LOGG": 2.5, "FE_H": 0.0, "VMICRO": 1.5, "VMACRO": 5.0, "RESOLUTION": 22500.0}
)
"""The star at which line-list strengths (``log_ew_ref``, ``depth_ref``) are specified;
all [X/Fe] = 0."""
