"""Blind A/B listening test over an evaluation's audio pairs: `dragontune listen RUN_OR_EVAL_DIR`.

The evaluation (:func:`dragontune.evaluate.evaluate_models` with ``out_dir``) saves, per prompt, the baseline
and the fine-tuned clip made with the same seed (``audio/index.json``). This module serves a page that plays
one pair at a time in a random order hidden from the listener (A/B), asks which is better (or no
preference), and stores each vote in SQLite (``listen.sqlite`` in the evaluation folder):

* ``trials``: one row per (listener, pair, question) shown: which clip was A; made when the page asks for
  the next pair, so the order survives a reload or a server restart;
* ``votes``: pair, prompt, seed, question, listener, choice (A / B / none), the clip preferred (model /
  baseline / tie), seconds listened to A and B, time (UTC); one vote per listener, pair and question;
* ``meta``: the identity of the clips (model, baseline, a fingerprint of every pair's files); a database
  made for other clips is refused, so no vote is ever counted for a clip it was not cast on.

Results (:func:`listening_results`): the paper's columns (win rate with the tie rule stated, Wilson 95 %
interval and lower bound, binomial p-value against 50 %, P(win rate > 50 %)) overall and per prompt, per
question; as a table (:func:`format_results`), CSV (:func:`results_csv`) and the server's ``/results`` page.

Server: standard library only (``ThreadingHTTPServer``), one SQLite connection per request (WAL), so
several listeners can vote at once. Requests are checked before anything is written: malformed ones get
400/404/405/409/411/413/415 and write nothing.
"""

from __future__ import annotations

import csv
import datetime as _dt
import errno
import hashlib
import html
import io
import json
import math
import os
import random
import re
import secrets
import socket
import sqlite3
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dragontune.errors import ConfigError, DataError
from dragontune.preference_stats import TIE_RULES, preference_stats
from dragontune.utils import atomic_write_text, dumps_strict, log

DB_NAME = "listen.sqlite"
DEFAULT_PORT = 8765
DEFAULT_QUESTION = "Which clip is better?"
SCHEMA_VERSION = "dragontune-listen-1"
MAX_BODY = 16 * 1024
#: the vote buttons open once each clip has played to its end or for this many seconds
MIN_LISTEN_S = 3.0
_LISTENER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.@+-]{0,63}$")
_TRIAL_RE = re.compile(r"^[0-9a-f]{32}$")

_MAKE_CLIPS = ("They are written by `dragontune eval --model RUN/model.safetensors --out RUN/eval --n-audio 24` "
               "(baseline and fine-tuned clip per prompt, same seed; --n-audio sets how many pairs are saved) and by "
               "`dragontune demo` (runs/demo/eval).")


# ----------------------------------------------------------------------------------------------------------
# the clips


@dataclass(frozen=True)
class Pair:
    id: str
    prompt: str
    seed: int | None
    baseline: Path
    model: Path


@dataclass(frozen=True)
class EvalClips:
    folder: Path
    model: str
    baseline: str
    pairs: tuple[Pair, ...]
    fingerprint: str

    def pair(self, pair_id: str) -> Pair | None:
        return next((p for p in self.pairs if p.id == pair_id), None)

    def describe(self) -> str:
        return (f"model {self.model} vs baseline {self.baseline} ({len(self.pairs)} pairs in {self.folder}, "
                f"clips fingerprint {self.fingerprint[:12]})")


def find_eval_folder(path: str | os.PathLike) -> Path:
    """The evaluation folder of a run directory (``RUN/eval``) or the evaluation folder itself."""
    p = Path(path)
    if not p.is_dir():
        raise DataError(f"{str(p)!r} is not a directory; give a run directory or an evaluation folder "
                        f"(the --out of `dragontune eval`). {_MAKE_CLIPS}")
    for cand in (p, p / "eval"):
        if (cand / "eval.json").is_file() or (cand / "audio" / "index.json").is_file():
            return cand
    raise DataError(f"no evaluation clips in {str(p)!r}: neither {p / 'eval.json'} nor {p / 'eval' / 'eval.json'} "
                    f"(with audio/index.json) exists. {_MAKE_CLIPS}")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not readable JSON ({e}); re-run the evaluation that wrote it. {_MAKE_CLIPS}") \
            from None


