"""RL algorithms for any `diffusion_gym.DiffusionPolicy`, one algorithm per file (DDPO-SF,
DDPO-IS, RWR), collecting trajectories through the environments. Arrives with the agents issue.
"""
