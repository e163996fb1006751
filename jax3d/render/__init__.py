"""Differentiable renderers: volume rendering (NeRF, voxels) and rasterization (meshes)."""