def load_eval_clips(path: str | os.PathLike) -> EvalClips:
    """Read and check the audio pairs of an evaluation (every file must exist and be readable audio)."""
    import soundfile as sf

    folder = find_eval_folder(path)
    ev = _read_json(folder / "eval.json") if (folder / "eval.json").is_file() else {}
    index = folder / ((ev.get("audio") or {}).get("index") or "audio/index.json")
    raw = _read_json(index).get("pairs") if index.is_file() else (ev.get("audio") or {}).get("pairs")
    if not raw:
        raise DataError(f"no evaluation clips in {folder}: {index if index.is_file() else folder / 'eval.json'} "
                        f"lists no audio pairs (the evaluation ran with n_audio=0). {_MAKE_CLIPS}")
    pairs, digest = [], hashlib.sha256()
    for k, r in enumerate(raw):
        if not isinstance(r, dict) or not r.get("baseline") or not r.get("model"):
            raise DataError(f"{index}: pair {k} has no 'baseline'/'model' file; re-run the evaluation. {_MAKE_CLIPS}")
        pid = str(r.get("index", k))
        files = []
        for key in ("baseline", "model"):
            f = folder / str(r[key])
            if not f.is_file():
                raise DataError(f"{index}: pair {pid} ({key}) names {f}, which does not exist; re-run the "
                                f"evaluation. {_MAKE_CLIPS}")
            try:
                sf.info(str(f))
            except Exception as e:  # soundfile raises several types for undecodable data
                raise DataError(f"{f} (pair {pid}, {key}) is not readable audio ({e}); re-run the evaluation") from None
            files.append(f)
        seed = r.get("seed")
        pairs.append(Pair(pid, str(r.get("prompt", "")), int(seed) if isinstance(seed, int) else None, *files))
        digest.update(json.dumps([pid, pairs[-1].prompt, seed]).encode())
        for f in files:
            digest.update(hashlib.sha256(f.read_bytes()).digest())
    ids = [p.id for p in pairs]
    if len(set(ids)) != len(ids):
        raise DataError(f"{index}: pair indices repeat ({ids}); re-run the evaluation")
    def n_clip(r: dict, key: str) -> int:
        v = r.get(f"clipped_{key}")
        return v if isinstance(v, int) and not isinstance(v, bool) else 0

    clipped = [f"{r.get('index', k)} ({n_clip(r, 'baseline')} baseline / {n_clip(r, 'model')} model samples)"
               for k, r in enumerate(raw) if n_clip(r, "baseline") + n_clip(r, "model") > 0]
    if clipped:  # listeners hear the clipped files: say so before they judge them
        log.warning("listen: %d of %d pairs were clipped when the evaluation saved them: pair %s", len(clipped),
                    len(raw), ", ".join(clipped[:10]) + (" ..." if len(clipped) > 10 else ""))
    return EvalClips(folder, str(ev.get("model", "(unknown model)")), str(ev.get("baseline", "(unknown baseline)")),
                     tuple(pairs), digest.hexdigest())


# ----------------------------------------------------------------------------------------------------------
# the vote store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
  id TEXT PRIMARY KEY, pair TEXT NOT NULL, listener TEXT NOT NULL, question TEXT NOT NULL,
  a_is TEXT NOT NULL CHECK (a_is IN ('model', 'baseline')), created TEXT NOT NULL,
  UNIQUE (listener, pair, question));
CREATE TABLE IF NOT EXISTS votes (
  id INTEGER PRIMARY KEY AUTOINCREMENT, trial TEXT NOT NULL UNIQUE REFERENCES trials(id),
  pair TEXT NOT NULL, prompt TEXT NOT NULL, seed INTEGER, question TEXT NOT NULL, listener TEXT NOT NULL,
  choice TEXT NOT NULL CHECK (choice IN ('A', 'B', 'none')),
  preferred TEXT NOT NULL CHECK (preferred IN ('model', 'baseline', 'tie')),
  a_is TEXT NOT NULL, listened_a REAL, listened_b REAL, created TEXT NOT NULL,
  UNIQUE (listener, pair, question));
