"""Line lists: species codes, air/vacuum wavelengths, VALD and table files.

Every reader returns the **canonical line-list table**, sorted by wavelength:

==========  =======  ==========================================================
column      type     meaning
==========  =======  ==========================================================
wavelength  float64  vacuum Angstrom
species     str      ``"Fe 1"``, ``"Ce 2"`` for atoms (1 = neutral); ``"CN"``, ``"OH"``
element     str      the element the feature is attributed to (see below)
ion         int      1 neutral, 2 singly ionised, ...; 0 for molecules
loggf       float64  log10(g f); NaN if absent
chi         float64  lower-level excitation potential, eV; NaN if absent
==========  =======  ==========================================================

with ``table.meta["medium"] == "vacuum"``. An atom's element is the atom. A molecule's
element is the file's ``element`` column where given, else :data:`MOLECULE_ELEMENT`
(CN -> N, CO -> C, OH -> O, C2 -> C: the element each molecule is used to measure in the
H band), else the molecule's heaviest constituent other than hydrogen (TiO -> Ti,
FeH -> Fe, H2O -> O).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.table import MaskedColumn, Table

from stellarflow.errors import DataValidationError, FileFormatError
from stellarflow.io.atomic import atomic_path

__all__ = [
    "ELEMENTS",
    "LINELIST_COLUMNS",
    "MOLECULE_ELEMENT",
    "air_to_vacuum",
    "parse_species",
    "read_linelist",
    "vacuum_to_air",
    "write_linelist",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

# fmt: off
ELEMENTS: tuple[str, ...] = (
    "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S",
    "Cl", "Ar", "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga",
    "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd",
    "Ag", "Cd", "In", "Sn", "Sb", "Te", "I", "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Pm",
    "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W", "Re", "Os",
    "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Th", "Pa",
    "U",
)
# fmt: on
"""Element symbols by atomic number: ``ELEMENTS[Z - 1]``, hydrogen to uranium."""

MOLECULE_ELEMENT: dict[str, str] = {"CN": "N", "CO": "C", "OH": "O", "C2": "C"}
"""Default element of a molecular feature, as ASPCAP uses them: C from CO, N from CN, O from OH."""

LINELIST_COLUMNS = ("wavelength", "species", "element", "ion", "loggf", "chi")
"""Columns of the canonical line-list table, in order."""

AIR_VACUUM_MIN = 2000.0
"""Wavelengths below this (Angstrom) are vacuum by convention and never converted."""

_Z = {symbol: z for z, symbol in enumerate(ELEMENTS, start=1)}
_ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4, "V": 5, "VI": 6, "VII": 7, "VIII": 8, "IX": 9}
# All-capital molecule names that would otherwise read as element symbols (CO vs Co).
_CAPITAL_MOLECULES = frozenset({"CO", "CS", "HF"})
_NUMERIC_RE = re.compile(r"^(\d+)(?:\.(\d*))?$")
_ROMAN_RE = re.compile(r"^([A-Za-z]{1,2}?)\s*(I{1,3}|IV|VI{0,3}|IX)$")
_SPACED_RE = re.compile(r"^(\S+)\s+(\d+)$")
_FORMULA_RE = re.compile(r"^(?:[A-Z][a-z]?\d*)+$")
_VALD_COLUMNS_RE = re.compile(r"WL_(air|vac)\(([^)]*)\)")
_VALD_ENERGY_RE = re.compile(r"(E_low|Excit)\(([^)]*)\)")
_VALD_LINE_RE = re.compile(r"^\s*'[^']+'\s*,\s*[-+]?\d")
_VALD_COUNT_RE = re.compile(r"^\s*[-+\d.eE]+\s*,\s*[-+\d.eE]+\s*,\s*(\d+)\s*,")
_EV_PER_INVERSE_CM = (1 / u.cm).to(u.eV, equivalencies=u.spectral()).value
_MEDIA = {"vacuum": "vacuum", "vac": "vacuum", "air": "air"}
_ALIASES = {
    "wavelength": ("wavelength", "wave", "lambda"),
    "species": ("species",),
    "element": ("element",),
    "loggf": ("loggf", "log_gf"),
    "chi": ("chi", "ep", "e_low", "excitation"),
    "medium": ("medium",),
}


# --- species ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Species:
    name: str  # canonical: "Fe 1", "CN"
    element: str  # the atom, or a molecule's default attribution
    ion: int  # 0 for molecules
    atoms: tuple[str, ...]  # constituents


def _symbol(name: str) -> str | None:
    """An element symbol, tolerating all-capital or lower-case spellings (FE, fe)."""
    if name in _Z:
        return name
    if (name.isupper() and name not in _CAPITAL_MOLECULES) or name.islower():
        return name.capitalize() if name.capitalize() in _Z else None
    return None


def _formula(name: str) -> tuple[str, ...] | None:
    """Constituent atoms of a chemical formula such as ``"H2O"``, or None."""
    if not _FORMULA_RE.match(name):
        return None
    atoms: list[str] = []
    for symbol, count in re.findall(r"([A-Z][a-z]?)(\d*)", name):
        if symbol not in _Z or count == "0":
            return None
        atoms.extend([symbol] * int(count or 1))
    return tuple(atoms)


def _by_atoms(names: Sequence[str]) -> dict[tuple[str, ...], str]:
    """Map each molecule's sorted constituents to its name (order-free lookup)."""
    return {tuple(sorted(_formula(name) or ())): name for name in names}


