"""Encoder listing: rows, availability checks (without loading weights) and the text table."""

from __future__ import annotations

import json

import pytest

from dragontune.encoders.catalog import format_encoder_table, list_encoders

KEYS = {"name", "options", "dim", "sample_rate", "min_seconds", "cross_modal", "available", "status", "weights"}


def test_rows_cover_every_encoder():
    rows = list_encoders()
    assert all(set(r) == KEYS for r in rows)
    names = [r["name"] for r in rows]
    assert names[0] == "codec" and {"musicnn", "aisfx", "clap-mini", "clap-hf"} <= set(names)
    musicnn = [r for r in rows if r["name"] == "musicnn"]
    assert {(r["options"]["model"], r["options"]["layer"]) for r in musicnn} == {
        (m, l) for m in ("MTT_musicnn", "MSD_musicnn") for l in ("penultimate", "pooled", "max_pooled", "taggram")
    }
    assert {r["dim"] for r in musicnn} == {200, 753, 50}
    codec = rows[0]
    assert codec["available"] and codec["dim"] == 64 and codec["sample_rate"] == 16000 and not codec["cross_modal"]
    (hf,) = [r for r in rows if r["name"] == "clap-hf"]
    assert hf["status"] == "needs --path" and not hf["available"] and hf["cross_modal"] and "--path" in hf["weights"]


def test_aisfx_row_reports_weights_or_install_step(monkeypatch, tmp_path):
    pytest.importorskip("aisfx")
    (row,) = [r for r in list_encoders() if r["name"] == "aisfx"]
    assert row["available"] and row["weights"].endswith("checkpoint.pth")
    assert (row["dim"], row["sample_rate"], row["min_seconds"]) == (512, 44100, round(101376 / 44100, 4))
    import dragontune.encoders.aisfx as aisfx

    monkeypatch.setattr(aisfx, "default_aisfx_weights", lambda: tmp_path / "gone.pth")
    (row,) = [r for r in list_encoders() if r["name"] == "aisfx"]
    assert not row["available"] and row["status"] == "missing"
    assert str(tmp_path / "gone.pth") in row["weights"] and "pip install --no-deps aisfx" in row["weights"]


def test_musicnn_rows_when_package_missing(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "musicnn" else real(n, *a))
    rows = [r for r in list_encoders() if r["name"] == "musicnn"]
    assert len(rows) == 8 and not any(r["available"] for r in rows)
    assert all("pip install --no-deps musicnn" in r["weights"] for r in rows)


def test_clap_mini_available_only_if_file_exists(monkeypatch, tmp_path):
    cm = pytest.importorskip("dragontune.encoders.clap_mini")
    monkeypatch.setattr(cm, "default_clap_mini_path", lambda: tmp_path / "clap_mini.safetensors")
    (row,) = [r for r in list_encoders() if r["name"] == "clap-mini"]
    assert not row["available"] and "train" in row["weights"] and row["cross_modal"]
    (tmp_path / "clap_mini.safetensors").write_bytes(b"x")
    (row,) = [r for r in list_encoders() if r["name"] == "clap-mini"]
    assert row["available"] and row["weights"] == str(tmp_path / "clap_mini.safetensors")


def test_clap_hf_with_path(tmp_path):
    d = tmp_path / "clap"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"projection_dim": 512, "audio_config": {"enable_fusion": False}}))
    (d / "preprocessor_config.json").write_text(json.dumps({"sampling_rate": 48000, "max_length_s": 10}))
    (d / "model.safetensors").write_bytes(b"")
    (row,) = [r for r in list_encoders(clap_hf_path=d) if r["name"] == "clap-hf"]
    assert row["available"] and (row["dim"], row["sample_rate"], row["min_seconds"]) == (512, 48000, 1.0)
    assert row["weights"] == str(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    (row,) = [r for r in list_encoders(clap_hf_path=d) if r["name"] == "clap-hf"]
    assert not row["available"] and "has no weights" in row["weights"] and str(d) in row["weights"]
    (row,) = [r for r in list_encoders(clap_hf_path=tmp_path / "nope") if r["name"] == "clap-hf"]
    assert not row["available"] and "does not exist" in row["weights"]


def test_format_table():
    rows = list_encoders()
    text = format_encoder_table(rows)
    lines = text.splitlines()
    assert len(lines) == len(rows) + 2
    assert lines[0].split()[:3] == ["encoder", "options", "dim"] and set(lines[1].replace(" ", "")) == {"-"}
    assert "model=MSD_musicnn layer=taggram" in text and "needs --path" in text
    assert format_encoder_table([]).count("\n") == 1
