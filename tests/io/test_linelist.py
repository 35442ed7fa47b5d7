"""Line lists: species parsing, air/vacuum conversion, VALD and table files, round trips."""

# The VALD fixtures reproduce VALD's fixed-width lines verbatim, so long lines stay.
# ruff: noqa: E501

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.table import Table
from hypothesis import given, settings
from hypothesis import strategies as st

from stellarflow.errors import DataValidationError, FileFormatError, OutputExistsError
from stellarflow.io.linelist import (
    ELEMENTS,
    LINELIST_COLUMNS,
    air_to_vacuum,
    parse_species,
    read_linelist,
    vacuum_to_air,
    write_linelist,
)

# --- species ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Fe 1", ("Fe", 1)),
        ("Fe I", ("Fe", 1)),
        ("FeII", ("Fe", 2)),
        ("Fe", ("Fe", 1)),
        ("Ce 2", ("Ce", 2)),
        ("Co 1", ("Co", 1)),
        ("FE 1", ("Fe", 1)),
        ("U 2", ("U", 2)),
        ("26.00", ("Fe", 1)),
        ("26.01", ("Fe", 2)),
        ("26.1", ("Fe", 2)),
        ("56.1135", ("Ba", 2)),
        ("CN", ("N", 0)),
        ("CN 1", ("N", 0)),
        ("CO", ("C", 0)),
        ("OH", ("O", 0)),
        ("C2", ("C", 0)),
        ("607.0", ("N", 0)),
        ("108.0", ("O", 0)),
        ("606.0", ("C", 0)),
        ("TiO", ("Ti", 0)),
        ("FeH", ("Fe", 0)),
        ("H2O", ("O", 0)),
    ],
)
def test_parse_species(text: str, expected: tuple[str, int]) -> None:
    assert parse_species(text) == expected


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("Xx 1", "is not an element"),
        ("", "is not an element"),
        ("Fe1", "is not an element"),
        ("Fe 0", "stage 0 is impossible"),
        ("H 3", "stage 3 is impossible"),
        ("93.00", "is not an element"),
        ("607.1", "molecular ions"),
        ("CN 2", "molecular ions"),
    ],
)
def test_parse_species_rejects(text: str, phrase: str) -> None:
    with pytest.raises(DataValidationError, match=phrase):
        parse_species(text)


ROMAN = {1: "I", 2: "II", 3: "III"}


@settings(max_examples=150, deadline=None)
@given(z=st.integers(1, len(ELEMENTS)), data=st.data())
def test_parse_species_spellings_agree(z: int, data: st.DataObject) -> None:
    symbol = ELEMENTS[z - 1]
    stage = data.draw(st.integers(1, min(3, z + 1)))
    spellings = [
        f"{symbol} {stage}",
        f"{symbol} {ROMAN[stage]}",
        f"{symbol}{ROMAN[stage]}",
        f"{z}.{stage - 1:02d}",
        f"{z}.{stage - 1}",
    ]
    for text in spellings:
        assert parse_species(text) == (symbol, stage), text


# --- air and vacuum -----------------------------------------------------------------------


def test_air_to_vacuum_known_lines() -> None:
    # H-alpha and Na D2: air 6562.80 / 5889.950 A are vacuum 6564.61 / 5891.583 A.
    np.testing.assert_allclose(air_to_vacuum([6562.80, 5889.950]), [6564.61, 5891.583], atol=0.01)
    # In the H band the shift is ~4.1 A (n - 1 ~ 2.73e-4).
    assert 4.0 < float(air_to_vacuum(15000.0)) - 15000.0 < 4.2
    np.testing.assert_array_equal(air_to_vacuum([1500.0]), [1500.0])  # vacuum below 2000 A


@settings(max_examples=300, deadline=None)
@given(st.floats(3000.0, 25000.0))
def test_air_vacuum_round_trip(wavelength: float) -> None:
    assert abs(float(vacuum_to_air(air_to_vacuum(wavelength))) - wavelength) < 1e-4
    assert abs(float(air_to_vacuum(vacuum_to_air(wavelength))) - wavelength) < 1e-4
    assert float(air_to_vacuum(wavelength)) > wavelength