_DEFAULT_ELEMENT = {
    atoms: MOLECULE_ELEMENT[name] for atoms, name in _by_atoms(MOLECULE_ELEMENT).items()
}
_KNOWN_NAMES = _by_atoms((*MOLECULE_ELEMENT, "CH", "NH", "TiO", "FeH", "MgH", "SiH", "H2O"))


def _atom(symbol: str, stage: int, text: str) -> _Species:
    if not 1 <= stage <= _Z[symbol] + 1:
        raise DataValidationError(
            f"species {text!r}: ionisation stage {stage} is impossible for {symbol} "
            f"(1 = neutral .. {_Z[symbol] + 1}); write e.g. '{symbol} 1' or '{symbol} 2'"
        )
    return _Species(f"{symbol} {stage}", symbol, stage, (symbol,))


def _molecule(name: str, atoms: tuple[str, ...]) -> _Species:
    default = _DEFAULT_ELEMENT.get(tuple(sorted(atoms)))
    heavy = [a for a in atoms if a != "H"] or ["H"]
    element = default or max(heavy, key=_Z.__getitem__)
    return _Species(name, element, 0, atoms)


def _from_code(whole: str, frac: str, text: str) -> _Species:
    """Kurucz (26.01) and MOOG (26.1, 607.0, 56.1135) numeric species codes."""
    charge = int(frac) if len(frac) <= 2 and frac else int(frac[:1] or 0)
    z = int(whole)
    if 1 <= z <= len(ELEMENTS):
        return _atom(ELEMENTS[z - 1], charge + 1, text)
    digits = whole if len(whole) % 2 == 0 else "0" + whole
    zs = [int(digits[i : i + 2]) for i in range(0, len(digits), 2)]
    if z < 100 or not all(1 <= k <= len(ELEMENTS) for k in zs):
        raise DataValidationError(
            f"species code {text!r} is not an element (1-{len(ELEMENTS)}) or a molecule "
            "code such as 607.0 (CN)"
        )
    if charge != 0:
        raise DataValidationError(f"species {text!r}: molecular ions are not supported")
    atoms = tuple(ELEMENTS[k - 1] for k in zs)
    counts: dict[str, int] = {}
    for atom in atoms:
        counts[atom] = counts.get(atom, 0) + 1
    name = "".join(a + (str(n) if n > 1 else "") for a, n in counts.items())
    return _molecule(_KNOWN_NAMES.get(tuple(sorted(atoms)), name), atoms)


