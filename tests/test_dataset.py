"""Captioned-audio folder loading: formats, conversion, filtering and broken-file reporting."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from dragontune.data.dataset import AudioCaptionDataset, filter_rows, load_metadata
from dragontune.data.synth import synth_corpus
from dragontune.errors import DataError

SR = 16000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synth_corpus(tmp_path_factory.mktemp("corpus"), 24, 3)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def dlog():
    lg = logging.getLogger("dragontune")
    h = _Collect()
    old = lg.level
    lg.addHandler(h)
    lg.setLevel(logging.DEBUG)
    yield h
    lg.removeHandler(h)
    lg.setLevel(old)


def _tone(sr, seconds, channels=1, f=440.0):
    t = np.arange(int(sr * seconds)) / sr
    x = 0.5 * np.sin(2 * np.pi * f * t)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_synth_corpus_roundtrip(corpus):
    rows = load_metadata(corpus)
    assert len(rows) == 24 and all(r["caption"] for r in rows)
    ds = AudioCaptionDataset(corpus)
    item = ds[0]
    assert item["audio"].dtype == torch.float32 and item["audio"].shape == (1, 4 * SR)
    assert item["caption"] == rows[0]["caption"] and item["meta"]["id"] == rows[0]["id"]
    audio, caps = ds.load_all()
    assert audio.shape == (24, 1, 4 * SR) and caps == [r["caption"] for r in rows]
    for split in ("train", "val", "test"):
        n = sum(r["split"] == split for r in rows)
        if n:
            assert len(AudioCaptionDataset(corpus, split=split)) == n
    short = AudioCaptionDataset(corpus, duration=1.5)
    assert short[0]["audio"].shape == (1, 24000)
    assert torch.equal(short[0]["audio"], item["audio"][:, :24000])  # crop from the start


def test_filter_rows(corpus):
    rows = load_metadata(corpus)
    inst = rows[0]["instrument"]
    got = filter_rows(rows, f"instrument={inst},quality=clean")
    assert got and all(r["instrument"] == inst and r["quality"] == "clean" for r in got)
    assert filter_rows(rows, {"instrument": inst}) == [r for r in rows if r["instrument"] == inst]
    both = filter_rows(rows, "instrument=piano|bass")
    assert all(r["instrument"] in ("piano", "bass") for r in both)
    with pytest.raises(DataError, match=r"'instrumnt' is unknown; did you mean 'instrument'.*valid fields: .*caption"):
        filter_rows(rows, "instrumnt=piano")
    with pytest.raises(DataError, match=r"instrument=theremin matches no rows; values of 'instrument' here: .*" + inst):
        filter_rows(rows, "instrument=theremin")
    with pytest.raises(DataError, match="field=value"):
        filter_rows(rows, "piano")
    ds = AudioCaptionDataset(corpus, filter=f"instrument={inst}")
    assert len(ds) == sum(r["instrument"] == inst for r in rows)


def test_resample_and_downmix_logs_once(tmp_path, dlog):
    for i in range(3):
        sf.write(str(tmp_path / f"s{i}.wav"), _tone(44100, 2.0, channels=2), 44100)
    _write_jsonl(tmp_path / "captions.jsonl", [{"path": f"s{i}.wav", "caption": f"tone {i}"} for i in range(3)])
    ds = AudioCaptionDataset(tmp_path, duration=3.0)
    items = [ds[i] for i in range(len(ds))]
    for it in items:
        a = it["audio"]
        assert a.shape == (1, 3 * SR)
        assert torch.all(a[0, 2 * SR + 50 :] == 0)  # zero padding after the 2 s of audio
        assert abs(float(a[0, : 2 * SR].abs().max()) - 0.5) < 0.02
    conv = [r for r in dlog.records if "converting" in r.getMessage()]
    assert len(conv) == 1 and "44100 Hz/2 ch" in conv[0].getMessage()
    # without the up-front check the line appears once, on first access
    dlog.records.clear()
    ds2 = AudioCaptionDataset(tmp_path, check_on_init=False)
    _ = [ds2[i] for i in range(len(ds2))]
    assert len([r for r in dlog.records if "converting" in r.getMessage()]) == 1


def test_flac_and_csv(tmp_path):
    sf.write(str(tmp_path / "a.flac"), _tone(SR, 1.0), SR, format="FLAC")
    sf.write(str(tmp_path / "b.wav"), _tone(22050, 1.0), 22050)
    (tmp_path / "captions.csv").write_text('file,caption,split\na.flac,"a tone, steady",train\nb.wav,another tone,test\n')
    rows = load_metadata(tmp_path)
    assert [r["caption"] for r in rows] == ["a tone, steady", "another tone"]
    ds = AudioCaptionDataset(tmp_path, duration=1.0)
    assert len(ds) == 2 and ds[0]["audio"].shape == (1, SR) and ds[1]["audio"].shape == (1, SR)
    assert len(AudioCaptionDataset(tmp_path, split="test", duration=1.0)) == 1


def test_metadata_errors(tmp_path):
    with pytest.raises(DataError, match="no caption table"):
        load_metadata(tmp_path)
    sf.write(str(tmp_path / "a.wav"), _tone(SR, 0.5), SR)
    _write_jsonl(tmp_path / "captions.jsonl", [{"file": "a.wav", "caption": "ok"}, {"file": "b.wav", "caption": "   "}])
    with pytest.raises(DataError, match=r"captions\.jsonl:2: empty caption for 'b.wav'"):
        load_metadata(tmp_path)
    _write_jsonl(tmp_path / "captions.jsonl", [{"file": "a.wav"}])
    with pytest.raises(DataError, match=r"captions\.jsonl:1: missing field 'caption'"):
        load_metadata(tmp_path)
    (tmp_path / "captions.jsonl").write_text('{"file": "a.wav", "caption": "ok"}\n{"file": "a.wav", \n')
    with pytest.raises(DataError, match=r"captions\.jsonl:2: not valid JSON"):
        load_metadata(tmp_path)
    (tmp_path / "captions.jsonl").unlink()
    (tmp_path / "captions.csv").write_text("file,caption\na.wav,\n")
    with pytest.raises(DataError, match=r"captions\.csv:2: empty caption"):
        load_metadata(tmp_path)
    (tmp_path / "captions.csv").write_text("name,text\na.wav,x\n")
    with pytest.raises(DataError, match=r"captions\.csv:1: header must name columns file"):
        load_metadata(tmp_path)


def _broken_folder(tmp_path):
    sf.write(str(tmp_path / "good.wav"), _tone(SR, 1.0), SR)
    (tmp_path / "corrupt.wav").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    bad = _tone(SR, 1.0).astype(np.float32)
    bad[100] = np.nan
    sf.write(str(tmp_path / "nan.wav"), bad, SR, subtype="FLOAT")
    sf.write(str(tmp_path / "empty.wav"), np.zeros(0, dtype=np.float32), SR)
    names = ["good.wav", "corrupt.wav", "nan.wav", "missing.wav", "empty.wav"]
    _write_jsonl(tmp_path / "metadata.jsonl", [{"file": n, "caption": f"clip {n}"} for n in names])
    return names


def test_missing_file_listed(tmp_path):
    _broken_folder(tmp_path)
    with pytest.raises(DataError, match=r"1 audio file\(s\) listed but missing:\n.*missing\.wav"):
        load_metadata(tmp_path)


def test_broken_files_raise_with_every_path(tmp_path):
    _broken_folder(tmp_path)
    with pytest.raises(DataError) as e:
        AudioCaptionDataset(tmp_path, duration=1.0)
    msg = str(e.value)
    assert "4 of 5 audio files" in msg
    for n, why in (("corrupt.wav", "undecodable"), ("nan.wav", "contains NaN"), ("missing.wav", "missing"), ("empty.wav", "empty")):
        assert f"{tmp_path / n}: {why}" in msg
    assert "good.wav" not in msg


def test_broken_files_skipped_and_logged_once(tmp_path, dlog):
    _broken_folder(tmp_path)
    ds = AudioCaptionDataset(tmp_path, duration=1.0, on_error="skip")
    assert len(ds) == 1 and ds[0]["meta"]["file"] == "good.wav"
    warns = [r for r in dlog.records if r.levelno == logging.WARNING]
    assert len(warns) == 1 and "nan.wav" in warns[0].getMessage() and "corrupt.wav" in warns[0].getMessage()


def test_getitem_names_broken_file_without_check(tmp_path):
    _broken_folder(tmp_path)
    ds = AudioCaptionDataset(tmp_path, duration=1.0, check_on_init=False)
    with pytest.raises(DataError, match="nan.wav"):
        ds[2]
    with pytest.raises(DataError, match="corrupt.wav"):
        ds[1]
    with pytest.raises(DataError, match="on_error"):
        AudioCaptionDataset(tmp_path, on_error="ignore")
