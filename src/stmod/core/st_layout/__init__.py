"""The ST-Layout engine: region labels and presets, attention kernels, per-edit state, the attention
processor, the ``st-layout`` modulator and the attention recorders."""
