"""Inputs and outputs: images into model arrays, which pairs a run scores, result rows and progress, heat maps."""