def _parse(text: str) -> _Species:
    """Parse a species string (see :func:`parse_species`)."""
    raw = str(text).strip().strip("'\"").strip()
    match = _NUMERIC_RE.match(raw)
    if match:
        return _from_code(match.group(1), match.group(2) or "", raw)
    match = _ROMAN_RE.match(raw)
    if match and _symbol(match.group(1)):
        return _atom(_symbol(match.group(1)) or "", _ROMAN[match.group(2)], raw)
    match = _SPACED_RE.match(raw)
    name, stage = (match.group(1), int(match.group(2))) if match else (raw, None)
    symbol = _symbol(name)
    if symbol is not None:
        return _atom(symbol, 1 if stage is None else stage, raw)
    atoms = _formula(name)
    if atoms is None or len(atoms) < 2:
        raise DataValidationError(
            f"species {raw!r} is not an element with an ionisation stage or a molecule; "
            "write e.g. 'Fe 1', 'Fe II', 'FeII', '26.01', 'CN' or 'C2'"
        )
    if stage not in (None, 1):
        raise DataValidationError(f"species {raw!r}: molecular ions are not supported")
    return _molecule(name, atoms)


def parse_species(text: str) -> tuple[str, int]:
    """Element symbol and ionisation stage of a species string.

    Accepted spellings: ``"Fe 1"``, ``"Fe I"``, ``"FeII"``, ``"Fe"`` (neutral),
    ``"Ce 2"``; molecules ``"CN"``, ``"C2"``, ``"TiO"`` (VALD's ``"CN 1"`` too); Kurucz and
    MOOG codes ``"26.00"``/``"26.01"``/``"26.1"`` and ``"607.0"`` (CN). Digits written
    straight after a symbol are atom counts (``"C2"`` is the molecule; C II is
    ``"C 2"``/``"C II"``). Symbols are case-sensitive (``"CO"`` is carbon monoxide,
    ``"Co"`` cobalt); all-capital atoms such as ``"FE 1"`` are accepted.

    Args:
        text: the species.

    Returns:
        ``(element, ion)``: ion 1 = neutral, 2 = singly ionised, ...; 0 for a molecule,
        whose element is its default attribution (see the module docstring).

    Raises:
        DataValidationError: not an element up to U, an impossible stage, or a molecular
            ion.
    """
    species = _parse(text)
    return species.element, species.ion


# --- air and vacuum -----------------------------------------------------------------------


def _positive(wavelength: object) -> np.ndarray:
    wave = np.array(wavelength, dtype=np.float64)
    if not np.all(np.isfinite(wave)) or np.any(wave <= 0):
        raise DataValidationError(
            "wavelengths must be finite and positive (Angstrom); found "
            f"{int(np.sum(~(np.isfinite(wave) & (wave > 0))))} bad values"
        )
    return wave


def vacuum_to_air(wavelength: object) -> np.ndarray:
    """Air wavelengths from vacuum ones (IAU standard, Morton 2000; as used by VALD).

    ``s = 1e4 / lambda_vac``;
    ``n = 1 + 8.34254e-5 + 2.406147e-2 / (130 - s^2) + 1.5998e-4 / (38.9 - s^2)``;
    ``lambda_air = lambda_vac / n``. Wavelengths below 2000 Angstrom are returned unchanged.

    Args:
        wavelength: `(...)`, vacuum Angstrom, finite and positive.

    Returns:
        `(...)` float64, air Angstrom.

    Raises:
        DataValidationError: non-finite or non-positive wavelengths.
    """
    vac = _positive(wavelength)
    s2 = (1e4 / vac) ** 2
    n = 1.0 + 8.34254e-5 + 2.406147e-2 / (130.0 - s2) + 1.5998e-4 / (38.9 - s2)
    return np.where(vac >= AIR_VACUUM_MIN, vac / n, vac)


def air_to_vacuum(wavelength: object) -> np.ndarray:
    """Vacuum wavelengths from air ones (N. Piskunov's inversion, as used by VALD).

    ``s = 1e4 / lambda_air``;
    ``n = 1 + 8.336624212083e-5 + 2.408926869968e-2 / (130.1065924522 - s^2)
    + 1.599740894897e-4 / (38.92568793293 - s^2)``; ``lambda_vac = lambda_air * n``.
    It inverts :func:`vacuum_to_air` to ~1e-8 Angstrom over 2000-30000 Angstrom.
    Wavelengths below 2000 Angstrom are returned unchanged.

    Args:
        wavelength: `(...)`, air Angstrom, finite and positive.

    Returns:
        `(...)` float64, vacuum Angstrom.

    Raises:
        DataValidationError: non-finite or non-positive wavelengths.
    """
    air = _positive(wavelength)
    s2 = (1e4 / air) ** 2
    n = (
        1.0
        + 8.336624212083e-5
        + 2.408926869968e-2 / (130.1065924522 - s2)
        + 1.599740894897e-4 / (38.92568793293 - s2)
    )
    return np.where(air >= AIR_VACUUM_MIN, air * n, air)


