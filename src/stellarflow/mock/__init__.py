"""The mock survey with known truth: APOGEE-like giant spectra from a few-process chemistry.

Public API:

* :class:`MockConfig` - everything that defines a mock (frozen, validated).
* :func:`make_mock_linelist` - the deterministic H-band line list, with withheld lines.
* :func:`sample_population` - true labels, process amplitudes and outliers of giants.
* :func:`observe_labels` - measured (noisy) labels with ``*_ERR`` columns.
* :class:`SpectrumModel` / :func:`synthesize_flux` - noiseless spectra for given labels.
* :func:`observe_spectra` / :func:`oracle_log_prob` - noise, masks and the exact likelihood.
* :func:`make_mock` - a whole survey in memory (:class:`MockSurvey`).
* :func:`write_mock_survey` - a survey streamed to HDF5 (:class:`MockSurveySummary`).

The file layout of the truth is documented in :mod:`stellarflow.mock.survey`.
"""

from __future__ import annotations

from stellarflow.mock.config import MockConfig
from stellarflow.mock.constants import ABUNDANCE_ELEMENTS, PROCESS_VECTORS, PROCESSES
from stellarflow.mock.linelist import make_mock_linelist
from stellarflow.mock.noise import observe_spectra, oracle_log_prob, throughput
from stellarflow.mock.outliers import OUTLIER_KINDS, OUTLIER_SHIFTS
from stellarflow.mock.population import label_errors, observe_labels, sample_population
from stellarflow.mock.spectra import SpectrumModel, StarParameters, synthesize_flux
from stellarflow.mock.survey import (
    MockSurvey,
    MockSurveySummary,
    make_mock,
    mock_metadata,
    write_mock_survey,
)

__all__ = [
    "ABUNDANCE_ELEMENTS",
    "OUTLIER_KINDS",
    "OUTLIER_SHIFTS",
    "PROCESSES",
    "PROCESS_VECTORS",
    "MockConfig",
    "MockSurvey",
    "MockSurveySummary",
    "SpectrumModel",
    "StarParameters",
    "label_errors",
    "make_mock",
    "make_mock_linelist",
    "mock_metadata",
    "observe_labels",
    "observe_spectra",
    "oracle_log_prob",
    "sample_population",
    "synthesize_flux",
    "throughput",
    "write_mock_survey",
]