def test_air_vacuum_rejects_bad_values() -> None:
    with pytest.raises(DataValidationError, match="finite and positive"):
        air_to_vacuum([5000.0, -1.0])
    with pytest.raises(DataValidationError, match="1 bad values"):
        vacuum_to_air([np.nan, 5000.0])


# --- VALD ---------------------------------------------------------------------------------

VALD_SHORT = """\
 15000.00000,  15010.00000,     4,   1234,    2.0, Wavelength region, lines selected, lines processed, Vmicro
                                                 Damping parameters   Lande  Central
Spec Ion       WL_air(A) Excit(eV) Vmic log gf*  Rad.   Stark  Waals  factor  depth  Reference
'Fe 1',       15005.6000,  5.5870, 2.0, -0.500, 8.190,-5.490,-7.530, 1.500, 0.250, '  1 wl:K14   1 K14   1 K14   1 K14   1 K14   1 K14   1 K14 Fe            '
'CN 1',       15001.2000,  1.2000, 2.0, -1.800, 7.440, 0.000, 0.000, 0.000, 0.100, '  2 wl:SNEDEN   2 SNEDEN   2 SNEDEN   2 SNEDEN  2 SNEDEN 2 SNEDEN 2 SNEDEN CN'
'Ce 2',       15008.3000,  0.8000, 2.0, -2.100, 8.000,-6.000,-7.700, 1.000, 0.050, '  3 wl:MC   3 MC   3 MC   3 MC   3 MC   3 MC   3 MC Ce+           '
'OH 1',       15003.0000,  0.5000, 2.0, -5.000, 0.000, 0.000, 0.000, 0.000, 0.020, '  4 wl:GS   4 GS   4 GS   4 GS   4 GS   4 GS   4 GS OH            '
'Kurucz (Castelli) 4000/2.00/ 0.00 1km/s',
'H : 0.92','He:-1.11','Li:-10.99','Be:-10.66','B :-9.34','C :-3.61',
'END'
* oscillator strengths were scaled by the solar isotopic ratios.
 References:
  1. K14: R. L. Kurucz, 2014, Fe I
  2. SNEDEN: C. Sneden et al. 2014, 'CN'
  3. MC: Meggers, Corliss 1975
  4. GS: Goldman et al. 1998
"""

VALD_LONG = """\
 15000.00000,  15010.00000,     2,    567,    2.0, Wavelength region, lines selected, lines processed, Vmicro
                                                                     Lande factors       Damping parameters  Central
Spec Ion       WL_air(A)  log gf* E_low(eV) J lo E_up(eV)  J up  lower   upper    mean   Rad.   Stark  Waals  depth
'Fe 1',        15005.60000, -0.500,  5.5870,  2.0,  6.4130,  3.0,  1.500,  1.250,  1.375, 8.190,-5.490,-7.530, 0.250,
'  LS                                                         3d6.(5D).4s.4p.(3P*) y5F*'
'  LS                                                    3d6.(5D).4s.(6D).5s e5D'
'_          K14          K14          K14          K14          K14          K14          K14          K14          K14 Fe            '
'Ce 2',        15008.30000, -2.100,  0.8000,  4.5,  1.6260,  5.5,  1.000,  1.100,  1.050, 8.000,-6.000,-7.700, 0.050,
'  LS                                                         4f.5d2 a4H'
'  LS                                                         4f.5d.6p z4I*'
'_          MC          MC          MC          MC          MC          MC          MC          MC          MC Ce+           '
'Kurucz (Castelli) 4000/2.00/ 0.00 1km/s',
'H : 0.92','He:-1.11','END'
* oscillator strengths were scaled by the solar isotopic ratios.
 References:
  1. K14: R. L. Kurucz, 2014
"""


def test_read_vald_short_format(tmp_path: Path) -> None:
    path = tmp_path / "vald.txt"
    path.write_text(VALD_SHORT)
    table = read_linelist(path)
    assert table.colnames == list(LINELIST_COLUMNS)
    assert table.meta["medium"] == "vacuum"
    assert list(table["species"]) == ["CN", "OH", "Fe 1", "Ce 2"]
    assert list(table["element"]) == ["N", "O", "Fe", "Ce"]
    assert list(table["ion"]) == [0, 0, 1, 2]
    air = np.array([15001.2, 15003.0, 15005.6, 15008.3])
    np.testing.assert_allclose(table["wavelength"], air_to_vacuum(air), rtol=0, atol=1e-9)
    np.testing.assert_allclose(table["loggf"], [-1.8, -5.0, -0.5, -2.1])
    np.testing.assert_allclose(table["chi"], [1.2, 0.5, 5.587, 0.8])


