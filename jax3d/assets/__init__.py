"""Files shipped with the package (the solids prior's weights)."""