"""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


class VoteStore:
    """The SQLite database of one listening test; bound to the clips it was made for."""

    def __init__(self, db_path: str | os.PathLike, clips: EvalClips, create: bool = True):
        self.path = Path(db_path)
        self.clips = clips
        if not self.path.is_file() and not create:
            raise DataError(f"no listening database {self.path}: no votes yet; start the test with "
                            f"`dragontune listen {clips.folder}`")
        try:
            with self._connect() as con:
                con.executescript(_SCHEMA)
                meta = dict(con.execute("SELECT key, value FROM meta"))
                if not meta:
                    con.executemany("INSERT INTO meta VALUES (?, ?)", [
                        ("schema", SCHEMA_VERSION), ("fingerprint", clips.fingerprint), ("model", clips.model),
                        ("baseline", clips.baseline), ("folder", str(clips.folder.resolve())),
                        ("pairs", json.dumps([p.id for p in clips.pairs])), ("created", _now())])
        except sqlite3.OperationalError as e:
            raise DataError(f"cannot open or write the listening database {self.path} ({e}); pass --db PATH in a "
                            "writable folder") from None
        except sqlite3.DatabaseError as e:
            raise DataError(f"{self.path} is not a listening database ({e}); move it aside to start a new test "
                            "(or pass --db NEW.sqlite)") from None
        if meta and (meta.get("schema") != SCHEMA_VERSION or meta.get("fingerprint") != clips.fingerprint):
            raise DataError(
                f"listening database {self.path} belongs to another run: it holds votes for model "
                f"{meta.get('model', '?')} vs baseline {meta.get('baseline', '?')} (folder {meta.get('folder', '?')}, "
                f"clips fingerprint {str(meta.get('fingerprint', '?'))[:12]}), but this folder has "
                f"{clips.describe()}. Its votes were cast on other clips and are not mixed in: move {self.path.name} "
                "aside (or pass --db NEW.sqlite) to start a new test here, or point `dragontune listen` at the "
                "folder it was made for.")

    def _connect(self) -> "_Tx":
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA foreign_keys=ON")
        return _Tx(con)

    def next_trial(self, listener: str, question: str, rng: random.Random | None = None) -> dict | None:
        """The listener's open trial for ``question``, else a new one for a pair this listener has not been
        shown, among those shown least often (random order A/B); ``None`` when every pair is done."""
        rng = rng or random.SystemRandom()
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            row = con.execute("SELECT t.id, t.pair, t.a_is FROM trials t LEFT JOIN votes v ON v.trial = t.id "
                              "WHERE t.listener = ? AND t.question = ? AND v.id IS NULL ORDER BY t.created LIMIT 1",
                              (listener, question)).fetchone()
            if row is None:
                seen = {r[0] for r in con.execute("SELECT pair FROM trials WHERE listener = ? AND question = ?",
                                                  (listener, question))}
                todo = [p.id for p in self.clips.pairs if p.id not in seen]
                if not todo:
                    return None
                # balance over pairs shown (voted or still open), so concurrent listeners spread out
                counts = dict(con.execute("SELECT pair, COUNT(*) FROM trials WHERE question = ? GROUP BY pair",
                                          (question,)))
                fewest = min(counts.get(p, 0) for p in todo)
                pair = rng.choice([p for p in todo if counts.get(p, 0) == fewest])
                row = (secrets.token_hex(16), pair, rng.choice(("model", "baseline")))
                con.execute("INSERT INTO trials (id, pair, a_is, listener, question, created) VALUES (?, ?, ?, ?, ?, ?)",
                            (*row, listener, question, _now()))
        tid, pair_id, a_is = row
        return {"trial": tid, "pair": pair_id, "a_is": a_is}

    def trial(self, trial_id: str) -> dict | None:
        with self._connect() as con:
            r = con.execute("SELECT id, pair, listener, question, a_is FROM trials WHERE id = ?", (trial_id,)).fetchone()
        return dict(zip(("trial", "pair", "listener", "question", "a_is"), r)) if r else None

    def record_vote(self, trial: dict, choice: str, listened_a: float | None, listened_b: float | None) -> dict:
        """Write one vote of an existing trial; raises ``sqlite3.IntegrityError`` if it was already voted."""
        p = self.clips.pair(trial["pair"])
        if choice == "none":
            preferred = "tie"
        else:
            preferred = trial["a_is"] if choice == "A" else ("baseline" if trial["a_is"] == "model" else "model")
        row = (trial["trial"], p.id, p.prompt, p.seed, trial["question"], trial["listener"], choice, preferred,
               trial["a_is"], listened_a, listened_b, _now())
        with self._connect() as con:
            con.execute("INSERT INTO votes (trial, pair, prompt, seed, question, listener, choice, preferred, a_is, "
                        "listened_a, listened_b, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
        return {"pair": p.id, "preferred": preferred}

    def votes(self) -> list[dict]:
        with self._connect() as con:
            cur = con.execute("SELECT * FROM votes ORDER BY id")
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, r)) for r in cur.fetchall()]

    def progress(self, listener: str, question: str) -> dict:
        with self._connect() as con:
            done = con.execute("SELECT COUNT(*) FROM votes WHERE listener = ? AND question = ?",
                               (listener, question)).fetchone()[0]
        return {"done": int(done), "total": len(self.clips.pairs)}


class _Tx:
    """``with`` on a connection in autocommit mode: commit an open transaction (or roll back) and close."""

    def __init__(self, con: sqlite3.Connection):
        self.con = con

    def __getattr__(self, k):
        return getattr(self.con, k)

    def __enter__(self):
        return self.con

    def __exit__(self, exc_type, *_):
        try:
            if self.con.in_transaction:
                self.con.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.con.close()


def open_store(path: str | os.PathLike, db: str | os.PathLike | None = None, create: bool = True) -> VoteStore:
    clips = load_eval_clips(path)
    return VoteStore(Path(db) if db is not None else clips.folder / DB_NAME, clips, create=create)


# ----------------------------------------------------------------------------------------------------------
# results


def listening_results(store: VoteStore, tie_rule: str = "half") -> dict:
    """Per question: the overall statistics and one row per prompt (all its pairs: one per seed), from every
    vote in ``store``."""
    if tie_rule not in TIE_RULES:
        raise ConfigError(f"tie rule {tie_rule!r} must be one of {', '.join(TIE_RULES)}")
    votes = store.votes()
    questions = list(dict.fromkeys(v["question"] for v in votes))
    out = []
    for q in questions:
        vq = [v for v in votes if v["question"] == q]

        def count(vs):
            return {"wins": sum(v["preferred"] == "model" for v in vs),
                    "losses": sum(v["preferred"] == "baseline" for v in vs),
                    "ties": sum(v["preferred"] == "tie" for v in vs)}

        per = []  # one row per prompt (an evaluation with several seeds per prompt has several pairs for it)
        for prompt in dict.fromkeys(p.prompt for p in store.clips.pairs):
            pp = [p for p in store.clips.pairs if p.prompt == prompt]
            ids = {p.id for p in pp}
            vp = [v for v in vq if v["pair"] in ids]
            seeds = [p.seed for p in pp]
            per.append({"prompt": prompt, "pairs": [p.id for p in pp], "seeds": seeds,
                        "pair": ";".join(p.id for p in pp),
                        "seed": seeds[0] if len(seeds) == 1 else ";".join(str(x) for x in seeds),
                        **preference_stats(**count(vp), tie_rule=tie_rule)})
        out.append({"question": q, "listeners": len({v["listener"] for v in vq}),
                    "overall": preference_stats(**count(vq), tie_rule=tie_rule), "per_prompt": per})
    return {"model": store.clips.model, "baseline": store.clips.baseline, "folder": str(store.clips.folder),
            "database": str(store.path), "n_pairs": len(store.clips.pairs), "n_votes": len(votes),
            "tie_rule": tie_rule, "questions": out}


TIE_RULE_TEXT = {
    "half": "a \"no preference\" vote counts one half of a win (as the reward win rates count ties)",
    "drop": "\"no preference\" votes are left out (sign test on the decisive votes)",
}

CSV_COLUMNS = ["question", "scope", "pair", "prompt", "seed", "votes", "fine_tuned_preferred", "baseline_preferred",
               "no_preference", "tie_rule", "n", "win_rate", "ci95_lo", "ci95_hi", "p_value_two_sided",
               "p_value_greater", "p_win_rate_above_half"]


def _csv_row(q: str, scope: str, r: dict, pair: str = "", prompt: str = "", seed: Any = "") -> list:
    f = lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(float(v))  # noqa: E731
    return [q, scope, pair, prompt, seed if seed is not None else "", r["votes"], r["wins"], r["losses"], r["ties"],
            r["tie_rule"], r["n"], f(r["win_rate"]), f(r["lo"]), f(r["hi"]), f(r["p_value"]), f(r["p_greater"]),
            f(r["p_better"])]


def results_csv(res: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for q in res["questions"]:
        w.writerow(_csv_row(q["question"], "overall", q["overall"]))
        for r in q["per_prompt"]:
            w.writerow(_csv_row(q["question"], "prompt", r, r["pair"], r["prompt"], r["seed"]))
    return buf.getvalue()


def _n(k: int, noun: str) -> str:
    return f"{k} {noun}{'' if k == 1 else 's'}"


def _pct(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _p(v: float) -> str:
    return f"{v:.3g}"


def headline(r: dict) -> str:
    """One line: win rate [interval], p, P(>50 %), votes."""
    return (f"human win rate {_pct(r['win_rate'])} [95% {_pct(r['lo'])}, {_pct(r['hi'])}], lower bound "
            f"{_pct(r['lo'])}, p = {_p(r['p_value'])} (two-sided binomial vs 50%), P(win rate > 50%) = "
            f"{r['p_better']:.3f}; {_n(r['votes'], 'vote')}: fine-tuned {r['wins']}, baseline {r['losses']}, "
            f"no preference {r['ties']}")


def format_results(res: dict) -> str:
    lines = [f"listening test: model {res['model']} vs baseline {res['baseline']}; {_n(res['n_votes'], 'vote')} on "
             f"{_n(res['n_pairs'], 'pair')} ({res['database']})", f"tie rule: {TIE_RULE_TEXT[res['tie_rule']]}"]
    if not res["questions"]:
        lines.append(f"no votes yet: start the test with `dragontune listen {res['folder']}`")
    for q in res["questions"]:
        o = q["overall"]
        lines += ["", f"question: {q['question']}  ({_n(q['listeners'], 'listener')})", "overall: " + headline(o), ""]
        head = ["prompt", "seed", "votes", "FT/base/none", "win rate", "95% interval", "p", "P(>50%)"]
        rows = [head] + [[r["prompt"][:48], str(r["seed"]), str(r["votes"]), f"{r['wins']}/{r['losses']}/{r['ties']}",
                          _pct(r["win_rate"]), f"[{_pct(r['lo'])}, {_pct(r['hi'])}]", _p(r["p_value"]),
                          f"{r['p_better']:.3f}"] for r in q["per_prompt"]]
        w = [max(len(r[j]) for r in rows) for j in range(len(head))]
        lines += ["  ".join(c.ljust(w[j]) for j, c in enumerate(r)).rstrip() for r in rows]
    return "\n".join(lines)


def write_results_csv(res: dict, path: str | os.PathLike) -> Path:
    atomic_write_text(path, results_csv(res))
    return Path(path)


# ----------------------------------------------------------------------------------------------------------
# pages

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:900px;
padding:0 1em;color:#1d1d1f;line-height:1.45}
.prompt{font-size:1.2em;background:#f4f4f6;padding:.6em .8em;border-radius:6px}
.clips{display:flex;gap:2em;flex-wrap:wrap;margin:1em 0}.clip{min-width:300px}
.clip h3{margin:.2em 0}button{font-size:1em;padding:.5em 1.1em;margin:.2em;cursor:pointer}
button:disabled{cursor:not-allowed;opacity:.5}#status{color:#a00;min-height:1.4em}
table{border-collapse:collapse;font-size:.92em}th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f4f4f6}td.num{text-align:right;font-variant-numeric:tabular-nums}.small{color:#666;font-size:.88em}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Listening test</title><style>__CSS__</style></head>
<body>
<h1>Listening test</h1>
<p class="small">Two clips made from the same text prompt by two models, in a random order. Play both, then say which
is better. Listener: <input id="listener" size="20" maxlength="64"> <span id="progress"></span></p>
<h2 id="question">__QUESTION__</h2>
<div id="trial" hidden>
  <p class="prompt">Prompt: <span id="prompt"></span></p>
  <div class="clips">
    <div class="clip"><h3>A</h3><button id="play-a">Play A</button><br><audio id="audio-a" controls preload="auto"></audio></div>
    <div class="clip"><h3>B</h3><button id="play-b">Play B</button><br><audio id="audio-b" controls preload="auto"></audio></div>
  </div>
  <p class="small" id="hint">Play both clips (each to its end, or for __MIN_LISTEN__ seconds) to vote.</p>
  <div><button id="vote-a" disabled>A is better</button><button id="vote-none" disabled>No preference</button>
  <button id="vote-b" disabled>B is better</button></div>
</div>
<div id="done" hidden><p>You have judged every pair for this question. Thank you.</p></div>
<p id="status" role="status"></p>
<p class="small"><a href="/results">Results</a></p>
<script>
(function () {
  var el = function (id) { return document.getElementById(id); };
  var key = 'dragontune-listener';
  var listener = localStorage.getItem(key);
  if (!listener) { listener = 'l-' + Math.random().toString(36).slice(2, 10); localStorage.setItem(key, listener); }
  el('listener').value = listener;
  var MIN_LISTEN_S = __MIN_LISTEN__;
  var cur = null, played = {a: false, b: false}, heard = {a: 0, b: 0}, busy = false;
  function status(msg) { el('status').textContent = msg || ''; }
  function canVote() {
    var ok = cur && played.a && played.b && !busy;
    ['vote-a', 'vote-b', 'vote-none'].forEach(function (id) { el(id).disabled = !ok; });
    el('hint').hidden = !!(played.a && played.b);
  }
  function post(url, body) {
    return fetch(url, {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)})
      .then(function (r) { return r.json().then(function (j) { if (!r.ok) { throw new Error(j.error || r.status); } return j; }); });
  }
  function show(j) {
    el('progress').textContent = j.progress ? ('(' + j.progress.done + ' of ' + j.progress.total + ' judged)') : '';
    if (j.done) { cur = null; el('trial').hidden = true; el('done').hidden = false; document.body.dataset.state = 'done'; return; }
    cur = j; played = {a: false, b: false}; heard = {a: 0, b: 0};
    el('prompt').textContent = j.prompt;
    el('audio-a').src = j.a; el('audio-b').src = j.b;
    el('trial').hidden = false; el('done').hidden = true; canVote();
    document.body.dataset.state = 'trial'; document.body.dataset.trial = j.trial;
  }
  function next() {
    status('');
    return post('/api/next', {listener: listener}).then(show).catch(function (e) { status('Could not load the next pair: ' + e.message); });
  }
  ['a', 'b'].forEach(function (s) {
    var a = el('audio-' + s), other = el('audio-' + (s === 'a' ? 'b' : 'a'));
    function enough() {  // heard to its end, or for MIN_LISTEN_S seconds
      if (!played[s] && (a.ended || heard[s] >= Math.min(MIN_LISTEN_S, (a.duration || 1e9) - 0.05))) { played[s] = true; canVote(); }
    }
    a.addEventListener('playing', function () { other.pause(); });
    a.addEventListener('timeupdate', function () { heard[s] = Math.max(heard[s], a.currentTime); enough(); });
    a.addEventListener('ended', function () { heard[s] = Math.max(heard[s], a.duration || 0); enough(); });
    a.addEventListener('error', function () { status('Clip ' + s.toUpperCase() + ' could not be played.'); });
    el('play-' + s).addEventListener('click', function () {
      other.pause(); a.currentTime = 0;
      a.play().catch(function (e) { status('Playback failed: ' + e.message); });
    });
  });
  function vote(choice) {
    if (!cur) { return; }
    busy = true; canVote();
    el('audio-a').pause(); el('audio-b').pause();
    post('/api/vote', {trial: cur.trial, pair: cur.pair, listener: listener, choice: choice,
                       listened_a: heard.a, listened_b: heard.b})
      .then(function () { busy = false; return next(); })
      .catch(function (e) { busy = false; canVote(); status('Vote not saved: ' + e.message); });
  }
  el('vote-a').addEventListener('click', function () { vote('A'); });
  el('vote-b').addEventListener('click', function () { vote('B'); });
  el('vote-none').addEventListener('click', function () { vote('none'); });
  el('listener').addEventListener('change', function () {
    var v = el('listener').value.trim();
    if (!/^[A-Za-z0-9][A-Za-z0-9 _.@+-]{0,63}$/.test(v)) { status('Listener name: letters, digits, space, _ . @ + - (up to 64)'); return; }
    listener = v; localStorage.setItem(key, v); next();
  });
  next();
})();
</script>
</body></html>
"""


