"""Memory and time of an edit, predicted before it runs (``stmod-run check``; ``docs/memory.md``).

Pure and model-free: model sizes come from config files and safetensors headers (:mod:`.sizes`),
shapes of the work from the job (:mod:`.job`), bytes and FLOPs from formulas (:mod:`.formulas`)
and a few measured constants (:mod:`.constants`); :mod:`.estimate` adds them up per part and phase
(:mod:`.dit` and :mod:`.dit_estimate` for a video transformer, ``wan``; :mod:`.phases` what both share),
and :mod:`.fit` re-estimates changes that would make a job fit a GPU. No torch import.
"""
