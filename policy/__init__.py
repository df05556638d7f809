"""Spiking transformer diffusion policy for manipulation trajectories (not yet implemented: see issue 6)."""
