"""Cohorts: many sections in one run, region ids that agree across sections, on Dask.

:func:`read_manifest` reads the list of sections, :func:`run_cohort` runs them (``joint``: one
model over all; ``independent``: one per section, regions matched afterwards) as tasks of a
``distributed.Client`` (:func:`local_client`) and writes the cohort report.
"""

from senca.cohort.manifest import Section, read_manifest
from senca.cohort.match import match_sections, region_profiles
from senca.cohort.run import MODES, CohortResult, local_client, run_cohort

__all__ = ["MODES", "CohortResult", "Section", "local_client", "match_sections", "read_manifest", "region_profiles", "run_cohort"]
