"""`python -m jax3d ...` == the `jax3d` command."""

from jax3d import cli

if __name__ == "__main__":
  raise SystemExit(cli.main())
