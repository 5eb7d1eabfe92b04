"""Backbones: diffusion models driven by stmod (SD 1.5 + ControlNet, and the tiny offline model)."""
