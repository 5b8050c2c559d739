"""The ``[decoder]`` protocol section: EEG emotion decoders and encoder training.

Read by the calibration step of the loop (which classifier to fit on the calibration
block), by ``eegs evaluate`` (the cross-validation protocol of Table 1) and by
``eegs train-encoder`` (the CLIP training of ATM-S).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from experiment_protocols._section import Section


class _EarlyStopping(Section):
    """Early stopping, the same for both classifiers (off by default)."""

    val_fraction: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="Inner validation share of the training data; keeps the best pass.",
    )
    patience: int = Field(0, ge=0, description="Stop after this many passes without gain.")


class AtmsFc(_EarlyStopping):
    """ATM-S-FC: frozen ATM-S features, trainable MLP 1024 -> 512 -> 256 -> 2."""

    hidden: list[int] = Field(default_factory=lambda: [512, 256], min_length=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    epochs: int = Field(150, ge=1, description="Passes over the calibration epochs.")
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(32, ge=1)
    weight_decay: float = Field(1e-3, ge=0)


class EegNet(_EarlyStopping):
    """EEGNet (braindecode ``EEGNet``), trained end to end."""

    epochs: int = Field(150, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(16, ge=1)
    weight_decay: float = Field(1e-3, ge=0)
    dropout: float = Field(0.25, ge=0, lt=1)
    f1: int = Field(8, ge=1, description="Temporal filters (EEGNet F1).")
    depth: int = Field(2, ge=1, description="Spatial filters per temporal filter (D).")
    kernel_length_128hz: int = Field(
        64, ge=2, description="Temporal kernel at 128 Hz; scaled to the data's rate."
    )


class Evaluation(Section):
    """Cross-validation of ``eegs evaluate`` (Table 1)."""

    folds: int = Field(5, ge=2, description="Stratified k-fold within each subject.")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    leave_one_subject_out: bool = Field(
        True, description="Also test across subjects when a dataset has several."
    )


class EncoderTraining(Section):
    """``eegs train-encoder``: ATM-S with the symmetric CLIP loss."""

    epochs: int = Field(40, ge=1)
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(64, ge=2)
    weight_decay: float = Field(1e-4, ge=0)
    holdout_images: int = Field(
        200, ge=2, description="Images held out for retrieval when no test set is given."
    )
    retrieval_k: list[int] = Field(
        default_factory=lambda: [2, 4, 10, 50, 100, 200],
        min_length=1,
        description="k-way retrieval tasks reported on the held-out images.",
    )


class Decoder(Section):
    """EEG emotion decoders: which one the loop fits, how they are trained and tested."""

    classifier: Literal["atms_fc", "eegnet"] = "atms_fc"
    encoder_checkpoint: str = Field(
        "",
        description="ATM-S weights (.safetensors or the authors' .pth); '' = random init.",
    )
    channels: list[str] = Field(
        default_factory=list,
        description="Channels the decoders read, in this order; [] = every channel of the "
        "epochs. A 17-channel ATM-S checkpoint needs the 17 occipito-parietal channels.",
    )
    window_s: tuple[float, float] = Field(
        (0.0, 1.0), description="Part of each epoch given to the decoders (s, marker = 0)."
    )
    positive_label: str = Field("amusement", min_length=1, description="Class 1.")
    negative_label: str = Field("sadness", min_length=1, description="Class 0.")
    standardize: bool = Field(True, description="Z-score each channel (training statistics).")
    exclude_flagged: bool = Field(False, description="Drop quality-flagged epochs.")
    threads: int = Field(2, ge=0, description="torch CPU threads; 0 = torch's default.")
    atms_fc: AtmsFc = Field(default_factory=AtmsFc)
    eegnet: EegNet = Field(default_factory=EegNet)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    encoder_training: EncoderTraining = Field(default_factory=EncoderTraining)

    @model_validator(mode="after")
    def _check(self) -> Decoder:
        lo, hi = self.window_s
        if hi <= lo:
            raise ValueError(f"window_s end ({hi}) must be after its start ({lo})")
        if self.positive_label == self.negative_label:
            raise ValueError("positive_label and negative_label must differ")
        return self
