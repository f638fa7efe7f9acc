"""The names DiffScope accepts for schedulers and models, defined once (no heavy imports: the CLI's parser
and RunConfig's validation read them before torch or diffusers load).

Models: "default" (the embedded shapes-world model, assets/shapes-v3), the random-weight aliases below
(real architectures, random weights: compute does not depend on the weights), a Hugging Face Hub id
"owner/name", or a local diffusers pipeline folder. `analysis.models.load_pipeline` resolves all of them.
"""
from __future__ import annotations

SCHEDULERS = ("ddim", "dpm", "euler")

DEFAULT_MODEL = "default"

# alias -> keyword arguments of analysis.models.random_pipeline
RANDOM_MODELS: dict[str, dict] = {
    "sd15-random": {"kind": "sd15", "image_size": 256, "width": 320},  # SD 1.5's real UNet size, 256 px
    "tiny": {"kind": "sd15", "image_size": 64},  # SD 1.5's block structure at width 32, 64 px: tests
}

MODEL_ALIASES = (DEFAULT_MODEL, *RANDOM_MODELS)


def is_hub_id(name: str) -> bool:
    """'owner/name' (exactly one slash, both parts non-empty)."""
    owner, slash, rest = name.partition("/")
    return bool(slash and owner and rest and "/" not in rest)

# Attention backends of a run (RunConfig.attention): the pipeline's fused kernel (today's baseline) or the
# probabilities materialised in every call (the baseline of the papers' time).
ATTENTION_BACKENDS = ("fused", "explicit")
