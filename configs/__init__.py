"""Preset configs (ml_collections). Shipped inside the package as `jax3d.configs`."""
