"""An evaluation folder in the layout of dragontune.evaluate.evaluate_models(out_dir=...), with real WAV clips,
and small HTTP helpers for the listening-test server."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from pathlib import Path

import torch

from dragontune.audio import save_wav

SR = 16000


def tone(f: float, seconds: float = 0.6, amp: float = 0.3) -> torch.Tensor:
    t = torch.arange(int(SR * seconds)) / SR
    return (amp * torch.sin(2 * math.pi * f * t))[None]


def make_eval(folder: Path, n_pairs: int = 5, model: str = "runs/x/final.safetensors", seconds: float = 0.6,
              base_freq: float = 220.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    prompts = [f"prompt {k}: a <calm> & 'soft' melody" if k == 1 else f"prompt {k}" for k in range(n_pairs)]
    pairs = []
    for k, p in enumerate(prompts):
        fa, fb = f"audio/{k:03d}-baseline.wav", f"audio/{k:03d}-model.wav"
        save_wav(folder / fa, tone(base_freq * (k + 1), seconds), SR)
        save_wav(folder / fb, tone(base_freq * (k + 1) * 1.5, seconds, 0.2), SR)
        pairs.append({"index": 2 * k, "prompt": p, "seed": 100 + k, "baseline": fa, "model": fb})
    (folder / "audio" / "index.json").write_text(json.dumps({"sample_rate": SR, "pairs": pairs}))
    ev = {"format": "dragontune-eval-1", "baseline": "(committed baseline)", "model": model,
          "n_prompts": n_pairs, "prompts": prompts, "seeds": [100 + k for k in range(n_pairs)], "rewards": [],
          "skipped": [], "audio": {"index": "audio/index.json", "pairs": pairs}}
    (folder / "eval.json").write_text(json.dumps(ev))
    return folder


def request(url: str, body=None, method: str | None = None, headers: dict | None = None, raw: bytes | None = None):
    """(status, parsed JSON or bytes, headers) of one request; never raises on an HTTP error status."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    h = {"Content-Type": "application/json"} if data is not None else {}
    h.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"), headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, payload, hdrs = r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        status, payload, hdrs = e.code, e.read(), e.headers
    if (hdrs.get("Content-Type") or "").startswith("application/json"):
        return status, json.loads(payload), hdrs
    return status, payload, hdrs
