"""dragontune: DRAGON (Distributional RewArds for Generative OptimizatioN) for text-to-audio diffusion."""

__version__ = "0.1.0"
