"""jax3d: text-to-3D by distilling 2D diffusion priors, in JAX."""

__version__ = "0.1.0"
