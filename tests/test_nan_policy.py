"""NaN policy: a command whose results are all NaN exits non-zero with the reason; every JSON it writes (files,
the listening server's answers, stdout) is strict: null, never the tokens NaN or Infinity."""

from __future__ import annotations

import json
import math
import urllib.request

import pytest
from listen_fixtures import make_eval, request
from tiny import tiny_baseline, tiny_corpus, write_prompts

from dragontune import listen
from dragontune.cli import main
from dragontune.utils import dumps_strict


def strict_loads(text: str):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON token {c}"))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("nan")
    corpus = tiny_corpus(root / "corpus")
    return {"root": root, "corpus": corpus, "base": tiny_baseline(root / "base.safetensors", corpus),
            "prompts": write_prompts(root / "prompts.txt", ["a calm piano", "fast drums"])}


def test_eval_whose_every_result_is_nan_exits_nonzero_naming_the_reward(env, tmp_path, capsys):
    # the tiny model makes 1 s clips; tag_score's musicnn needs 2.976 s, so every score is NaN
    out = tmp_path / "e"
    rc = main(["eval", "--baseline", str(env["base"]), "--model", str(env["base"]), "--prompts", str(env["prompts"]),
               "--suite", "tag_score", "--steps", "2", "--corpus", str(env["corpus"]), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "no suite reward gave a finite win rate" in err and "tag_score: every score is NaN" in err
    assert "eval.json" in err and "shorter than the encoder's minimum" in err  # the per-clip reason came first
    res = strict_loads((out / "eval.json").read_text())
    assert res["rewards"][0]["win_rate"] is None and res["mean_win_rate"] is None


def test_listening_results_with_only_ties_dropped_are_strict_json(tmp_path):
    # every vote a tie and ties dropped: no decisive vote, so the win rates are undefined (NaN inside)
    make_eval(tmp_path / "run" / "eval", n_pairs=2)
    srv = listen.make_server(tmp_path / "run", port=0, question="q?", tie_rule="drop")
    listen.start_in_thread(srv)
    try:
        while True:
            st, nxt, _ = request(srv.url + "api/next", {"listener": "ann"})
            if nxt["done"]:
                break
            st, res, _ = request(srv.url + "api/vote", {"trial": nxt["trial"], "pair": nxt["pair"], "listener": "ann",
                                                        "choice": "none", "listened_a": 0.6, "listened_b": 0.6})
            assert st == 200, res
        with urllib.request.urlopen(srv.url + "api/results", timeout=30) as r:
            body = r.read().decode()
    finally:
        srv.shutdown()
        srv.server_close()
    res = strict_loads(body)
    o = res["questions"][0]["overall"]
    assert o["ties"] == 2 and o["win_rate"] is None, o
    assert math.isnan(listen.listening_results(srv.store, "drop")["questions"][0]["overall"]["win_rate"])


def test_dumps_strict_writes_null_for_every_non_finite_value():
    import numpy as np
    import torch

    obj = {"a": float("nan"), "b": [float("inf"), 1.5], "c": torch.tensor(float("-inf")), "d": np.float64("nan"),
           "e": (2, float("nan"))}
    assert strict_loads(dumps_strict(obj)) == {"a": None, "b": [None, 1.5], "c": None, "d": None, "e": [2, None]}
    assert math.isnan(json.loads(json.dumps(obj["a"])))  # the plain encoder would have written NaN


def _poisoned_copy(src, dst, pick):
    """``src`` with one float tensor (the first name ``pick`` accepts) set to NaN at one entry; its name."""
    from dragontune.utils import load_safetensors, save_safetensors_atomic

    tensors, meta = load_safetensors(src)
    name = next(k for k in sorted(tensors) if tensors[k].is_floating_point() and pick(k))
    t = tensors[name].clone()
    t.view(-1)[0] = float("nan")
    tensors[name] = t
    save_safetensors_atomic(tensors, dst, meta)
    return name


@pytest.mark.parametrize("which", ["aesthetics", "clap-mini"])
def test_learned_reward_weights_with_nan_are_refused_naming_file_and_tensor(env, tmp_path, capsys, which):
    import numpy as np
    import soundfile as sf

    from dragontune.aesthetics import default_aesthetics_path
    from dragontune.encoders.clap_mini import default_clap_mini_path

    d = tmp_path / "clips"
    d.mkdir()
    sf.write(d / "a.wav", (0.3 * np.sin(2 * np.pi * 220 * np.arange(48000) / 16000)).astype(np.float32), 16000)
    bad = tmp_path / f"bad-{which}.safetensors"
    if which == "aesthetics":
        name = _poisoned_copy(default_aesthetics_path(), bad, lambda k: True)
        spec = f"{{name: aesthetics, path: {bad}}}"
    else:
        name = _poisoned_copy(default_clap_mini_path(), bad, lambda k: "weight" in k)
        spec = f"{{name: clap_score, encoder: {{name: clap-mini, weights: {bad}}}}}"
    rc = main(["score", "--reward", spec, "--audio-dir", str(d), "--prompt", "a piano", "--checkpoint",
               str(env["base"]), "--out", str(tmp_path / "s.json")])
    err = capsys.readouterr().err
    assert rc == 2 and str(bad) in err and f"tensor {name!r}" in err and "non-finite" in err, err
    assert not (tmp_path / "s.json").exists()
