"""Randomly initialised CogVideoX pipelines of the real architecture, in the real on-disk layout (tests, demo, benchmarks).

The weights are random, so outputs are noise; what they test is every code path that real weights take.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import torch

from ophora.core.errors import InputError, ModelError

log = logging.getLogger(__name__)

# The CogVideoX-2b scheduler settings (v-prediction, zero-terminal-SNR, trailing spacing).
SCHEDULER_CONFIG = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "set_alpha_to_one": True,
    "snr_shift_scale": 3.0,
    "steps_offset": 0,
    "timestep_spacing": "trailing",
    "trained_betas": None,
}


TOKENIZER_CORPUS = """\
Create the main incision with a keratome at the temporal limbus.
Inject viscoelastic into the anterior chamber to maintain its depth.
Perform a continuous curvilinear capsulorhexis with forceps.
Hydrodissect the lens with balanced salt solution through a cannula.
Emulsify the nucleus with the phaco probe using a divide and conquer technique.
Aspirate the remaining cortex with the irrigation aspiration handpiece.
Polish the posterior capsule gently.
Implant the foldable intraocular lens into the capsular bag with the injector.
Rotate and position the lens haptics in the bag.
Remove the viscoelastic from behind the lens.
Flush the anterior chamber and hydrate the wound edges.
Inject intracameral antibiotics and check that the incisions are sealed.
Generate a surgical video clip with the current surgical phase as incision.
Carefully remove cortex while managing aspiration to prevent zonular stress.
"""


def train_tokenizer(folder: Path, vocab_size: int = 256) -> None:
    """Train a T5-style sentencepiece unigram tokenizer on a surgical corpus and save it in `folder`."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text(TOKENIZER_CORPUS * 4)
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(folder / "spiece"), vocab_size=vocab_size,
            model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
            character_coverage=1.0, minloglevel=2, num_threads=1,
        )
    (folder / "spiece.vocab").unlink()
    tokenizer = T5Tokenizer.from_pretrained(folder, extra_ids=0, legacy=False, model_max_length=226)
    tokenizer.save_pretrained(folder)


# Random model sizes: transformer, VAE and T5 settings. "2b" is the published CogVideoX-2b transformer and VAE
# (diffusers' defaults) with a one-layer T5 of T5-XXL's width, for benchmarks: speed does not depend on weights.
SIZES = {
    "tiny": dict(transformer=dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, text_embed_dim=32,
                                  time_embed_dim=32),
                 vae=dict(block_out_channels=(8, 8, 8, 8), norm_num_groups=4, layers_per_block=1),
                 t5=dict(d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2, relative_attention_num_buckets=8)),
    "small": dict(transformer=dict(num_attention_heads=4, attention_head_dim=32, num_layers=4, text_embed_dim=64,
                                   time_embed_dim=128),
                  vae=dict(block_out_channels=(32, 32, 64, 64), norm_num_groups=8, layers_per_block=1),
                  t5=dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=2, relative_attention_num_buckets=8)),
    # trained from scratch by benchmarks/mini_ophora.py (with a trained VAE: synthetic/mini_model.py) on one GPU
    "mini": dict(transformer=dict(num_attention_heads=3, attention_head_dim=64, num_layers=6, text_embed_dim=64,
                                  time_embed_dim=128),
                 vae=dict(block_out_channels=(32, 32, 64, 64), norm_num_groups=8, layers_per_block=1),
                 t5=dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=2, relative_attention_num_buckets=8)),
    "2b": dict(transformer={}, vae={}, t5=dict(d_model=4096, d_kv=64, d_ff=8192, num_layers=1, num_heads=2)),
}


def random_pipeline(size: str, tokenizer_dir: Path, seed: int = 0, device: str = "cpu"):
    """A randomly initialised CogVideoX pipeline of `size` (see SIZES) around the tokenizer in `tokenizer_dir`."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    if size not in SIZES:
        raise ModelError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    s = SIZES[size]
    tokenizer = T5Tokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    with torch.device(device):  # random init of 1.7B parameters is much faster on a GPU
        text_encoder = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer), feed_forward_proj="gated-gelu", is_encoder_decoder=False, pad_token_id=0,
            eos_token_id=1, decoder_start_token_id=0, **s["t5"]))
        # sample size and text length as CogVideoX-2b: 49 frames at 480x720, 226 tokens
        transformer = CogVideoXTransformer3DModel(sample_width=90, sample_height=60, sample_frames=49,
                                                  max_text_seq_length=226, **s["transformer"])
        vae = AutoencoderKLCogVideoX(latent_channels=16, **s["vae"])
    for module in (text_encoder, transformer, vae):
        module.eval()  # as from_pretrained gives them: T5's dropout would make equal seeds differ
    return CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                             scheduler=CogVideoXDDIMScheduler(**SCHEDULER_CONFIG))


def make_random_model(folder: str | Path, seed: int = 0, size: str = "tiny", dtype: torch.dtype = torch.float32,
                      device: str = "cpu") -> Path:
    """Write a randomly initialised CogVideoX pipeline in the diffusers on-disk layout.

    `size="tiny"` samples 9 frames at 64x64 in seconds on a CPU; "small" is a moderate model for learning
    checks; "2b" has the published CogVideoX-2b size, for benchmarks. The text encoder keeps T5's 226-token
    context so prompts are handled exactly as by CogVideoX-2b. The weights are random: outputs are noise.
    """
    if size not in SIZES:
        raise ModelError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InputError(f"{folder} exists and is not an empty folder; give a new or empty folder for the random model")
    folder.mkdir(parents=True, exist_ok=True)
    train_tokenizer(folder / "tokenizer")
    pipe = random_pipeline(size, folder / "tokenizer", seed, device)
    pipe.to(dtype).save_pretrained(folder, safe_serialization=True)
    (folder / "ophora_random.json").write_text(json.dumps({"size": size, "seed": seed, "note": "random weights"}))
    log.info("wrote a %s random CogVideoX pipeline to %s", size, folder)
    return folder