def test_read_vald_long_format(tmp_path: Path) -> None:
    path = tmp_path / "vald_long.lin"
    path.write_text(VALD_LONG)
    table = read_linelist(path)
    assert list(table["species"]) == ["Fe 1", "Ce 2"]
    np.testing.assert_allclose(table["wavelength"], air_to_vacuum([15005.6, 15008.3]))
    np.testing.assert_allclose(table["loggf"], [-0.5, -2.1])
    np.testing.assert_allclose(table["chi"], [5.587, 0.8])


def test_read_vald_vacuum_units_and_medium_conflict(tmp_path: Path) -> None:
    text = VALD_SHORT.replace("WL_air(A)", "WL_vac(nm)").replace("Excit(eV)", "Excit(cm^-1)")
    text = text.replace("15005.6000", "1500.56000")
    path = tmp_path / "vald_vac.txt"
    path.write_text(text)
    table = read_linelist(path, medium="vacuum")
    fe = table[table["species"] == "Fe 1"][0]
    assert fe["wavelength"] == pytest.approx(15005.6)
    assert fe["chi"] == pytest.approx((5.587 / u.cm).to_value(u.eV, equivalencies=u.spectral()))
    with pytest.raises(DataValidationError, match="states vacuum wavelengths but medium='air'"):
        read_linelist(path, medium="air")


