"""`ophora prepare`: a dataset's clips -> the latent cache (VAE latents, T5 embeddings), sharded over ranks."""

from ophora.prepare.run import PrepareConfig, prepare

__all__ = ["PrepareConfig", "prepare"]