def listening_page(question: str) -> str:
    return (_PAGE.replace("__CSS__", _CSS).replace("__QUESTION__", html.escape(question))
            .replace("__MIN_LISTEN__", f"{MIN_LISTEN_S:g}"))


def results_page(res: dict) -> str:
    e = lambda x: html.escape(str(x), quote=True)  # noqa: E731
    parts = [f"<h1>Listening test results</h1><p class=small>model <code>{e(res['model'])}</code> vs baseline "
             f"<code>{e(res['baseline'])}</code>; {_n(res['n_votes'], 'vote')} on {_n(res['n_pairs'], 'pair')}. Win rate = share "
             f"of votes preferring the fine-tuned clip; tie rule: {e(TIE_RULE_TEXT[res['tie_rule']])}. Interval: "
             "Wilson 95%; p: two-sided exact binomial test against 50%; P(&gt;50%): posterior probability that the "
             "win rate exceeds 50% under a uniform Beta prior. <a href=\"/results.csv\">CSV</a></p>"]
    if not res["questions"]:
        parts.append("<p id=\"no-votes\">No votes yet.</p>")
    head = ("<tr><th>prompt</th><th>seed</th><th>votes</th><th>fine-tuned</th><th>baseline</th><th>no pref.</th>"
            "<th>win rate</th><th>95% interval</th><th>lower bound</th><th>p</th><th>P(&gt;50%)</th></tr>")

    def row(r: dict, label: str, seed: Any, cls: str) -> str:
        return (f"<tr class=\"{cls}\" data-pair=\"{e(r.get('pair', ''))}\"><td>{e(label)}</td><td class=small>{e(seed)}</td>"
                f"<td class=num data-k=votes>{r['votes']}</td><td class=num data-k=wins>{r['wins']}</td>"
                f"<td class=num data-k=losses>{r['losses']}</td><td class=num data-k=ties>{r['ties']}</td>"
                f"<td class=num data-k=win_rate data-v=\"{r['win_rate']!r}\">{_pct(r['win_rate'])}</td>"
                f"<td class=num>[{_pct(r['lo'])}, {_pct(r['hi'])}]</td>"
                f"<td class=num data-k=lower_bound data-v=\"{r['lo']!r}\">{_pct(r['lo'])}</td>"
                f"<td class=num data-k=p_value data-v=\"{r['p_value']!r}\">{_p(r['p_value'])}</td>"
                f"<td class=num data-k=p_better data-v=\"{r['p_better']!r}\">{r['p_better']:.3f}</td></tr>")

    for q in res["questions"]:
        body = [row(q["overall"], "all prompts", "", "overall")]
        body += [row(r, r["prompt"], r["seed"] if r["seed"] is not None else "", "per-prompt") for r in q["per_prompt"]]
        parts.append(f"<h2 class=question>{e(q['question'])}</h2><p class=small>{_n(q['listeners'], 'listener')}</p>"
                     f"<table data-question=\"{e(q['question'])}\">{head}{''.join(body)}</table>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Listening test results</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}<p class=small><a href=\"/\">Back to the test</a></p>"
            "</body></html>\n")