def _medium(value: object, where: str) -> str:
    key = str(value).strip().lower()
    if key not in _MEDIA:
        raise DataValidationError(f"{where}: medium must be 'vacuum' or 'air', got {value!r}")
    return _MEDIA[key]


def _resolve_medium(argument: str | None, stated: str | None, path: Path) -> str | None:
    """The argument or the file's statement; both given, they must agree."""
    chosen = None if argument is None else _medium(argument, "medium argument")
    if chosen and stated and chosen != stated:
        raise DataValidationError(
            f"{path} states {stated} wavelengths but medium={argument!r} was passed; drop "
            "the argument or correct the file"
        )
    return chosen or stated


# --- the canonical table ------------------------------------------------------------------


def _canonical(
    path: Path,
    wavelength: np.ndarray,
    air: np.ndarray,
    species: Sequence[str],
    elements: Sequence[str] | None,
    loggf: np.ndarray,
    chi: np.ndarray,
    where: Sequence[str],
) -> Table:
    """Parse species, attribute elements, convert air rows to vacuum, sort."""
    cache: dict[str, _Species] = {}
    names, attributed, ions = [], [], []
    for i, text in enumerate(species):
        try:
            parsed = cache.get(text) or cache.setdefault(text, _parse(text))
        except DataValidationError as err:
            raise FileFormatError(f"{path}, {where[i]}: {err}") from None
        element = parsed.element
        given = "" if elements is None else str(elements[i]).strip()
        if given and given != element:
            if parsed.ion > 0 or given not in parsed.atoms:
                raise FileFormatError(
                    f"{path}, {where[i]}: element {given!r} does not fit species "
                    f"{parsed.name!r}; an atom's element is the atom, a molecule's one of "
                    f"its constituents {sorted(set(parsed.atoms))}"
                )
            element = given
        names.append(parsed.name)
        attributed.append(element)
        ions.append(parsed.ion)
    try:
        wave = _positive(wavelength)
    except DataValidationError as err:
        raise FileFormatError(f"{path}: {err}") from None
    wave[air] = air_to_vacuum(wave[air])
    order = np.argsort(wave, kind="stable")
    table = Table(
        [
            wave * u.AA,
            np.array(names, dtype=str),
            np.array(attributed, dtype=str),
            np.array(ions, dtype=np.int64),
            np.asarray(loggf, dtype=np.float64),
            np.asarray(chi, dtype=np.float64) * u.eV,
        ],
        names=LINELIST_COLUMNS,
        meta={"medium": "vacuum"},
    )
    return table[order]


