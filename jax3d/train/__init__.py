"""The impure side: training loop, checkpoints, logging, device meshes."""
