"""Systems wire fields, renderers, priors and guidance into pure init / train_step functions."""
