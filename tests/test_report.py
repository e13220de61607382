"""The HTML report: generation from a hand-written run directory, missing inputs, and a headless-browser check."""

import base64
import json
import math
import re
import subprocess

import pytest
import torch

from dragontune.audio import save_wav
from dragontune.report import write_report

SR = 16000


def _tone(f, seconds=0.5):
    t = torch.arange(int(SR * seconds)) / SR
    return (0.3 * torch.sin(2 * math.pi * f * t))[None]


def make_run(root, rounds=6, with_eval=True, with_demos=True):
    """A small but complete run directory in the layout of dragontune.dragon.loop + dragontune.evaluate."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(
        "out_dir: runs/x\nbaseline: ''\nrounds: %d\nloss: dpo\nbuilder: paired\nbeta: 5000.0\n"
        "k_per_prompt: 4\nprompts_per_round: 2\nreward:\n  name: per_song_fad\n  encoder: codec\n"
        "  exemplars: {corpus: data/corpus, filter: 'instrument=piano,quality=clean'}\n"
        "watch:\n- {name: vendi, encoder: codec}\noptim:\n  lr: 3.0e-06\nsampler:\n  steps: 8\n" % rounds)
    (root / "batch_arithmetic.json").write_text(json.dumps(
        {"reward": "per_song_fad", "reward_class": "instance_to_dist", "samples_per_round": 8, "processes": 1}))
    lines = [{"round": 0, "eval/per_song_fad": -5.0, "eval/vendi": 3.0}]
    for r in range(1, rounds + 1):
        rec = {"round": r, "reward": -5.0 + 0.2 * r, "watch/vendi": 3.0 - 0.05 * r, "n_nan_dropped": 0,
               "skipped_rounds": 0, "train/loss": 0.69 - 0.02 * r, "train/implicit_acc": 0.5 + 0.04 * r,
               "train/A_pos": -0.001 * r, "train/A_neg": 0.001 * r, "train/grad_norm": 1.0 + 0.1 * r,
               "train/margin": 0.002 * r, "demo/n_pairs": 2, "demo/score_gap": 0.3,
               "time/generate": 1.0, "time/score": 0.2, "time/train": 0.5, "ref_unchanged": True}
        if r % 3 == 0:
            rec.update({"eval/per_song_fad": -5.0 + 0.15 * r, "eval/vendi": 3.0 - 0.04 * r})
        lines.append(rec)
    (root / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if with_demos:
        (root / "demos").mkdir(exist_ok=True)
        for r in range(1, rounds + 1):
            rows = []
            for j in range(8):
                label = 1 if j % 4 == 0 else (-1 if j % 4 == 3 else 0)
                rows.append({"index": j, "prompt": f"p{j // 4}", "seed": 100 * r + j,
                             "source": "reference" if j == 5 else "policy", "steps": 8,
                             "reward": -5.0 + 0.1 * j, "credit": None, "label": label,
                             "pair": (j // 4) if label else None})
            (root / "demos" / f"round-{r:04d}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    if with_eval:
        ev_dir = root / "eval"
        pairs = []
        prompts = ["a calm piano melody", "fast drums <b>&amp; 'quotes'"]
        for k, p in enumerate(prompts):
            fa, fb = f"audio/{k:03d}-baseline.wav", f"audio/{k:03d}-model.wav"
            save_wav(ev_dir / fa, _tone(220 * (k + 1)), SR)
            save_wav(ev_dir / fb, _tone(330 * (k + 1)), SR)
            pairs.append({"index": k, "prompt": p, "seed": 7 + k, "baseline": fa, "model": fb})
        (ev_dir / "audio" / "index.json").write_text(json.dumps({"sample_rate": SR, "pairs": pairs}))
        ev = {
            "format": "dragontune-eval-1", "baseline": "base.safetensors", "model": str(root / "model.safetensors"),
            "n_prompts": 20, "n_boot": 200, "prompts": prompts, "seeds": [7, 8],
            "rewards": [
                {"name": "per_song_fad/codec/piano", "reward_class": "instance_to_dist", "method": "instance",
                 "win_rate": 0.75, "lo": 0.53, "hi": 0.89, "n": 20, "ties": 0, "nan_dropped": 0,
                 "before": -5.0, "after": -4.2},
                {"name": "vendi/codec", "reward_class": "dist_to_dist", "method": "bootstrap", "win_rate": 0.3,
                 "win_rate_kind": "bootstrap win share", "lo": None, "hi": None, "n": 20, "n_clips": 20,
                 "n_boot": 200, "diff_lo": -0.4, "diff_hi": 0.1, "diff_mean": -0.2, "before": 3.0, "after": 2.8},
                {"name": "clap_score", "reward_class": "instance", "error": "RewardError: boom"},
            ],
            "skipped": [{"name": "aesthetics", "reason": "RewardError: not available"}],
            "audio": {"index": "audio/index.json", "pairs": pairs}, "mean_win_rate": 0.525,
        }
        (ev_dir / "eval.json").write_text(json.dumps(ev))
    return root


def test_report_sections_and_self_contained(tmp_path):
    run = make_run(tmp_path / "run")
    out = write_report(run)
    assert out == run / "report.html"
    page = out.read_text()
    # no external resources: every src/href is a data URI (or an in-page anchor)
    for attr in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert attr.startswith("data:") or attr.startswith("#"), attr[:80]
    assert "http://" not in page and "https://" not in page
    # sections and content
    for needle in ("Configuration", "per_song_fad", "Reward curves", "Win rates", "75.0%", "[53.0%, 89.0%]",
                   "vendi/codec", "skipped: RewardError: not available", "error: RewardError: boom",
                   "D+ / D−", "implicit accuracy", "a calm piano melody", "seed 7", "52.5%"):
        assert needle in page, needle
    # captions are escaped
    assert "fast drums &lt;b&gt;&amp;amp; &#x27;quotes&#x27;" in page
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(imgs) >= 3
    for b in imgs:
        assert base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n"
    auds = re.findall(r'src="data:audio/wav;base64,([^"]+)"', page)
    assert len(auds) == 4
    import io

    import soundfile as sf

    x, sr = sf.read(io.BytesIO(base64.b64decode(auds[0])))
    assert sr == SR and x.shape[0] == SR // 2
    # demonstration counts from the demos files: 6 rounds x 8 samples, 2 in D+ and 2 in D- per round
    assert "48 samples: 12 in D+, 12 in D−, 24 unused; 6 from the frozen reference (0 of them in D+)" in page


def test_report_missing_inputs_are_stated(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    page = write_report(empty).read_text()
    assert "No config.yaml" in page and "No metrics" in page and "No evaluation found" in page
    assert "No audio examples" in page and "No demonstration files" in page
    # metrics but no eval/audio, and a malformed metrics line
    run = make_run(tmp_path / "run", with_eval=False, with_demos=False)
    with open(run / "metrics.jsonl", "a") as f:
        f.write("{not json\n")
    page = write_report(run).read_text()
    assert "No evaluation found" in page and "not valid JSON" in page and "Reward curves" in page
    assert page.count("data:image/png") >= 2
    # eval.json whose audio files are gone
    run2 = make_run(tmp_path / "run2")
    for f in (run2 / "eval" / "audio").glob("*.wav"):
        f.unlink()
    page = write_report(run2).read_text()
    assert "is missing" in page and "data:audio" not in page
    from dragontune.errors import DataError

    with pytest.raises(DataError, match="does not exist"):
        write_report(tmp_path / "nope")


def _chromium():
    from cdp import find_chromium

    return find_chromium()


CHECK_SCRIPT = """<script>
window.__errs = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  window.__errs.push(t && t.tagName ? (t.tagName + ' failed to load') : ('error: ' + e.message));
}, true);
['error', 'warn'].forEach(function (k) {
  var orig = console[k];
  console[k] = function () { window.__errs.push('console.' + k + ': ' + Array.prototype.join.call(arguments, ' ')); orig.apply(console, arguments); };
});
var __tries = 0;
function __report(done) {
  var imgs = Array.prototype.slice.call(document.images);
  var auds = Array.prototype.slice.call(document.querySelectorAll('audio'));
  var res = {
    images: imgs.length, images_ok: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
    audio: auds.length, audio_ok: auds.filter(function (a) { return a.readyState >= 1 && !a.error && a.duration > 0; }).length,
    durations: auds.map(function (a) { return a.duration; }), errors: window.__errs, done: done
  };
  return res;
}
function __check() {
  var r = __report(false);
  if ((r.images_ok === r.images && r.audio_ok === r.audio) || __tries++ > 100) {
    r.done = true;
    document.body.setAttribute('data-check', JSON.stringify(r));
  } else { setTimeout(__check, 50); }
}
window.addEventListener('load', function () { setTimeout(__check, 0); });
</script>"""


def test_report_loads_in_headless_chromium(tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium); browser check skipped")
    run = make_run(tmp_path / "run")
    page = write_report(run).read_text()
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("<head>", "<head>" + CHECK_SCRIPT, 1))
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'ud'}",
           "--enable-logging=stderr", "--v=0", "--autoplay-policy=no-user-gesture-required",
           "--virtual-time-budget=10000", "--dump-dom", checked.as_uri()]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert p.returncode == 0, p.stderr[-2000:]
    m = re.search(r"data-check=\"([^\"]*)\"", p.stdout)
    assert m, "the check script did not finish; stderr tail:\n" + p.stderr[-2000:]
    import html as _html

    res = json.loads(_html.unescape(m.group(1)))
    assert res["done"] and res["errors"] == [], res
    assert res["images"] >= 3 and res["images_ok"] == res["images"], res
    assert res["audio"] == 4 and res["audio_ok"] == 4, res
    assert all(abs(d - 0.5) < 0.01 for d in res["durations"]), res
    # the page itself logs nothing to the console (no script of its own, no failed resource)
    console = [ln for ln in p.stderr.splitlines() if "CONSOLE" in ln]
    assert console == [], console


@pytest.mark.slow
def test_report_of_a_real_tiny_run(tmp_path):
    """DRAGON loop (2 rounds, tiny model) -> evaluate_models into run/eval -> report: every section filled."""
    from tiny import tiny_baseline, tiny_corpus, write_prompts

    from dragontune.config import load_config
    from dragontune.dragon.loop import DragonConfig, finetune
    from dragontune.evaluate import evaluate_models
    from dragontune.generate import SamplerConfig

    corpus = tiny_corpus(tmp_path / "corpus")
    base = tiny_baseline(tmp_path / "base.safetensors", corpus)
    prompts = ["a soft piano melody", "fast drums", "a slow pad", "bright bell tones"]
    pfile = write_prompts(tmp_path / "prompts.txt", prompts)
    run = tmp_path / "run"
    ov = {"out_dir": run, "baseline": base, "device": "cpu", "rounds": 2, "prompts_per_round": 2,
          "k_per_prompt": 2, "updates_per_round": 1, "batch_per_update": 2, "prompts": pfile,
          "eval_prompts": pfile, "eval_n_prompts": 3, "eval_every": 0, "sampler.steps": 2, "sampler.cfg": 2.0,
          "eval_sampler.steps": 2, "data.corpus": corpus, "data.duration": 1.0,
          "reward": json.dumps({"name": "per_song_fad", "encoder": "codec",
                                "exemplars": {"audio_dir": str(corpus / "audio")}}),
          "watch": json.dumps([{"name": "vendi", "encoder": "codec"}])}
    final = finetune(load_config(DragonConfig, None, [f"{k}={v}" for k, v in ov.items()]))
    evaluate_models(base, final, prompts, ["per_song_fad/codec/piano", "vendi/codec"], corpus=corpus,
                    sampler=SamplerConfig(steps=2, cfg=2.0), out_dir=run / "eval", n_boot=20, n_audio=2,
                    cache_dir=tmp_path / "cache")
    page = write_report(run).read_text()
    assert '<div class="missing">' not in page, re.findall(r'<div class="missing">(.*?)</div>', page)
    for needle in ("per_song_fad/codec/piano", "vendi/codec", "a soft piano melody", "implicit accuracy",
                   "2 rounds of demonstrations"):
        assert needle in page, needle
    assert page.count("data:audio/wav;base64,") == 4 and page.count("data:image/png;base64,") >= 3


def test_report_leads_with_the_result(tmp_path):
    run = make_run(tmp_path / "run")
    page = write_report(run).read_text()
    order = [page.index(x) for x in ('id="headline"', 'id="listen"', "Win rates: fine-tuned vs baseline",
                                     "<h2>Reward curves", "<h2>Demonstrations", "<h2>Configuration")]
    assert order == sorted(order), order
    head = page[page.index('id="headline"'):page.index("</section>")]
    # target before -> after and its win rate; the side effect that moved (vendi, interval below 50 %)
    assert "per_song_fad/codec/piano" in head and "improved" in head and "-5 → <b>-4.2</b>" in head
    assert "75.0% [53.0%, 89.0%]" in head
    # vendi is a set reward: its bootstrap difference interval [-0.4, 0.1] includes 0, so it has not moved
    assert "none of the other rewards moved (1 evaluated)" in head
    assert "No listening test yet" in head and "dragontune listen" in head
    # audio pairs side by side with a spectrogram per clip
    listen_sec = page[page.index('id="listen"'):page.index("Win rates: fine-tuned")]
    assert listen_sec.count("<audio") == 4 and listen_sec.count('alt="spectrogram') == 4
    # the direction is read, not assumed: a worse target says so
    ev_path = run / "eval" / "eval.json"
    ev = json.loads(ev_path.read_text())
    ev["rewards"][0].update(win_rate=0.2, lo=0.08, hi=0.41, after=-5.9)
    ev["rewards"][1].update(diff_lo=-0.4, diff_hi=-0.05)
    ev_path.write_text(json.dumps(ev))
    head = write_report(run).read_text().split('id="headline"')[1].split("</section>")[0]
    assert "worse" in head and "20.0% [8.0%, 41.0%]" in head
    assert "▼ <code>vendi/codec</code> difference -0.2 [95% -0.4, -0.05]; bootstrap win share 30% (3 → 2.8)" in head
    ev["rewards"][0].update(win_rate=0.55, lo=0.33, hi=0.75)
    ev["rewards"][1].update(diff_lo=0.05, diff_hi=0.4)
    ev_path.write_text(json.dumps(ev))
    head = write_report(run).read_text().split('id="headline"')[1].split("</section>")[0]
    assert "no clear change" in head and "▲ <code>vendi/codec</code>" in head


def test_report_headline_shows_the_listening_test(tmp_path):
    from dragontune.listen import open_store

    run = make_run(tmp_path / "run")
    store = open_store(run)
    for i, want in enumerate(["model", "model", "baseline", "tie"]):
        t = store.next_trial(f"l{i // 2}", "Which is better?")
        choice = "none" if want == "tie" else ("A" if t["a_is"] == want else "B")
        store.record_vote(store.trial(t["trial"]), choice, 1.0, 1.0)
    page = write_report(run).read_text()
    head = page.split('id="headline"')[1].split("</section>")[0]
    assert "human win rate 62.5%" in head and "4 votes: fine-tuned 2, baseline 1, no preference 1" in head
    assert "<h2>Listening test</h2>" in page
    # a listening database of other clips is reported, not mixed in
    (run / "eval" / "audio" / "000-model.wav").write_bytes((run / "eval" / "audio" / "001-model.wav").read_bytes())
    page = write_report(run).read_text()
    assert "Listening test not read" in page and "belongs to another run" in page


def _suite(root):
    names = ["per_song_fad/codec/piano", "vendi/codec", "fad/codec/piano"]
    specs = {n: {"name": n.split("/")[0], "encoder": "codec"} for n in names}
    table = {  # win rate of the run trained on row-reward, evaluated on column-reward
        "per_song_fad/codec/piano": [0.8, 0.3, 0.6],
        "vendi/codec": [0.45, 0.9, 0.5],
        "fad/codec/piano": [0.7, 0.5, 0.6],
    }
    for rname, wrs in table.items():
        run = make_run(root / rname.replace("/", "_"), rounds=2, with_demos=False)
        (run / "config.yaml").write_text(f"reward: {json.dumps(specs[rname])}\nrounds: 2\n")
        ev = json.loads((run / "eval" / "eval.json").read_text())
        ev["rewards"] = [{"name": n, "reward": specs[n]["name"], "spec": specs[n], "reward_class": "instance",
                          "method": "instance", "win_rate": w, "lo": w - 0.12, "hi": w + 0.12, "n": 20,
                          "before": 1.0, "after": 1.0 + w} for n, w in zip(names, wrs)]
        for r in ev["rewards"]:  # vendi is a set reward: bootstrap win share and the difference's interval
            if r["name"] == "vendi/codec":
                w = r["win_rate"]
                r.update(reward_class="dist_to_dist", method="bootstrap", lo=None, hi=None, n_clips=20,
                         diff_mean=w - 0.5, diff_lo=w - 0.7, diff_hi=w - 0.3, after=1.0 + w - 0.5)
        (run / "eval" / "eval.json").write_text(json.dumps(ev))
    return names, table


def test_suite_report(tmp_path):
    names, table = _suite(tmp_path / "suite")
    out = write_report(tmp_path / "suite")
    assert out == tmp_path / "suite" / "report.html"
    page = out.read_text()
    assert "DRAGON suite report" in page and 'alt="win rate per reward (radar)"' in page
    # mean over the diagonal; 2 of 3 intervals above 50 %
    assert f"{100 * (0.8 + 0.9 + 0.6) / 3:.1f}%" in page and "2 of 3 runs beat the baseline" in page
    rows = re.findall(r'<tr data-run="([^"]+)">(.*?)</tr>', page)
    # rows and columns in the order of dragontune.rewards.suite.DEFAULT_SUITE: the diagonal runs down
    order = ["per_song_fad/codec/piano", "fad/codec/piano", "vendi/codec"]
    assert [r for r, _ in rows] == [n.replace("/", "_") for n in order]
    for run_name, cells in rows:
        trained = next(n for n in names if n.replace("/", "_") == run_name)
        got = dict(re.findall(r'data-reward="([^"]+)">([^<]+)</td>', cells))
        want = {n: f"{100 * w:.0f}%" for n, w in zip(names, table[trained])}
        want["vendi/codec"] = f"Δ{table[trained][1] - 0.5:+.2g}"
        assert got == want
        diag = re.findall(r'class="cell diag[^"]*"[^>]*data-reward="([^"]+)"', cells)
        assert diag == [trained]
        assert f'href="{run_name}/report.html"' in cells
        assert (tmp_path / "suite" / run_name / "report.html").is_file()
    assert re.findall(r"<th class=small>([^<]+)</th>", page) == order
    # vendi trained on itself: difference [0.2, 0.6] excludes 0 (bold); the fad run's vendi [-0.2, 0.2] does not
    assert re.search(r'class="cell diag sig"[^>]*data-reward="vendi/codec">Δ\+0.4<', page)
    assert re.search(r'class="cell"[^>]*title="difference 0 \[95% -0.2, 0.2\]', page)
    vendi_run = (tmp_path / "suite" / "vendi_codec" / "report.html").read_text()
    assert "set score difference 0.4 [95% 0.2, 0.6]" in vendi_run.split("</section>")[0]
    for attr in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert attr.startswith("data:") or attr.endswith("/report.html"), attr[:80]
    from dragontune.errors import DataError
    from dragontune.report import write_suite_report

    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="holds no run directories"):
        write_suite_report(tmp_path / "nothing")


def test_report_headline_is_above_the_fold(tmp_path):
    from cdp import Chromium, skip_reason

    if skip_reason():
        pytest.skip(skip_reason())
    from matplotlib import image

    run = make_run(tmp_path / "run")
    out = write_report(run)
    with Chromium(tmp_path / "profile", width=1280, height=800) as b:
        b.navigate(out.as_uri())
        vh = b.eval("window.innerHeight")
        rect = b.eval("(function(){var r=document.getElementById('headline').getBoundingClientRect();"
                      "return {top:r.top, bottom:r.bottom, left:r.left, right:r.right};})()")
        cfg_top = b.eval("Array.from(document.querySelectorAll('h2')).find(h => h.textContent === 'Configuration')"
                         ".getBoundingClientRect().top")
        text = b.eval("document.getElementById('headline').innerText")
        png = b.screenshot()
    assert vh == 800 and 0 <= rect["top"] and rect["bottom"] <= vh, rect
    assert cfg_top > vh  # the configuration comes last, below the fold
    assert "75.0% [53.0%, 89.0%]" in text and "Side effects" in text
    shot = tmp_path / "shot.png"
    shot.write_bytes(png)
    img = (image.imread(shot)[..., :3] * 255).round()
    assert img.shape[:2] == (800, 1280)
    box = img[int(rect["top"]) + 4:int(rect["bottom"]) - 4, int(rect["left"]) + 4:int(rect["right"]) - 4]
    bg = (abs(box - [0xEE, 0xF3, 0xFB]).sum(axis=2) < 6).mean()
    dark = (box.sum(axis=2) < 200).mean()
    assert bg > 0.6 and dark > 0.01, (bg, dark)  # the headline's box is painted, with text in it