def _read_vald(path: Path, lines: list[str], medium: str | None) -> Table:
    """Parse a VALD3 extract (stellar or all; short or long format)."""
    header_at = next(i for i, line in enumerate(lines) if _VALD_COLUMNS_RE.search(line))
    header = lines[header_at]
    wave_match = _VALD_COLUMNS_RE.search(header)
    energy_match = _VALD_ENERGY_RE.search(header)
    if wave_match is None or energy_match is None:
        raise FileFormatError(f"{path}: VALD column header without wavelength/energy columns")
    scale = {"A": 1.0, "nm": 10.0}.get(wave_match.group(2))
    energy_scale = {"eV": 1.0, "cm^-1": _EV_PER_INVERSE_CM}.get(energy_match.group(2))
    if scale is None or energy_scale is None:
        raise FileFormatError(
            f"{path}: VALD units {wave_match.group(0)}, {energy_match.group(0)} are not "
            "supported; extract with wavelengths in Angstrom or nm and energies in eV or cm^-1"
        )
    stated = "air" if wave_match.group(1) == "air" else "vacuum"
    chosen = _resolve_medium(medium, stated, path)
    if energy_match.group(1) == "E_low":  # long format: species, wl, loggf, E_low, ...
        i_loggf, i_chi = 2, 3
    else:  # short format: species, wl, Excit, [Vmic,] loggf, ...
        i_loggf, i_chi = (4 if "Vmic" in header else 3), 2
    species, values, where = [], [], []
    for number, line in enumerate(lines[header_at + 1 :], start=header_at + 2):
        if not _VALD_LINE_RE.match(line):
            continue
        fields = next(csv.reader([line], quotechar="'", skipinitialspace=True))
        try:
            values.append((float(fields[1]), float(fields[i_loggf]), float(fields[i_chi])))
        except (ValueError, IndexError):
            raise FileFormatError(
                f"{path}, line {number}: cannot read VALD line {line.strip()!r}"
            ) from None
        species.append(fields[0])
        where.append(f"line {number}")
    announced = [m for m in map(_VALD_COUNT_RE.match, lines[:header_at]) if m]
    if announced and int(announced[0].group(1)) != len(species):
        raise FileFormatError(
            f"{path}: the VALD header announces {announced[0].group(1)} lines but "
            f"{len(species)} were found; the file looks truncated, extract it again"
        )
    if not species:
        raise FileFormatError(f"{path}: a VALD header but no line data")
    data = np.array(values, dtype=np.float64)
    air = np.full(len(species), chosen == "air")
    return _canonical(
        path,
        data[:, 0] * scale,
        air,
        species,
        None,
        data[:, 1],
        data[:, 2] * energy_scale,
        where,
    )


def _column(table: Table, key: str) -> str | None:
    lower = {name.lower(): name for name in table.colnames}
    return next((lower[a] for a in _ALIASES[key] if a in lower), None)


def _values(table: Table, name: str | None, unit: u.Unit | None = None) -> np.ndarray:
    """A numeric column as float64 (NaN where absent/masked), converted to ``unit``."""
    if name is None:
        return np.full(len(table), np.nan)
    column = table[name]
    data = column.filled(np.nan) if isinstance(column, MaskedColumn) else column
    values = np.asarray(data, dtype=np.float64)
    if unit is not None and column.unit is not None:
        try:
            values = (values * column.unit).to_value(unit, equivalencies=u.spectral())
        except u.UnitsError:
            raise FileFormatError(
                f"column {name!r} has unit {column.unit}; expected one convertible to {unit}"
            ) from None
    return values


def _stated_medium(table: Table, path: Path) -> str | None:
    """Medium from ECSV meta or a ``# medium: air`` comment line."""
    if "medium" in table.meta:
        return _medium(table.meta["medium"], f"{path} meta")
    for comment in table.meta.get("comments", []):
        match = re.match(r"\s*medium\s*[:=]\s*(\w+)", str(comment), re.IGNORECASE)
        if match:
            return _medium(match.group(1), f"{path} comment")
    return None


def _read_table(path: Path, fmt: str, medium: str | None) -> Table:
    try:
        extra = {"comment": "#"} if fmt == "ascii.csv" else {}
        table = Table.read(path, format=fmt, **extra)
    except Exception as err:  # astropy's readers raise many types on malformed files
        raise FileFormatError(
            f"{path} cannot be read as {fmt} ({type(err).__name__}: {err})"
        ) from None
    table.convert_bytestring_to_unicode()
    names = {key: _column(table, key) for key in _ALIASES}
    if names["wavelength"] is None or names["species"] is None:
        raise FileFormatError(
            f"{path}: a line list needs columns 'wavelength' (Angstrom) and 'species'; "
            f"found {table.colnames}"
        )
    if isinstance(table[names["wavelength"]], MaskedColumn) and np.any(
        table[names["wavelength"]].mask
    ):
        raise FileFormatError(f"{path}: some rows have no wavelength")
    chosen = _resolve_medium(medium, _stated_medium(table, path), path)
    if names["medium"] is not None:
        rows = [_medium(v, f"{path} medium column") for v in table[names["medium"]]]
        if chosen is not None and set(rows) != {chosen}:
            raise DataValidationError(
                f"{path}: the medium column says {sorted(set(rows))} but {chosen} was "
                "stated; keep one statement of the medium"
            )
        air = np.array(rows) == "air"
    elif chosen is None:
        raise DataValidationError(
            f"{path} does not say whether its wavelengths are in vacuum or air; pass "
            "medium='vacuum' or medium='air' (or add a 'medium' column, a '# medium: air' "
            "comment, or ECSV meta 'medium')"
        )
    else:
        air = np.full(len(table), chosen == "air")
    species = [str(s) for s in table[names["species"]]]
    elements = None
    if names["element"] is not None:
        column = table[names["element"]]
        filled = column.filled("") if isinstance(column, MaskedColumn) else column
        elements = [str(e) for e in filled]
    return _canonical(
        path,
        _values(table, names["wavelength"], u.AA),
        air,
        species,
        elements,
        _values(table, names["loggf"]),
        _values(table, names["chi"], u.eV),
        [f"row {i + 1}" for i in range(len(table))],
    )