# ----------------------------------------------------------------------------------------------------------
# the server


class ClientError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ListenServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False  # a second server on a busy port must fail, not share it

    def __init__(self, store: VoteStore | None, host: str, port: int, question: str, tie_rule: str = "half"):
        self.store, self.question, self.tie_rule = store, question, tie_rule
        self.page = listening_page(question).encode("utf-8")
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


class _Handler(BaseHTTPRequestHandler):
    server: ListenServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # the terminal shows votes, not every request
        log.debug("listen: %s - %s", self.address_string(), fmt % args)

    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, dumps_strict(obj).encode("utf-8"), "application/json")  # NaN -> null: JSON.parse rejects NaN

    def _fail(self, e: ClientError) -> None:
        self._json(e.status, {"error": str(e)})

    def _internal(self, e: Exception) -> None:
        log.error("listen: %s %s failed: %s: %s", self.command, self.path, type(e).__name__, e, exc_info=True)
        self._json(500, {"error": f"server error ({type(e).__name__}); see the server's terminal"})

    # -- GET

    def do_GET(self) -> None:
        try:
            path = urlsplit(self.path).path
            if path in ("/", "/index.html"):
                return self._send(200, self.server.page, "text/html; charset=utf-8")
            if path == "/results":
                res = listening_results(self.server.store, self.server.tie_rule)
                return self._send(200, results_page(res).encode("utf-8"), "text/html; charset=utf-8")
            if path == "/results.csv":
                res = listening_results(self.server.store, self.server.tie_rule)
                return self._send(200, results_csv(res).encode("utf-8"), "text/csv; charset=utf-8",
                                  {"Content-Disposition": 'attachment; filename="listening-results.csv"'})
            if path == "/api/results":
                return self._json(200, listening_results(self.server.store, self.server.tie_rule))
            m = re.fullmatch(r"/clip/([^/]+)/(a|b)\.wav", path)
            if m:
                return self._clip(m.group(1), m.group(2))
            raise ClientError(404, f"no page {path!r}; the test is at /, the results at /results")
        except ClientError as e:
            self._fail(e)
        except Exception as e:  # noqa: BLE001  (a server bug: answer 500 and keep serving)
            self._internal(e)

    do_HEAD = do_GET

    def _clip(self, trial_id: str, side: str) -> None:
        if not _TRIAL_RE.fullmatch(trial_id):
            raise ClientError(400, "malformed trial id")
        t = self.server.store.trial(trial_id)
        if t is None:
            raise ClientError(404, f"no trial {trial_id}")
        pair = self.server.store.clips.pair(t["pair"])
        which = t["a_is"] if side == "a" else ("baseline" if t["a_is"] == "model" else "model")
        data = (pair.model if which == "model" else pair.baseline).read_bytes()
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip()) if rng else None
        if m and (m.group(1) or m.group(2)):
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), len(data) - 1) if m.group(2) else len(data) - 1
            else:
                start, end = max(0, len(data) - int(m.group(2))), len(data) - 1
            if start > end or start >= len(data):
                return self._send(416, b"", "audio/wav", {"Content-Range": f"bytes */{len(data)}"})
            return self._send(206, data[start:end + 1], "audio/wav",
                              {"Content-Range": f"bytes {start}-{end}/{len(data)}", "Accept-Ranges": "bytes"})
        self._send(200, data, "audio/wav", {"Accept-Ranges": "bytes"})

    # -- POST

    def _body(self) -> dict:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ClientError(415, "send the request body as application/json")
        length = self.headers.get("Content-Length")
        if length is None:
            raise ClientError(411, "Content-Length is required")
        try:
            n = int(length)
        except ValueError:
            raise ClientError(400, f"bad Content-Length {length!r}") from None
        if n < 0 or n > MAX_BODY:
            raise ClientError(413, f"request body of {n} bytes; at most {MAX_BODY}")
        raw = self.rfile.read(n)
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ClientError(400, "request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ClientError(400, "request body must be a JSON object")
        return body

    @staticmethod
    def _listener(body: dict) -> str:
        v = body.get("listener")
        if not isinstance(v, str) or not _LISTENER_RE.fullmatch(v):
            raise ClientError(400, "listener must be 1-64 characters: letters, digits, space, _ . @ + - "
                                   "(starting with a letter or digit)")
        return v

    def do_POST(self) -> None:
        try:
            path = urlsplit(self.path).path
            if path not in ("/api/next", "/api/vote"):
                raise ClientError(404, f"no endpoint {path!r}; POST goes to /api/next or /api/vote")
            body = self._body()
            listener = self._listener(body)
            if path == "/api/next":
                return self._json(200, self._next(listener))
            self._vote(body, listener)
        except ClientError as e:
            self._fail(e)
        except Exception as e:  # noqa: BLE001
            self._internal(e)

    def _next(self, listener: str) -> dict:
        store, q = self.server.store, self.server.question
        t = store.next_trial(listener, q)
        prog = store.progress(listener, q)
        if t is None:
            return {"done": True, "progress": prog, "question": q}
        p = store.clips.pair(t["pair"])
        return {"done": False, "trial": t["trial"], "pair": p.id, "prompt": p.prompt, "question": q,
                "a": f"/clip/{t['trial']}/a.wav", "b": f"/clip/{t['trial']}/b.wav", "progress": prog}

    def _vote(self, body: dict, listener: str) -> None:
        store = self.server.store
        unknown = sorted(set(body) - {"trial", "pair", "listener", "choice", "listened_a", "listened_b"})
        if unknown:
            raise ClientError(400, f"unknown fields {unknown}")
        choice = body.get("choice")
        if choice not in ("A", "B", "none"):
            raise ClientError(400, f"choice must be \"A\", \"B\" or \"none\", got {choice!r}")
        pair = body.get("pair")
        if not isinstance(pair, str):
            raise ClientError(400, "pair must be a string (the pair id the page was given)")
        if store.clips.pair(pair) is None:
            raise ClientError(404, f"pair {pair!r} does not exist in this evaluation (pairs: "
                                   f"{', '.join(p.id for p in store.clips.pairs)})")
        listened = []
        for k in ("listened_a", "listened_b"):
            v = body.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                                  or v < 0 or v > 86400):
                raise ClientError(400, f"{k} must be seconds listened (a number >= 0), got {v!r}")
            listened.append(None if v is None else float(v))
        tid = body.get("trial")
        if not isinstance(tid, str) or not _TRIAL_RE.fullmatch(tid):
            raise ClientError(400, "trial must be the 32-character id the page was given")
        t = store.trial(tid)
        if t is None:
            raise ClientError(404, f"no trial {tid}: ask /api/next for a pair first")
        if t["pair"] != pair:
            raise ClientError(400, f"trial {tid} is pair {t['pair']}, not {pair!r}")
        if t["listener"] != listener:
            raise ClientError(403, f"trial {tid} was given to another listener")
        try:
            res = store.record_vote(t, choice, *listened)
        except sqlite3.IntegrityError:
            raise ClientError(409, f"listener {listener!r} has already voted on pair {pair}") from None
        log.info("listen: %s voted %s on pair %s (%s preferred)", listener, choice, pair, res["preferred"])
        self._json(200, {"ok": True, **res})

    def _method_not_allowed(self) -> None:
        self._send(405, json.dumps({"error": f"method {self.command} not allowed"}).encode(), "application/json",
                   {"Allow": "GET, HEAD, POST"})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _method_not_allowed