def test_read_vald_truncated_or_malformed(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.txt"
    truncated.write_text("\n".join(VALD_SHORT.splitlines()[:5]))
    with pytest.raises(FileFormatError, match="announces 4 lines but 2 were found"):
        read_linelist(truncated)
    malformed = tmp_path / "malformed.txt"
    malformed.write_text(VALD_SHORT.replace("-0.500", "-0.5x0"))
    with pytest.raises(FileFormatError, match="line 4: cannot read VALD line"):
        read_linelist(malformed)
    bad_species = tmp_path / "species.txt"
    bad_species.write_text(VALD_SHORT.replace("'Ce 2'", "'Qq 2'"))
    with pytest.raises(FileFormatError, match="line 6: species 'Qq 2'"):
        read_linelist(bad_species)


def test_read_vald_header_problems(tmp_path: Path) -> None:
    path = tmp_path / "vald.txt"
    path.write_text(VALD_SHORT.replace("WL_air(A)", "WL_air(cm^-1)"))
    with pytest.raises(FileFormatError, match=r"units WL_air\(cm\^-1\)"):
        read_linelist(path)
    path.write_text(VALD_SHORT.replace("Excit(eV)", "Energy"))
    with pytest.raises(FileFormatError, match="without wavelength/energy columns"):
        read_linelist(path)
    path.write_text("\n".join(VALD_SHORT.splitlines()[1:3]))
    with pytest.raises(FileFormatError, match="a VALD header but no line data"):
        read_linelist(path)


# --- tables -------------------------------------------------------------------------------


def test_csv_with_medium_comment_and_element_override(tmp_path: Path) -> None:
    path = tmp_path / "lines.csv"
    path.write_text(
        "# medium: air\nwavelength,species,element,loggf\n15200.0,CN,C,-1.0\n15100.0,Fe 1,,-0.5\n"
    )
    table = read_linelist(path)
    assert list(table["species"]) == ["Fe 1", "CN"]
    assert list(table["element"]) == ["Fe", "C"]
    np.testing.assert_allclose(table["wavelength"], air_to_vacuum([15100.0, 15200.0]))
    assert np.all(np.isnan(table["chi"]))


def test_csv_medium_column_and_conflicts(tmp_path: Path) -> None:
    path = tmp_path / "lines.csv"
    path.write_text("wavelength,species,medium\n15100.0,Fe 1,air\n15200.0,Mg 1,vacuum\n")
    table = read_linelist(path)
    np.testing.assert_allclose(table["wavelength"], [air_to_vacuum(15100.0), 15200.0])
    with pytest.raises(DataValidationError, match="the medium column says"):
        read_linelist(path, medium="vacuum")
    bad_element = tmp_path / "element.csv"
    bad_element.write_text("wavelength,species,element\n15100.0,Fe 1,Ni\n")
    with pytest.raises(FileFormatError, match="row 1: element 'Ni' does not fit species 'Fe 1'"):
        read_linelist(bad_element, medium="vacuum")


def test_table_value_problems(tmp_path: Path) -> None:
    path = tmp_path / "lines.csv"
    path.write_text("wavelength,species,element\n15100.0,CN,Fe\n")
    with pytest.raises(FileFormatError, match=r"one of its constituents \['C', 'N'\]"):
        read_linelist(path, medium="air")
    with pytest.raises(DataValidationError, match="medium must be 'vacuum' or 'air', got 'water'"):
        read_linelist(path, medium="water")
    path.write_text("wavelength,species\n,Fe 1\n15100.0,Fe 2\n")
    with pytest.raises(FileFormatError, match="some rows have no wavelength"):
        read_linelist(path, medium="air")
    path.write_text("wavelength,species\n-3.0,Fe 1\n")
    with pytest.raises(FileFormatError, match="finite and positive"):
        read_linelist(path, medium="air")
    ecsv = tmp_path / "lines.ecsv"
    Table({"wavelength": [1.0] * u.kg, "species": ["Fe 1"]}, meta={"medium": "air"}).write(ecsv)
    with pytest.raises(FileFormatError, match="has unit kg; expected one convertible to"):
        read_linelist(ecsv)


def test_csv_without_medium_asks_for_it(tmp_path: Path) -> None:
    path = tmp_path / "lines.csv"
    path.write_text("wavelength,species\n15100.0,Fe 1\n")
    with pytest.raises(DataValidationError, match="pass medium='vacuum' or medium='air'"):
        read_linelist(path)
    assert read_linelist(path, medium="vac")["wavelength"][0] == 15100.0
    no_species = tmp_path / "no_species.csv"
    no_species.write_text("wavelength,loggf\n15100.0,-1\n")
    with pytest.raises(FileFormatError, match="needs columns 'wavelength'"):
        read_linelist(no_species, medium="air")


def test_ecsv_with_meta_and_units(tmp_path: Path) -> None:
    table = Table(
        {"wavelength": [1510.0, 1520.0] * u.nm, "species": ["Fe 2", "26.00"]},
        meta={"medium": "vacuum"},
    )
    table.write(tmp_path / "lines.ecsv")
    result = read_linelist(tmp_path / "lines.ecsv")
    np.testing.assert_allclose(result["wavelength"], [15100.0, 15200.0])
    assert list(result["species"]) == ["Fe 2", "Fe 1"]


def test_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "lines.txt"
    path.write_text("15100.0 Fe 1\n")
    with pytest.raises(FileFormatError, match="neither a VALD extract"):
        read_linelist(path)
    with pytest.raises(FileFormatError, match="does not exist"):
        read_linelist(tmp_path / "missing.ecsv")


# --- writing ------------------------------------------------------------------------------


def test_write_read_round_trip(tmp_path: Path) -> None:
    vald = tmp_path / "vald.txt"
    vald.write_text(VALD_SHORT)
    table = read_linelist(vald)
    out = tmp_path / "lines.ecsv"
    assert write_linelist(table, out) == out
    back = read_linelist(out)
    assert back.meta["medium"] == "vacuum"
    for name in LINELIST_COLUMNS:
        np.testing.assert_array_equal(back[name], table[name])
    with pytest.raises(OutputExistsError, match="already exists"):
        write_linelist(table, out)
    write_linelist(table[:2], out, overwrite=True)
    assert len(read_linelist(out)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lines.ecsv", "vald.txt"]


def test_write_refuses_non_canonical_tables(tmp_path: Path) -> None:
    table = Table(
        {"wavelength": [15100.0], "species": ["Fe 1"], "element": ["Fe"], "ion": [1]},
        meta={"medium": "air"},
    )
    with pytest.raises(DataValidationError, match="expected 'vacuum'"):
        write_linelist(table, tmp_path / "x.ecsv")
    with pytest.raises(DataValidationError, match=r"lacks columns \['element', 'ion'\]"):
        write_linelist(Table({"wavelength": [1.0], "species": ["Fe 1"]}), tmp_path / "x.ecsv")
    assert not (tmp_path / "x.ecsv").exists()
