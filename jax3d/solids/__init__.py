"""The solids world: five solids in six colours with exact geometry, for measuring text-to-3D."""
