"""The ``[generation]`` protocol section: the generation worker and its heuristic generator.

Defaults are the lab prototype's values (15 inner steps, 8 diffusion steps, step size
30 with decay 0.1, 4 parents, GP fitted on -reward, IP-Adapter scale 0.5). Every
sub-table is documented in ``default.toml``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from experiment_protocols._section import Section


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


class Reward(Section):
    """How an EEG epoch becomes a reward in [0, 1]."""

    mode: Literal["personal", "lpp", "asymmetry", "affective", "semantic"] = Field(
        "lpp",
        description="personal (default.toml's and pilot.toml's mode; a file without the "
        "key gets lpp): an estimator of the participant's own valence ratings, fitted by "
        "the worker on the calibration block (asymmetry when the participant does not "
        "decode above chance); lpp: late-positive-potential index (arousal, no "
        "training); asymmetry: frontal alpha asymmetry (valence, no training); affective: "
        "decoder probability of target_class; semantic: cosine to a target EEG embedding.",
    )
    decoder: str = Field(
        "",
        description="Mode affective: a classifier file, or 'calibration' (the worker fits "
        "decoder.classifier on the session's calibration epochs when the loop starts).",
    )
    target_class: str = Field("amusement", min_length=1)
    encoder: str = Field("", description="ATM-S checkpoint (mode semantic); '' = random.")
    target_embedding: str = Field("", description=".npy or .safetensors file (semantic).")
    lpp_window_s: tuple[float, float] = (0.4, 0.8)
    lpp_channels: list[str] = Field(
        default_factory=lambda: ["Pz", "P1", "P2", "P3", "P4", "POz", "CPz"],
        description="Channels averaged for the LPP; those absent from the epoch are skipped.",
    )
    lpp_scale_uv: float = Field(5.0, gt=0, description="LPP amplitude that maps to 0.73.")
    asymmetry_pairs: list[tuple[str, str]] = Field(
        default_factory=lambda: [
            ("F3", "F4"),
            ("F5", "F6"),
            ("F7", "F8"),
            ("FC3", "FC4"),
            ("AF3", "AF4"),
        ],
        min_length=1,
        description="(left, right) homologous frontal channels; pairs absent from the epoch "
        "are skipped.",
    )
    asymmetry_band_hz: tuple[float, float] = (8.0, 13.0)
    asymmetry_window_s: tuple[float, float] = (0.3, 1.0)
    asymmetry_alpha_scale: float = Field(
        0.5, gt=0, description="Single-trial spread of ln P(right) - ln P(left) (alpha)."
    )
    personal_folds: int = Field(
        5, ge=2, le=20, description="Personal: cross-validation folds inside the calibration block."
    )
    personal_permutations: int = Field(
        200,
        ge=19,
        description="Personal: rating shuffles of the permutation test (p >= 1/(this + 1)).",
    )
    personal_p_threshold: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="Personal: the participant decodes when the out-of-fold r > 0 and the "
        "permutation p is below this; otherwise the reward falls back to asymmetry.",
    )
    personal_min_trials: int = Field(
        12, ge=6, description="Personal: fewer rated calibration trials fall back at once."
    )

    @property
    def chases(self) -> str:
        """What a high reward stands for.

        Arousal (lpp), target_class (asymmetry: the pleasant class; affective), or the
        semantic target.
        """
        return {"lpp": "arousal", "semantic": "target"}.get(self.mode, self.target_class)

    @property
    def oracle(self) -> str:
        """The brain model's hidden affect that the reward should raise."""
        return "arousal" if self.mode == "lpp" else "valence"

    @model_validator(mode="after")
    def _check(self) -> Reward:
        lo, hi = self.lpp_window_s
        if not lo < hi:
            raise ValueError(f"lpp_window_s {list(self.lpp_window_s)} needs start < end")
        lo, hi = self.asymmetry_window_s
        if not lo < hi:
            raise ValueError(f"asymmetry_window_s {[lo, hi]} needs start < end")
        lo, hi = self.asymmetry_band_hz
        if not 0 < lo < hi:
            raise ValueError(f"asymmetry_band_hz {[lo, hi]} needs 0 < low < high")
        if self.mode == "semantic" and not self.target_embedding:
            raise ValueError("mode 'semantic' needs target_embedding (a .npy/.safetensors file)")
        return self


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


class Generation(Section):
    """The generation worker (``eegs worker``)."""

    backend: Literal["procedural", "sdxl", "pool"] = "procedural"
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
    reward: Reward = Field(default_factory=Reward)
    sdxl: SDXL = Field(default_factory=SDXL)
    procedural: Procedural = Field(default_factory=Procedural)
    pool: Pool = Field(default_factory=Pool)

    @model_validator(mode="after")
    def _check_pool(self) -> Generation:
        if self.backend in ("sdxl", "pool") and not self.pool.folder:
            raise ValueError(
                f"backend '{self.backend}' needs pool.folder (round 0 and exploration "
                "come from the stimulus pool)"
            )
        return self
