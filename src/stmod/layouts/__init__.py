"""Layout providers: where each region is, per frame (mask folders, boxes, SAM 2, K-Means)."""
