"""One edit from a validated job to an output folder: the editor (phase order), component building
and checking, layout composition, the cached inversion and the run records."""
