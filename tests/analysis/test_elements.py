"""Element dimensionality on synthetic catalogues whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from astropy.table import Table

from stellarflow.analysis.abundance_flow import fit_abundance_flow
from stellarflow.analysis.elements import (
    PolynomialMean,
    abundance_catalogue,
    analyse_elements,
    condition_residuals,
)
from stellarflow.analysis.greedy import greedy_selection
from stellarflow.errors import DataValidationError
from stellarflow.flows.abundance import AbundanceFlow
from tests.analysis.elements_synthetic import CARRIERS, SCATTER, TARGETS, synthetic_catalogue

COND = ("A_H", "B_FE")


@pytest.fixture(scope="module")
def catalogue():
    table = synthetic_catalogue(6000, seed=1)
    return abundance_catalogue(table, [*COND, *TARGETS])


def test_polynomial_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(0)
    c = rng.normal(size=(300, 3))
    y = np.column_stack([np.sin(c[:, 0]) + c[:, 1] * c[:, 2], c[:, 0] ** 3])
    model = PolynomialMean.fit(c, y, degree=3)
    _, grad = model(c[:5])
    h = 1e-6
    for j in range(3):
        step = np.zeros(3)
        step[j] = h
        numeric = (model(c[:5] + step)[0] - model(c[:5] - step)[0]) / (2 * h)
        np.testing.assert_allclose(grad[:, :, j], numeric, rtol=1e-5, atol=1e-8)


def test_flags_sentinels_and_unknown_columns() -> None:
    table = synthetic_catalogue(200, seed=2)
    table["E1_FE"][0] = -9999.0
    table["E2_FE_ERR"][1] = np.nan
    table["E3_FE_FLAG"] = np.zeros(len(table), int)
    table["E3_FE_FLAG"][2] = 4
    cat = abundance_catalogue(table, ["A_H", "E1_FE", "E2_FE", "E3_FE", "TEFF"])
    assert cat.values.shape == (197, 5)
    assert set(cat.row_index) == set(range(3, 200))
    with pytest.raises(DataValidationError, match=r"\['MG_FE'\] are not in the catalogue.*E1_FE"):
        abundance_catalogue(table, ["A_H", "MG_FE"])
    del table["E4_FE_ERR"]
    with pytest.raises(DataValidationError, match="no _ERR column"):
        abundance_catalogue(table, ["A_H", "E4_FE"])


def test_intrinsic_scatter_recovered_at_the_right_set(catalogue) -> None:
    cond = [*COND, "E1_FE", "E4_FE"]
    targets = [t for t in TARGETS if t not in cond]
    result = analyse_elements(
        catalogue, cond, targets, n_bootstrap=5, n_null=30, rng=np.random.default_rng(0)
    )
    truth = SCATTER[[TARGETS.index(t) for t in targets]]
    got = np.asarray(result.table["independent_scatter"])
    assert np.max(np.abs(got - truth)) < 0.005, (got, truth)
    assert np.all(np.asarray(result.table["independent_scatter_err"]) < 0.003)
    # shared structure is gone: what is left is consistent with errors + independent scatter
    assert result.excess_over_null < 0.05
    assert result.table.meta["shared_consistent_with_null"]
    # residuals are more than noise for every element (all have intrinsic scatter)
    assert np.all(np.asarray(result.table["excess_significance"]) > 5)


def test_shared_structure_detected_with_too_few_conditions(catalogue) -> None:
    result = analyse_elements(
        catalogue, COND, TARGETS, n_bootstrap=0, n_null=30, rng=np.random.default_rng(0)
    )
    assert result.significance < 0.05
    assert result.excess_over_null > 1.0
    assert not result.table.meta["shared_consistent_with_null"]
    # without conditioning on the carriers their scatter looks far larger than the truth
    assert result.table["intrinsic_scatter"][0] > 0.05


def test_greedy_picks_one_carrier_per_process_and_stops(catalogue) -> None:
    result = greedy_selection(
        catalogue, COND, TARGETS, n_null=30, n_bootstrap=2, rng=np.random.default_rng(3)
    )
    added = list(result.table["added_element"][1 : result.stop_step + 1])
    assert result.stop_step == 2, result.table
    assert all(len(carriers & set(added)) == 1 for carriers in CARRIERS), added
    assert result.table["stop"][2] and not result.table["stop"][1]
    assert len(result.bootstrap_stop_steps) == 2


def test_error_induced_correlation_matches_monte_carlo() -> None:
    """No intrinsic scatter, no hidden process: residual correlation is all from errors."""
    rng = np.random.default_rng(5)
    n = 4000
    truth = {"A_H": rng.normal(-0.2, 0.3, n), "B_FE": rng.normal(0.1, 0.1, n)}
    truth["z"], truth["eps"] = np.zeros((n, 2)), np.zeros((n, len(TARGETS)))
    predicted, observed = [], []
    for seed in range(8):
        table = synthetic_catalogue(n, seed=100 + seed, scatter=False, latent=False, truth=truth)
        cat = abundance_catalogue(table, [*COND, *TARGETS])
        result = analyse_elements(
            cat, COND, TARGETS, n_bootstrap=0, n_null=2, rng=np.random.default_rng(seed)
        )
        predicted.append(result.error_correlation)
        observed.append(result.correlation)
    predicted, observed = np.mean(predicted, axis=0), np.mean(observed, axis=0)
    off = ~np.eye(len(TARGETS), dtype=bool)
    assert np.max(np.abs(predicted[off])) > 0.1  # the effect is there to be predicted
    np.testing.assert_allclose(predicted[off], observed[off], atol=0.025)
    np.testing.assert_allclose(np.diag(predicted), 1.0, atol=0.03)


def test_flow_log_prob_includes_standardisation() -> None:
    torch.manual_seed(0)
    flow = AbundanceFlow(2, 1, transforms=1, hidden=(8,)).double()
    y, c = torch.randn(50, 2, dtype=torch.float64) * 3 + 1, torch.randn(50, 1, dtype=torch.float64)
    flow.set_standardisation(y, c)
    u = (y - flow.y_center) / flow.y_scale
    expected = flow.standardised(c).log_prob(u) - torch.log(flow.y_scale).sum()
    torch.testing.assert_close(flow(c).log_prob(y), expected)


def test_flow_mean_tracks_the_conditional_mean() -> None:
    rng = np.random.default_rng(0)
    c = rng.normal(size=(3000, 1))
    y = np.column_stack([0.5 * c[:, 0] + 0.2 * c[:, 0] ** 2, -c[:, 0]]) + 0.1 * rng.normal(
        size=(3000, 2)
    )
    model = fit_abundance_flow(
        c,
        y,
        max_epochs=25,
        patience=5,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(0),
    )
    model.n_samples = 256
    grid = np.linspace(-1.5, 1.5, 7)[:, None]
    mean, grad = model(grid)
    truth = np.column_stack([0.5 * grid[:, 0] + 0.2 * grid[:, 0] ** 2, -grid[:, 0]])
    assert np.max(np.abs(mean - truth)) < 0.06
    np.testing.assert_allclose(grad[:, 1, 0], -1.0, atol=0.2)


def test_condition_and_targets_must_be_disjoint(catalogue) -> None:
    with pytest.raises(DataValidationError, match="disjoint"):
        analyse_elements(catalogue, COND, ["A_H", "E1_FE"])
    res = condition_residuals(catalogue, COND, TARGETS)
    assert res.residual.shape == (catalogue.values.shape[0], len(TARGETS))


def test_table_roundtrip_has_the_promised_columns(catalogue, tmp_path) -> None:
    result = analyse_elements(
        catalogue, COND, TARGETS[:4], n_bootstrap=2, n_null=5, rng=np.random.default_rng(0)
    )
    result.table.write(tmp_path / "e.ecsv", format="ascii.ecsv")
    back = Table.read(tmp_path / "e.ecsv")
    for name in (
        "residual_scatter",
        "median_error",
        "intrinsic_scatter",
        "intrinsic_scatter_err",
        "excess_significance",
    ):
        assert name in back.colnames
    assert back.meta["condition"] == list(COND)


def test_variance_by_element_sums_each_elements_line_pixels() -> None:
    from stellarflow.analysis.spectral_elements import element_pixels, variance_by_element

    wavelength = np.linspace(15000.0, 15010.0, 101)  # 0.1 Angstrom pixels
    linelist = Table(
        {"wavelength": [15002.0, 15007.0, 15020.0], "species": ["Mg 1", "Ce 2", "Fe 1"]}
    )
    masks = element_pixels(wavelength, linelist, half_width=0.25)
    assert set(masks) == {"Mg", "Ce"}  # Fe's line is off the grid
    assert masks["Mg"].sum() == 5
    var = {"small": np.full(101, 2.0), "large": np.where(masks["Mg"], 0.5, 2.0)}
    table = variance_by_element(wavelength, var, np.ones(101), linelist, half_width=0.25)
    row = {r["element"]: r for r in table}
    assert row["Mg"]["ratio_small"] == pytest.approx(2.0)
    assert row["Mg"]["ratio_large"] == pytest.approx(0.5)
    assert row["Ce"]["ratio_large"] == pytest.approx(2.0)


def test_flow_density_integrates_to_one_and_survives_save_load(tmp_path) -> None:
    torch.manual_seed(1)
    flow = AbundanceFlow(1, 2, transforms=2, hidden=(8,)).double()
    y, c = torch.randn(64, 1, dtype=torch.float64) * 0.05, torch.randn(64, 2, dtype=torch.float64)
    flow.set_standardisation(y, c)
    grid = torch.linspace(-1.0, 1.0, 20001, dtype=torch.float64)[:, None]
    context = torch.tensor([[0.3, -0.2]], dtype=torch.float64).expand(grid.shape[0], 2)
    with torch.no_grad():
        density = flow(context).log_prob(grid).exp()
    assert torch.trapezoid(density, grid[:, 0]).item() == pytest.approx(1.0, abs=1e-3)
    torch.save(flow.state_dict(), tmp_path / "flow.pt")
    again = AbundanceFlow(1, 2, transforms=2, hidden=(8,)).double()
    again.load_state_dict(torch.load(tmp_path / "flow.pt"))
    torch.testing.assert_close(again(c).log_prob(y), flow(c).log_prob(y), rtol=0, atol=0)
