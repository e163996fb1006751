"""Distillation guidance: SDS, SJC (perturb-and-average scoring), VSD; timestep schedules."""
