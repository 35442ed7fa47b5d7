"""The answer key's likelihood floor: the information a spectrum carries beyond its labels."""

from __future__ import annotations

import numpy as np
import pytest

from stellarflow.errors import DataValidationError
from stellarflow.mock import MockSurvey
from stellarflow.mock.answers import likelihood_floor
from stellarflow.mock.spectra import SpectrumModel

LABELS = ("TEFF", "LOGG", "FE_H")


def _inputs(mock: MockSurvey) -> tuple[np.ndarray, SpectrumModel, np.ndarray, np.ndarray]:
    measured = np.column_stack([np.asarray(mock.dataset.labels[n]) for n in LABELS])
    model = SpectrumModel(mock.linelist, mock.dataset.wavelength)
    observed = np.flatnonzero((np.asarray(mock.dataset.ivar) > 0).any(1))
    targets = observed[:6]  # some stars have this whole window masked (persistence)
    return measured, model, targets, np.asarray(mock.dataset.ivar[targets], dtype=np.float64)


def test_floor_grows_with_signal_to_noise_and_vanishes_without_data(
    small_mock: MockSurvey,
) -> None:
    measured, model, targets, ivar = _inputs(small_mock)
    kwargs = {"n_neighbours": 100}
    floor = likelihood_floor(small_mock.truth, measured, ivar, model, targets, **kwargs)
    assert floor.shape == (targets.size,)
    assert np.all(np.isfinite(floor)) and np.all(floor > 0)
    sharper = likelihood_floor(small_mock.truth, measured, 16 * ivar, model, targets, **kwargs)
    assert np.all(sharper > floor)
    # Each well-measured direction gains at most 0.5 log 16 nats from 16x the inverse
    # variance (exactly that in the high-S/N limit); there are 25 hidden parameters.
    assert np.all(sharper - floor <= 25 * 0.5 * np.log(16) + 1e-9)
    blind = likelihood_floor(small_mock.truth, measured, 0 * ivar, model, targets, **kwargs)
    np.testing.assert_allclose(blind, 0.0, atol=1e-12)


def test_floor_refuses_mismatched_noise(small_mock: MockSurvey) -> None:
    measured, model, targets, ivar = _inputs(small_mock)
    with pytest.raises(DataValidationError, match="ivar must be"):
        likelihood_floor(small_mock.truth, measured, ivar[:, :10], model, targets)


def test_variance_at_measured_labels_adds_what_the_label_errors_leave() -> None:
    """At fixed *measured* labels the true ones still scatter by their errors: [Ce/Fe] is
    measured to 0.06 dex against a population spread of ~0.08, so the Ce lines (and, through
    the s-process stars' C and N, the CN lines everywhere) vary more than at fixed true
    labels."""
    from stellarflow.analysis.spectral_elements import element_pixels
    from stellarflow.mock import MockConfig
    from stellarflow.mock.answers import spectra_at_labels, variance_at_measured_labels
    from stellarflow.mock.linelist import make_mock_linelist

    config = MockConfig(n_stars=10, seed=3)
    point = {"TEFF": 4750.0, "LOGG": 2.5, "FE_H": 0.0, "CE_FE": 0.0}
    true_var = spectra_at_labels(config, point, 500, seed=1).var(axis=0)
    measured_var = variance_at_measured_labels(config, point, 500, seed=1)
    assert measured_var.shape == true_var.shape and np.all(measured_var >= 0)
    ce = element_pixels(config.wavelength(), make_mock_linelist(config.linelist_seed))["Ce"]
    assert measured_var[ce].sum() > 1.3 * true_var[ce].sum()
    assert measured_var.sum() > 1.1 * true_var.sum()
    with pytest.raises(DataValidationError, match="not measured mock labels"):
        variance_at_measured_labels(config, {"NOPE": 1.0}, 10)
