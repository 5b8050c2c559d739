"""The ``[generation]`` protocol section: the generation worker and its heuristic generator.

Defaults are the lab prototype's values (15 inner steps, 8 diffusion steps, step size
30 with decay 0.1, 4 parents, GP fitted on -reward, IP-Adapter scale 0.5). Every
sub-table is documented in ``default.toml``. ``generation.reward`` is the settings class of
its mode (:mod:`experiment_protocols.rewards`); ``generation.backend`` is a name that
:func:`register_backend` lets protocols use (docs/architecture.md section 13).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, SerializeAsAny, field_validator, model_validator

from experiment_protocols._section import Section
from experiment_protocols.rewards import RewardSettings, default_reward_settings, reward_settings


class Heuristic(Section):
    """The heuristic generator of docs/architecture.md section 3."""

    initial_images: int = Field(8, ge=1, description="Round 0: random pool images shown.")
    n_parents: int = Field(4, ge=2, description="Parents kept per round (softmax sampling).")
    temperature: float = Field(0.1, gt=0, description="Softmax temperature over rewards.")
    parent_score: Literal["reward", "posterior"] = Field(
        "posterior",
        description="What parents are sampled by: the GP's posterior mean at each image's "
        "embedding (similar images' rewards pooled, spread like the rewards), or each "
        "image's single-trial reward (the prototype).",
    )
    n_children: int = Field(4, ge=0, description="Children made by crossover per round.")
    inner_steps: int = Field(
        15, ge=1, le=100_000, description="Generate-embed-ascend steps per child."
    )
    step_size: float = Field(30.0, ge=0, description="eta_0 of eta_k = eta_0 / (1 + decay k).")
    step_decay: float = Field(0.1, ge=0)
    max_step_fraction: float = Field(
        0.25,
        ge=0,
        description="Trust region: cap of one step's norm as a fraction of the median "
        "distance between observed embeddings; 0 = no cap (the prototype).",
    )
    refine_in: Literal["render", "embedding"] = Field(
        "embedding",
        description="Where the inner steps are taken. embedding: the steps move the "
        "embeddings on the GP mean alone, then the images are generated and re-embedded "
        "once per round (an SDXL round fits the 1 s after the last reward only this way; "
        "eegs bench optimizer: same gain); render: every step generates the children's "
        "images (one batch) and re-embeds them (the prototype; inner_steps backend calls).",
    )
    n_nearest: int = Field(2, ge=0, description="Nearest unseen pool images to the parents.")
    n_random: int = Field(2, ge=0, description="Random unseen pool images per round.")
    max_rounds: int = Field(8, ge=1, description="Rounds after round 0 before stopping.")
    patience: int = Field(3, ge=1, description="Rounds without improvement before stopping.")
    tolerance: float = Field(
        0.01, ge=0, description="An improvement of the best reward smaller than this is none."
    )


class GP(Section):
    """The exact GP surrogate (constant mean, scaled RBF kernel with ARD)."""

    fit_iters: int = Field(100, ge=1, description="Adam iterations of the first fit.")
    refit_iters: int = Field(
        10, ge=0, description="Warm-started Adam iterations between rounds (bounded budget)."
    )
    refit_budget_s: float = Field(2.0, gt=0, le=600, description="Wall-time cap of one (re)fit.")
    max_points: int = Field(
        512,
        ge=16,
        le=20000,
        description=(
            "Observations the GP holds; past it, the best quarter and the newest rest "
            "(memory and fit time grow with n^2)."
        ),
    )
    lr: float = Field(0.05, gt=0, description="Adam learning rate.")
    noise_min: float = Field(1e-4, gt=0, description="Lower bound of the noise variance.")
    threads: int = Field(
        1, ge=0, description="torch threads of the fit (0 = torch's default); see models/gp.py."
    )
    negate_reward: bool = Field(
        True, description="Fit the GP on -reward and descend it (the prototype's convention)."
    )


class SDXL(Section):
    """SDXL base + SDXL-Lightning UNet + fp16-fix VAE + IP-Adapter ViT-H."""

    base: str = Field(
        "stabilityai/stable-diffusion-xl-base-1.0",
        description="Hub id or local folder (diffusers layout) of SDXL base.",
    )
    lightning: str = Field("ByteDance/SDXL-Lightning", description="Hub id or local folder.")
    diffusion_steps: Literal[2, 4, 8] = Field(
        8, description="Lightning checkpoint and inference steps (2, 4 or 8)."
    )
    vae: str = Field("madebyollin/sdxl-vae-fp16-fix", description="Hub id or local folder.")
    ip_adapter: str = Field("h94/IP-Adapter", description="Hub id or local folder.")
    ip_adapter_weight: str = "sdxl_models/ip-adapter_sdxl_vit-h.safetensors"
    image_encoder_subfolder: str = "models/image_encoder"
    ip_adapter_scale: float = Field(0.5, ge=0)
    prompt: str = Field("", description="Text prompt (guidance 0: conditioning only).")
    width: int = Field(1024, ge=64, le=4096, multiple_of=8)
    height: int = Field(1024, ge=64, le=4096, multiple_of=8)
    local_files_only: bool = Field(True, description="Never download during a session.")


class Procedural(Section):
    """The CPU renderer (no weights): parametric images embedded by low-level features."""

    size: int = Field(256, ge=32, le=4096, description="Image side in pixels.")
    pool_size: int = Field(
        256, ge=8, le=100_000, description="Rendered stimulus pool (round 0, exploration)."
    )
    fit_samples: int = Field(
        2048, ge=64, description="Random renders used to fit the embedding -> parameter map."
    )
    ridge_alpha: float = Field(1.0, gt=0, description="Ridge penalty of that map.")


class Pool(Section):
    """A folder of images (the lab's licensed stimulus set) with cached embeddings."""

    folder: str = Field("", description="Image folder; required for backends sdxl and pool.")
    cache_file: str = Field(
        ".eegs-embeddings.safetensors", description="Embedding cache, inside the folder."
    )
    extensions: list[str] = Field(default_factory=lambda: [".png", ".jpg", ".jpeg", ".webp"])


@dataclass(frozen=True)
class BackendSpec:
    """What a protocol knows of a generator backend; the backend is models/backends/NAME.py.

    ``needs_pool_folder``: round 0 and exploration come from ``generation.pool.folder``;
    ``needs_gpu``: made for a GPU (the pre-flight check warns without one); ``stand_in``:
    CPU stand-in images (the session report says so).
    """

    name: str
    description: str
    needs_pool_folder: bool = False
    needs_gpu: bool = False
    stand_in: bool = False


#: The generator backends a protocol may name (:func:`register_backend`).
BACKENDS: dict[str, BackendSpec] = {}


def register_backend(spec: BackendSpec) -> BackendSpec:
    """Let protocols name a backend (its class registers in models/backends/ by the same name).

    Raises
    ------
    ValueError
        If another backend has the name.
    """
    known = BACKENDS.get(spec.name)
    if known is not None and known != spec:
        raise ValueError(f"backend {spec.name!r} is registered twice: {known} and {spec}")
    BACKENDS[spec.name] = spec
    return spec


register_backend(BackendSpec("procedural", "parametric images on the CPU", stand_in=True))
register_backend(BackendSpec("pool", "selection from a folder", needs_pool_folder=True))
register_backend(
    BackendSpec("sdxl", "SDXL-Lightning + IP-Adapter", needs_pool_folder=True, needs_gpu=True)
)


class Generation(Section):
    """The generation worker (``eegs worker``)."""

    backend: str = Field(
        "procedural", description="The image generator: a registered backend (BACKENDS)."
    )
    device: str = Field("auto", description="cpu, cuda, cuda:N or auto (cuda when present).")
    dtype: Literal["float16", "bfloat16"] = Field(
        "float16", description="Weights on CUDA (CPU always uses float32)."
    )
    compile: bool = Field(False, description="torch.compile the UNet (slow first round).")
    endpoint: str = Field("tcp://127.0.0.1:5557", description="ZeroMQ ROUTER endpoint.")
    subscribe_epochs: bool = Field(
        False, description="Also reward every epoch published on network.epochs_endpoint."
    )
    deadline_s: float = Field(
        10.0, gt=0, le=3600, description="Time budget of an image request that names none."
    )
    reward_wait_s: float = Field(
        2.0, ge=0, le=3600, description="Wait this long for the rewards of a request's trials."
    )
    use_flagged_epochs: bool = Field(
        False, description="Credit rewards of quality-flagged epochs to their images."
    )
    max_request_bytes: int = Field(
        64 << 20, ge=1024, le=1 << 30, description="Larger requests get an error reply."
    )
    image_key: str = Field("image", description="Marker field naming the image shown.")
    session: str = Field(
        "",
        description="The session whose messages the worker takes ('' = its --session "
        "folder's name, as every process of one session names it); a worker on another "
        "machine sets the lab PC's session name here.",
    )
    image_encoding: Literal["png", "rgb"] = Field(
        "rgb", description="rgb: raw HxWx3 uint8 (no encode cost); png: PNG bytes per image."
    )
    png_compress_level: int = Field(1, ge=0, le=9)
    seed: int = Field(0, ge=0, description="Seeds parent sampling, crossover and noise.")
    heuristic: Heuristic = Field(default_factory=Heuristic)
    gp: GP = Field(default_factory=GP)
    reward: SerializeAsAny[RewardSettings] = Field(
        default_factory=default_reward_settings,
        description="How an epoch becomes a reward: the settings of one mode "
        "(experiment_protocols/rewards/), chosen by its key mode.",
    )
    sdxl: SDXL = Field(default_factory=SDXL)
    procedural: Procedural = Field(default_factory=Procedural)
    pool: Pool = Field(default_factory=Pool)

    @field_validator("backend")
    @classmethod
    def _registered_backend(cls, value: str) -> str:
        if value not in BACKENDS:
            raise ValueError(f"unknown backend {value!r}; expected one of {', '.join(BACKENDS)}")
        return value

    @field_validator("reward", mode="before")
    @classmethod
    def _reward_of_its_mode(cls, value: Any) -> Any:
        return reward_settings(value)

    @model_validator(mode="after")
    def _check_pool(self) -> Generation:
        if BACKENDS[self.backend].needs_pool_folder and not self.pool.folder:
            raise ValueError(
                f"backend '{self.backend}' needs pool.folder (round 0 and exploration "
                "come from the stimulus pool)"
            )
        return self
