"""U-ViT library: model, diffusion, sampling, training and metrics (no I/O decisions here)."""

__version__ = "0.1.0"
