"""Reading and writing: video clips, visual overlays, evaluation frames and output folders."""
