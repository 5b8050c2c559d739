"""The ``[brain_model]`` protocol section: the simulated participant of ``eegs brain-model``.

The brain model streams EEG like an amplifier (on the stream named ``streams.eeg``),
reads the session's markers (``streams.markers``) and adds the simulated subject's
response to each image shown. See ``models/brain/response.py`` for the model and the
literature it follows.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from experiment_protocols._section import Section

#: The brain model's subject families, each with what carries its affect; the family
#: itself is models/brain/families/NAME.py (:func:`register_family`).
SUBJECT_FAMILIES: dict[str, str] = {}


def register_family(name: str, description: str) -> None:
    """Let protocols name a subject family (its module registers it by the same name).

    Raises
    ------
    ValueError
        If another description has the name.
    """
    known = SUBJECT_FAMILIES.get(name)
    if known is not None and known != description:
        raise ValueError(f"subject family {name!r} is registered twice")
    SUBJECT_FAMILIES[name] = description


register_family("standard", "LPP, frontal slow wave and alpha asymmetry")
register_family("asymmetry", "frontal alpha asymmetry only")
register_family("lpp", "late positive potential only, signed valence weight per subject")
register_family("mixed", "both, weights per subject")
register_family("weak", "a weak responder: affective components at 10-20 % gain")

#: The brain model's realism presets (their numbers: models/brain/realism.py), from the
#: most single-trial signal to the least, each with how much of the hidden affect one
#: trial of the EEG carries.
REALISM_LEVELS: dict[str, str] = {
    "clean": "every image's affect expressed in full on every trial (the model before its "
    "calibration to real EEG): far easier to decode than a person",
    "strong": "twice lab's affective signal: a strong responder on a good cap, above the "
    "real recordings' range",
    "lab": "single-trial decodability of valence within the range of real recordings (the default)",
    "faint": "half lab's affective signal: a faint responder or a noisy headset, below "
    "the real recordings' range",
}


#: The keys that set a realism preset's numbers themselves (None: the preset's).
REALISM_KEYS = ("affect_gain", "faa_gain")


def realism_changes(level: str) -> dict[str, Any]:
    """The ``[brain_model]`` keys that put a protocol at preset ``level``, its own numbers."""
    return {"realism": level, **dict.fromkeys(REALISM_KEYS)}


class BrainModelSettings(Section):
    """Every parameter of the simulated participant and of its stream."""

    subject_seed: int = Field(
        0, description="Draws the hidden subject: affect weights, ERP latencies, alpha."
    )
    family: str = Field(
        "standard",
        description="Which components carry the subject's affect: a registered family "
        "(SUBJECT_FAMILIES; standard: LPP, frontal slow wave and alpha asymmetry). The "
        "hidden affect (the oracle) is the same in every family.",
    )
    realism: str = Field(
        "lab",
        description="How much of the hidden affect one trial carries: a preset "
        "(REALISM_LEVELS; lab: within real recordings' single-trial decodability; clean: the "
        "uncalibrated model, far easier to read than a person).",
    )
    affect_gain: float | None = Field(
        None,
        ge=0,
        le=10,
        description="Gain on every affective modulation of the ERPs and posterior alpha "
        "(LPP, EPN, frontal slow wave); None = the realism preset's.",
    )
    faa_gain: float | None = Field(
        None,
        ge=0,
        le=10,
        description="Gain on the frontal alpha asymmetry per unit valence; None = the "
        "realism preset's.",
    )
    noise_seed: int | None = Field(
        None, description="Seed of the background and trial variability; None = fresh."
    )
    channels: list[str] = Field(
        default_factory=list,
        description="10-05 channel names; [] = the 64 standard 10-10 channels.",
    )
    sfreq: float = Field(500.0, gt=0, le=10000, description="Sampling rate (Hz).")
    chunk_s: float = Field(0.02, gt=0, le=1.0, description="Samples pushed per LSL chunk.")
    snr: float = Field(
        0.15, gt=0, description="Response RMS / background RMS (64 channels, 0-1 s)."
    )
    response_uv: float = Field(1.5, gt=0, description="Response RMS for an average image.")
    aperiodic_exponent: float = Field(1.5, gt=0, le=2, description="Background 1/f^beta.")
    alpha_hz: float = Field(10.0, ge=6, le=14, description="Mean individual alpha frequency.")
    alpha_share: float = Field(0.3, ge=0, lt=0.95, description="Background share of alpha.")
    line_noise_hz: float = Field(50.0, gt=0, description="Mains frequency (60 in the Americas).")
    line_noise_uv: float = Field(0.0, ge=0, description="Line noise amplitude; 0 = none.")
    blinks_per_min: float = Field(0.0, ge=0, le=60, description="Blink rate; 0 = none.")
    blink_uv: float = Field(100.0, ge=0, description="Blink amplitude at Fp1/Fp2.")
    trial_amplitude_sd: float = Field(0.2, ge=0, le=1, description="Per-trial amplitude sd.")
    trial_latency_sd_ms: float = Field(10.0, ge=0, le=100, description="Per-trial latency sd.")
    photodiode: bool = Field(False, description="Add a 'Photodiode' channel (type MISC).")
    photodiode_lag_ms: float = Field(
        0.0, ge=0, description="Display lag after the flip marker (photodiode and brain)."
    )
    photodiode_jitter_ms: float = Field(0.0, ge=0, description="Sd of the display lag.")
    photodiode_duration_s: float = Field(
        1.0, gt=0, description="Photodiode on-time when no offset marker arrives."
    )
    photodiode_level: float = Field(1.0, description="Photodiode value while lit (0 dark).")
    onset_event: str = Field("stimulus_onset", min_length=1)
    offset_event: str = Field("stimulus_offset", min_length=1)
    image_root: str = Field(
        "", description="Relative image paths in markers start here; '' = working folder."
    )
    learned_model: str = Field(
        "", description="Safetensors file of a learned image-to-EEG model; '' = parametric."
    )
    learned_class: str = Field(
        "", description="'module:Class' of the learned model (else the file's own, if ours)."
    )

    @field_validator("family")
    @classmethod
    def _registered_family(cls, value: str) -> str:
        if value not in SUBJECT_FAMILIES:
            raise ValueError(
                f"unknown subject family {value!r}; expected one of {', '.join(SUBJECT_FAMILIES)}"
            )
        return value

    def at_realism(self, level: str) -> dict[str, Any]:
        """The section (as data) at the realism preset ``level``, with the preset's own numbers.

        The keys that override a preset's numbers (:data:`REALISM_KEYS`) are cleared:
        naming a level on the command line means that level, not a mix with a file's
        numbers.
        """
        return {**self.model_dump(), **realism_changes(level)}

    @field_validator("realism")
    @classmethod
    def _known_realism(cls, value: str) -> str:
        if value not in REALISM_LEVELS:
            raise ValueError(
                f"unknown realism {value!r}; expected one of {', '.join(REALISM_LEVELS)}"
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> BrainModelSettings:
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("channels lists a channel twice")
        if "Photodiode" in self.channels:
            raise ValueError("'Photodiode' is added by photodiode = true, not a channel")
        if self.chunk_s * self.sfreq < 1:
            raise ValueError(
                f"chunk_s ({self.chunk_s}) is shorter than one sample at {self.sfreq:g} Hz"
            )
        if self.line_noise_uv > 0 and self.line_noise_hz >= self.sfreq / 2:
            raise ValueError(
                f"line_noise_hz ({self.line_noise_hz:g}) must be below the Nyquist frequency "
                f"({self.sfreq / 2:g} Hz)"
            )
        return self
