"""3D representations: each module offers init(key, cfg) -> params and pure query functions."""
