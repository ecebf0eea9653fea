"""Datasets in the Ophora-160K layout and the latent cache that training reads."""
