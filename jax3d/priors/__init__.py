"""2D diffusion priors behind one interface (see base.py)."""
