"""`stlpips-eval`: the ST-LPIPS paper's rank-flip protocol (section 4) and BAPPS 2AFC scoring.

Modules: `shift` (crop arithmetic, rank flips, confidence intervals), `triplets` (the built-in triplet set
from scikit-image photographs), `bapps` (the BAPPS 2AFC loader), `metrics` (L2, SSIM and the learned
metrics through the runtime or the PyTorch reference), `study` (scoring and tables), `cli`.
"""
