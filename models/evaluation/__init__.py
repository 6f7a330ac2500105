"""Evaluation and the pictures of it: figures on the test split (evaluate.py), the standard
recipes trained for a fixed budget to compare with (baselines.py), the showcase pictures
(showcase.py) and the VAEs' latent maps (latent_map.py)."""
