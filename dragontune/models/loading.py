"""Load any supported model by path: a dragontune checkpoint file, or a diffusers Stable Audio pipeline folder."""

from __future__ import annotations

import os
from pathlib import Path

from dragontune.errors import CheckpointError
from dragontune.models.interface import DiffusionModel


def is_pipeline_dir(path) -> bool:
    return path is not None and str(path) != "" and Path(path).is_dir()


def load_diffusion_model(path: str | os.PathLike | None = None, device="cpu",
                         options: dict | None = None) -> DiffusionModel:
    """``path``: a ``.safetensors`` model checkpoint (None: the committed baseline), or a folder written by
    ``StableAudioPipeline.save_pretrained`` (loaded from disk only). ``options`` are the pipeline adapter's
    (``seconds_start``, ``seconds_total``); a checkpoint file takes none."""
    options = dict(options or {})
    if is_pipeline_dir(path):
        from dragontune.models.stable_audio import StableAudioModel

        return StableAudioModel.load(path, device=device, **options)
    if options:
        raise CheckpointError(f"model options {sorted(options)} apply to a Stable Audio pipeline folder, but the "
                              f"model {str(path or 'the committed baseline')!r} is a dragontune checkpoint file; set "
                              "baseline=FOLDER (a StableAudioPipeline.save_pretrained folder) or remove model_options")
    from dragontune.models.checkpoint import load_model

    return load_model(path, device=device)


def model_family(model: DiffusionModel) -> str:
    return getattr(model, "family", "dit")