def read_linelist(path: PathLike, *, medium: str | None = None) -> Table:
    """Read a line list into the canonical table (vacuum Angstrom, sorted).

    Formats: VALD3 extracts (``extract stellar`` or ``extract all``, short or long; the
    column header's ``WL_air``/``WL_vac`` states the medium; reference and footer lines
    are skipped), and ECSV/CSV with columns ``wavelength`` and ``species`` and optionally
    ``element``, ``loggf``, ``chi`` (eV), ``medium``. A table's medium comes from the
    argument, else ECSV meta ``medium``, else a ``# medium: air`` comment, else a
    ``medium`` column (per row). Air wavelengths are converted with :func:`air_to_vacuum`.

    Args:
        path: the file.
        medium: ``"vacuum"`` or ``"air"``, if the file does not say (it must agree if it
            does).

    Returns:
        The canonical line-list table (see the module docstring).

    Raises:
        FileFormatError: unreadable, truncated or malformed files; bad species.
        DataValidationError: the medium is unknown, or stated in conflicting ways.
    """
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path} does not exist or is not a file")
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as err:
        raise FileFormatError(f"{path} cannot be read ({err})") from None
    if any(_VALD_COLUMNS_RE.search(line) for line in lines[:20]):
        return _read_vald(path, lines, medium)
    name = path.name.lower()
    if name.endswith((".ecsv", ".csv")):
        return _read_table(path, "ascii.ecsv" if name.endswith(".ecsv") else "ascii.csv", medium)
    raise FileFormatError(
        f"{path} is neither a VALD extract (no WL_air/WL_vac column header) nor a .ecsv or "
        ".csv table; convert it to one of these"
    )


def write_linelist(table: Table, path: PathLike, *, overwrite: bool = False) -> Path:
    """Write a canonical line-list table as ECSV, atomically.

    Args:
        table: a table with the canonical columns (``loggf``/``chi`` may be absent) and
            ``meta["medium"] == "vacuum"``.
        path: the output ``.ecsv`` file.
        overwrite: replace an existing file.

    Returns:
        The path written.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        DataValidationError: missing columns, or a medium other than vacuum.
    """
    missing = [c for c in ("wavelength", "species", "element", "ion") if c not in table.colnames]
    if missing:
        raise DataValidationError(f"line list lacks columns {missing}; build it with read_linelist")
    stated = table.meta.get("medium")
    if stated is None or _medium(stated, "table meta") != "vacuum":
        raise DataValidationError(
            f"line list meta medium is {stated!r}; expected 'vacuum': convert with "
            "air_to_vacuum and set table.meta['medium'] = 'vacuum'"
        )
    nan = np.full(len(table), np.nan)
    out = Table(
        [
            _values(table, "wavelength", u.AA) * u.AA,
            np.asarray(table["species"], dtype=str),
            np.asarray(table["element"], dtype=str),
            np.asarray(table["ion"], dtype=np.int64),
            _values(table, "loggf") if "loggf" in table.colnames else nan,
            (_values(table, "chi", u.eV) if "chi" in table.colnames else nan) * u.eV,
        ],
        names=LINELIST_COLUMNS,
        meta={"medium": "vacuum"},
    )
    out = out[np.argsort(_positive(out["wavelength"].value), kind="stable")]
    with atomic_path(path, overwrite) as tmp:
        out.write(tmp, format="ascii.ecsv", overwrite=True)
    logger.info("wrote %d lines to %s", len(out), path)
    return Path(path)
