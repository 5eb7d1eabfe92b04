"""The stmod core: values, protocols, errors, job files, registry types, sampling, tokens.

Subpackages name the architecture: :mod:`stmod.core.st_layout` (the ST-Layout attention engine),
:mod:`stmod.core.pipeline` (one edit, phase by phase) and :mod:`stmod.core.io` (video, visuals,
output folders). Nothing here imports the built-in plugins, layouts or backbones.
"""