def _free_port(host: str, start: int) -> int | None:
    for p in range(start, min(start + 50, 65536)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, p))
                return p
            except OSError:
                continue
    return None


def make_server(path: str | os.PathLike, port: int = DEFAULT_PORT, host: str = "127.0.0.1",
                question: str = DEFAULT_QUESTION, db: str | os.PathLike | None = None,
                tie_rule: str = "half") -> ListenServer:
    """Check the clips and the database, then bind the server (not started: call ``serve_forever``)."""
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"--port {port!r} must be a whole number in 0..65535 (0: any free port)")
    question = (question or "").strip()
    if not question or len(question) > 200:
        raise ConfigError("--question must be 1 to 200 characters, e.g. \"Which has better music quality?\"")
    if tie_rule not in TIE_RULES:
        raise ConfigError(f"--ties {tie_rule!r} must be one of {', '.join(TIE_RULES)}")
    clips = load_eval_clips(path)  # every clip checked before the port and the database are touched
    try:
        srv = ListenServer(None, host, port, question, tie_rule)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            alt = _free_port(host, port + 1) if port else None
            hint = f"pass --port {alt} (free now)" if alt else "pass another --port"
            raise ConfigError(f"port {port} on {host} is already in use (another `dragontune listen` or another "
                              f"server holds it); {hint}, or --port 0 for any free port") from None
        if e.errno in (errno.EADDRNOTAVAIL, errno.EACCES) or isinstance(e, socket.gaierror):
            raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}); use --host 127.0.0.1 and a "
                              "port above 1023") from None
        raise
    try:
        srv.store = VoteStore(Path(db) if db is not None else clips.folder / DB_NAME, clips)
    except BaseException:
        srv.server_close()
        raise
    return srv


def serve(path: str | os.PathLike, **kw) -> None:
    """Run the listening test until Ctrl-C."""
    srv = make_server(path, **kw)
    c = srv.store.clips
    print(f"listening test: {len(c.pairs)} pairs, model {c.model} vs baseline {c.baseline}\n"
          f"  open {srv.url} (share it with listeners on this machine; --host 0.0.0.0 for the network)\n"
          f"  results: {srv.url}results  (or `dragontune listen --results {c.folder}`)\n"
          f"  votes go to {srv.store.path}; Ctrl-C stops the server", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        print("stopped; the votes are kept in", srv.store.path)
    finally:
        srv.server_close()


def start_in_thread(srv: ListenServer) -> threading.Thread:
    t = threading.Thread(target=srv.serve_forever, name="dragontune-listen", daemon=True)
    t.start()
    return t
