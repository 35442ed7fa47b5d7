"""Survey readers and writers: stellarflow's HDF5 survey file, APOGEE, arrays, line lists."""

from __future__ import annotations

from stellarflow.io.apogee import read_allstar, read_apstar, read_aspcapstar
from stellarflow.io.apogee_import import ImportReport, import_apogee
from stellarflow.io.arrays import import_arrays, read_array, read_label_table
from stellarflow.io.hdf5 import SurveyFile, SurveyWriter, open_survey, read_survey, write_survey
from stellarflow.io.linelist import air_to_vacuum, read_linelist, vacuum_to_air, write_linelist

__all__ = [
    "ImportReport",
    "SurveyFile",
    "SurveyWriter",
    "air_to_vacuum",
    "import_apogee",
    "import_arrays",
    "open_survey",
    "read_allstar",
    "read_apstar",
    "read_array",
    "read_aspcapstar",
    "read_label_table",
    "read_linelist",
    "read_survey",
    "vacuum_to_air",
    "write_linelist",
    "write_survey",
]
