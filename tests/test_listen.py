"""The listening test: SQLite store, hidden A/B order, HTTP server, bad input, results and the CLI."""

import json
import socket
import sqlite3
import threading

import pytest
from listen_fixtures import make_eval, request
from scipy import stats

from dragontune import listen
from dragontune.cli import main
from dragontune.errors import ConfigError, DataError


@pytest.fixture
def server(tmp_path):
    folder = make_eval(tmp_path / "run" / "eval")
    srv = listen.make_server(tmp_path / "run", port=0, question="Which has better music quality?")
    listen.start_in_thread(srv)
    yield srv
    srv.shutdown()
    srv.server_close()


def _rows(db, table="votes"):
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(f"SELECT * FROM {table} ORDER BY rowid")]
    finally:
        con.close()


def _vote_all(url, listener, want):
    """Vote on every pair as ``want(pair_id) -> 'model' | 'baseline' | 'tie'`` says, through the HTTP API,
    choosing A or B from the clip bytes (the page does not say which side is which)."""
    folder_votes = []
    while True:
        st, nxt, _ = request(url + "api/next", {"listener": listener})
        assert st == 200, nxt
        if nxt["done"]:
            return folder_votes
        st_a, a_bytes, _ = request(url + nxt["a"].lstrip("/"))
        assert st_a == 200
        w = want(nxt["pair"])
        model_bytes = _model_bytes[nxt["pair"]]
        a_is_model = a_bytes == model_bytes
        choice = "none" if w == "tie" else ("A" if (w == "model") == a_is_model else "B")
        st, res, _ = request(url + "api/vote", {"trial": nxt["trial"], "pair": nxt["pair"], "listener": listener,
                                                "choice": choice, "listened_a": 0.6, "listened_b": 0.6})
        assert st == 200, res
        assert res["preferred"] == w
        folder_votes.append((nxt["pair"], w))


_model_bytes: dict = {}


def _load_model_bytes(srv):
    _model_bytes.clear()
    for p in srv.store.clips.pairs:
        _model_bytes[p.id] = p.model.read_bytes()


def test_votes_are_stored_blind_and_survive_a_restart(server, tmp_path):
    _load_model_bytes(server)
    url = server.url
    st, page, _ = request(url)
    assert st == 200 and b"Which has better music quality?" in page
    assert b"http://" not in page and b"https://" not in page  # nothing external
    # the page data never says which clip is the fine-tuned one
    st, nxt, _ = request(url + "api/next", {"listener": "alice"})
    text = json.dumps(nxt)
    assert "model" not in text and "baseline" not in text and nxt["progress"] == {"done": 0, "total": 5}
    # a reload gets the same open trial (the order is fixed once shown)
    assert request(url + "api/next", {"listener": "alice"})[1]["trial"] == nxt["trial"]
    want = {"0": "model", "2": "model", "4": "baseline", "6": "tie", "8": "model"}
    votes = _vote_all(url, "alice", want.get)
    assert sorted(votes) == sorted(want.items())
    rows = _rows(server.store.path)
    assert len(rows) == 5 and {r["listener"] for r in rows} == {"alice"}
    assert {r["pair"]: r["preferred"] for r in rows} == want
    for r in rows:  # the stored choice and the hidden order agree with the preference
        if r["choice"] == "none":
            assert r["preferred"] == "tie"
        else:
            assert (r["choice"] == "A") == (r["a_is"] == r["preferred"])
        assert r["question"] == "Which has better music quality?" and r["created"].startswith("20")
        assert r["listened_a"] == 0.6 and r["seed"] == 100 + int(r["pair"]) // 2
    # a second vote on a pair already judged is refused and writes nothing
    t = _rows(server.store.path, "trials")[0]
    st, res, _ = request(url + "api/vote", {"trial": t["id"], "pair": t["pair"], "listener": "alice", "choice": "A"})
    assert st == 409 and "already voted" in res["error"]
    # restart: the votes are kept and alice is done
    server.shutdown()
    server.server_close()
    srv2 = listen.make_server(tmp_path / "run", port=0, question="Which has better music quality?")
    listen.start_in_thread(srv2)
    try:
        st, nxt, _ = request(srv2.url + "api/next", {"listener": "alice"})
        assert nxt["done"] and nxt["progress"] == {"done": 5, "total": 5}
        st, res, _ = request(srv2.url + "api/results")
        o = res["questions"][0]["overall"]
        assert (o["wins"], o["losses"], o["ties"]) == (3, 1, 1)
        st, body, h = request(srv2.url + "results.csv")
        lines = body.decode().splitlines()
        assert st == 200 and h["Content-Type"].startswith("text/csv") and len(lines) == 1 + 1 + 5
        assert lines[0].startswith("question,scope,pair,prompt") and ",overall,," in lines[1]
        st, body, _ = request(srv2.url + "results")
        assert st == 200 and b"70.0%" in body and b"a &lt;calm&gt; &amp; &#x27;soft&#x27;" in body
    finally:
        srv2.shutdown()
        srv2.server_close()


def test_order_is_random_and_the_clips_match_it(server):
    seen = set()
    for k in range(24):
        st, nxt, _ = request(server.url + "api/next", {"listener": f"l{k}"})
        p = server.store.clips.pair(nxt["pair"])
        a = request(server.url + nxt["a"].lstrip("/"))[1]
        b = request(server.url + nxt["b"].lstrip("/"))[1]
        t = server.store.trial(nxt["trial"])
        assert {a, b} == {p.model.read_bytes(), p.baseline.read_bytes()}
        assert (a == p.model.read_bytes()) == (t["a_is"] == "model")
        seen.add(t["a_is"])
    assert seen == {"model", "baseline"}
    # a new listener gets a pair shown least often: 24 listeners spread evenly over 5 pairs
    pairs = [t["pair"] for t in _rows(server.store.path, "trials")]
    assert sorted(pairs.count(p.id) for p in server.store.clips.pairs) == [4, 5, 5, 5, 5]
    # range requests (the audio element seeks with them)
    st, part, h = request(server.url + nxt["a"].lstrip("/"), headers={"Range": "bytes=0-43"})
    assert st == 206 and len(part) == 44 and part[:4] == b"RIFF" and h["Content-Range"].endswith(f"/{len(a)}")


def test_concurrent_listeners(server):
    _load_model_bytes(server)
    errors = []

    def run(i):
        try:
            _vote_all(server.url, f"listener-{i}", lambda pid: ("model", "baseline", "tie")[(int(pid) + i) % 3])
        except BaseException as e:  # noqa: BLE001  (reported below)
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    rows = _rows(server.store.path)
    assert len(rows) == 40 and len({(r["listener"], r["pair"]) for r in rows}) == 40


def test_malformed_requests_get_4xx_and_write_nothing(server):
    url = server.url
    st, nxt, _ = request(url + "api/next", {"listener": "bob"})
    good = {"trial": nxt["trial"], "pair": nxt["pair"], "listener": "bob", "choice": "A"}
    other_pair = next(p.id for p in server.store.clips.pairs if p.id != nxt["pair"])
    before = len(_rows(server.store.path, "trials"))
    cases = [
        (dict(good, pair="999"), 404, "does not exist"),            # a pair that does not exist
        (dict(good, pair=7), 400, "pair must be"),
        (dict(good, trial="f" * 32), 404, "no trial"),
        (dict(good, trial="../../etc"), 400, "trial must be"),
        (dict(good, pair=other_pair), 400, "not"),
        (dict(good, choice="C"), 400, "choice"),
        (dict(good, choice=None), 400, "choice"),
        (dict(good, listener="mallory"), 403, "another listener"),
        (dict(good, listener=""), 400, "listener"),
        (dict(good, listener="x" * 65), 400, "listener"),
        (dict(good, listened_a=-1), 400, "listened_a"),
        (dict(good, listened_b="long"), 400, "listened_b"),
        (dict(good, extra=1), 400, "unknown fields"),
        ([good], 400, "JSON object"),
    ]
    for body, status, msg in cases:
        st, res, _ = request(url + "api/vote", body)
        assert st == status and msg in res["error"], (body, st, res)
    raw_cases = [
        (b"{not json", {}, 400, "not valid JSON"),
        (b"\xff\xfe", {}, 400, "not valid JSON"),
        (json.dumps(good).encode(), {"Content-Type": "text/plain"}, 415, "application/json"),
        (b"x" * (listen.MAX_BODY + 1), {}, 413, "at most"),
    ]
    for raw, headers, status, msg in raw_cases:
        st, res, _ = request(url + "api/vote", raw=raw, headers=headers)
        assert st == status and msg in res["error"], (raw[:20], st, res)
    assert request(url + "api/next", {"listener": "bad/name"})[0] == 400
    assert request(url + "api/nope", {"listener": "bob"})[0] == 404
    assert request(url + "nope")[0] == 404
    assert request(url + "clip/" + "0" * 32 + "/a.wav")[0] == 404
    assert request(url + "api/vote", good, method="PUT")[0] == 405
    assert request(url + "api/vote", method="DELETE")[0] == 405
    assert _rows(server.store.path) == []
    assert len(_rows(server.store.path, "trials")) == before
    # and the good vote still goes through afterwards
    assert request(url + "api/vote", good)[0] == 200 and len(_rows(server.store.path)) == 1


def test_no_eval_clips_says_which_command_makes_them(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no evaluation clips in .*dragontune eval --model .*dragontune demo"):
        listen.make_server(tmp_path / "empty", port=0)
    with pytest.raises(DataError, match="is not a directory"):
        listen.make_server(tmp_path / "missing", port=0)
    folder = make_eval(tmp_path / "ev")
    (folder / "audio" / "index.json").write_text(json.dumps({"pairs": []}))
    ev = json.loads((folder / "eval.json").read_text())
    ev["audio"] = {"index": None, "pairs": []}
    (folder / "eval.json").write_text(json.dumps(ev))
    with pytest.raises(DataError, match="lists no audio pairs .*n_audio=0.*--n-audio"):
        listen.make_server(folder, port=0)
    folder2 = make_eval(tmp_path / "ev2")
    (folder2 / "audio" / "003-model.wav").unlink()
    with pytest.raises(DataError, match="003-model.wav, which does not exist"):
        listen.make_server(folder2, port=0)
    assert not (folder2 / listen.DB_NAME).exists()  # checked before anything is written


def test_port_in_use_says_so_and_suggests_another(tmp_path):
    make_eval(tmp_path / "ev")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"port {port} on 127.0.0.1 is already in use.*--port \d+ \(free now\)"):
            listen.make_server(tmp_path / "ev", port=port)
    assert not (tmp_path / "ev" / listen.DB_NAME).exists()
    with pytest.raises(ConfigError, match="0..65535"):
        listen.make_server(tmp_path / "ev", port=70000)


def test_database_from_another_run_is_refused(tmp_path):
    a = make_eval(tmp_path / "a", model="runs/a/final.safetensors")
    b = make_eval(tmp_path / "b", model="runs/b/final.safetensors", base_freq=300.0)
    store = listen.open_store(a)
    t = store.next_trial("ann", "q")
    store.record_vote(store.trial(t["trial"]), "A", 1.0, 1.0)
    (b / listen.DB_NAME).write_bytes((a / listen.DB_NAME).read_bytes())
    with pytest.raises(DataError, match=r"belongs to another run.*runs/a/final.safetensors.*runs/b/final.safetensors"):
        listen.make_server(b, port=0)
    # the same folder with re-generated clips is another run, too
    (a / "audio" / "000-model.wav").write_bytes((b / "audio" / "000-model.wav").read_bytes())
    with pytest.raises(DataError, match="belongs to another run"):
        listen.open_store(a)
    (tmp_path / "junk.sqlite").write_text("not a database")
    with pytest.raises(DataError, match="not a listening database"):
        listen.open_store(b, tmp_path / "junk.sqlite")
    # nothing was lost: the copied database still has its vote
    assert len(_rows(b / listen.DB_NAME)) == 1


def test_results_overall_and_per_prompt_match_scipy(tmp_path, capsys):
    folder = make_eval(tmp_path / "run" / "eval", n_pairs=3)
    store = listen.open_store(tmp_path / "run")
    plan = {"0": ["model"] * 7 + ["baseline"] * 2 + ["tie"], "2": ["model"] * 4 + ["baseline"] * 5,
            "4": ["model"] * 9 + ["tie"] * 2}
    for pid, prefs in plan.items():
        for i, want in enumerate(prefs):
            lst = f"p{pid}-{i}"
            while True:
                t = store.next_trial(lst, "q1")
                if t["pair"] == pid:
                    break
                store.record_vote(store.trial(t["trial"]), "none", None, None)  # other pairs: ties
            a_is = t["a_is"]
            choice = "none" if want == "tie" else ("A" if a_is == want else "B")
            store.record_vote(store.trial(t["trial"]), choice, None, None)
    votes = store.votes()
    w = sum(v["preferred"] == "model" for v in votes)
    l_ = sum(v["preferred"] == "baseline" for v in votes)
    ties = sum(v["preferred"] == "tie" for v in votes)
    for rule in ("drop", "half"):
        res = listen.listening_results(store, rule)
        o = res["questions"][0]["overall"]
        assert (o["wins"], o["losses"], o["ties"]) == (w, l_, ties) and w == 20 and l_ == 7
        n = w + l_ if rule == "drop" else w + l_ + ties
        s = w if rule == "drop" else w + ties / 2
        assert o["win_rate"] == pytest.approx(s / n)
        if s == int(s):
            assert o["p_value"] == pytest.approx(stats.binomtest(int(s), n, 0.5).pvalue, rel=1e-9)
        assert o["p_better"] == pytest.approx(stats.beta.sf(0.5, 1 + s, 1 + n - s), rel=1e-9)
        per = {r["pair"]: r for r in res["questions"][0]["per_prompt"]}
        assert per["2"]["losses"] == 5 and per["2"]["wins"] == 4
    res = listen.listening_results(store, "drop")
    per = {r["pair"]: r for r in res["questions"][0]["per_prompt"]}
    assert per["4"]["p_value"] == pytest.approx(stats.binomtest(9, 9, 0.5).pvalue)
    # CLI: table and CSV
    assert main(["listen", str(tmp_path / "run"), "--results", "--ties", "drop"]) == 0
    out = capsys.readouterr().out
    assert "tie rule: \"no preference\" votes are left out" in out and "question: q1" in out
    assert f"{100 * 20 / 27:.1f}%" in out
    import csv

    rows = list(csv.DictReader(open(folder / "listen-results.csv")))
    assert rows[0]["scope"] == "overall" and int(rows[0]["fine_tuned_preferred"]) == 20
    assert float(rows[0]["win_rate"]) == pytest.approx(20 / 27)
    assert float(rows[0]["p_value_two_sided"]) == pytest.approx(stats.binomtest(20, 27, 0.5).pvalue, rel=1e-9)
    assert [r["pair"] for r in rows[1:]] == ["0", "2", "4"] and rows[2]["prompt"].startswith("prompt 1: a <calm>")


def test_cli_errors_are_messages(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["listen", str(tmp_path / "empty")]) == 2
    assert "no evaluation clips" in capsys.readouterr().err
    make_eval(tmp_path / "ev")
    assert main(["listen", str(tmp_path / "ev"), "--results"]) == 2
    assert "no votes yet" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        assert main(["listen", str(tmp_path / "ev"), "--port", str(s.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert "is already in use" in err and "--port" in err and "Traceback" not in err
    assert main(["listen", str(tmp_path / "ev"), "--db", str(tmp_path / "no" / "such" / "dir" / "v.sqlite")]) == 2
    assert "pass --db PATH in a writable folder" in capsys.readouterr().err


@pytest.mark.slow
def test_listening_test_on_a_real_evaluation(tmp_path):
    """evaluate_models (tiny real models) -> listen over HTTP -> results and the run report's headline."""
    from tiny import tiny_baseline, tiny_corpus

    from dragontune.evaluate import evaluate_models
    from dragontune.generate import SamplerConfig
    from dragontune.report import write_report

    corpus = tiny_corpus(tmp_path / "corpus")
    a = tiny_baseline(tmp_path / "a.safetensors", corpus, seed=0)
    b = tiny_baseline(tmp_path / "b.safetensors", corpus, seed=1)
    prompts = ["a soft piano melody", "fast drums", "a slow pad", "bright bell tones"]
    evaluate_models(a, b, prompts, ["vendi/codec"], corpus=corpus, sampler=SamplerConfig(steps=2, cfg=2.0),
                    out_dir=tmp_path / "run" / "eval", n_boot=10, n_audio=4, cache_dir=tmp_path / "cache")
    srv = listen.make_server(tmp_path / "run", port=0)
    listen.start_in_thread(srv)
    try:
        _load_model_bytes(srv)
        assert [p.prompt for p in srv.store.clips.pairs] == prompts
        for who in ("ann", "ben"):
            _vote_all(srv.url, who, lambda pid: "model" if pid != "3" else "baseline")
        st, res, _ = request(srv.url + "api/results")
        o = res["questions"][0]["overall"]
        assert (o["wins"], o["losses"], o["ties"]) == (6, 2, 0)
        assert o["p_value"] == pytest.approx(stats.binomtest(6, 8, 0.5).pvalue)
    finally:
        srv.shutdown()
        srv.server_close()
    page = write_report(tmp_path / "run").read_text()
    head = page.split('id="headline"')[1].split("</section>")[0]
    assert "human win rate 75.0%" in head and "8 votes" in head


def test_per_prompt_rows_pool_the_seeds_of_a_prompt(tmp_path):
    folder = make_eval(tmp_path / "ev", n_pairs=4)
    idx = json.loads((folder / "audio" / "index.json").read_text())
    for k, p in enumerate(idx["pairs"]):  # two seeds for each of two prompts (evaluate --seeds-per-prompt 2)
        p["prompt"] = ["first prompt", "second prompt"][k // 2]
    (folder / "audio" / "index.json").write_text(json.dumps(idx))
    store = listen.open_store(folder)
    for who in ("a", "b"):
        while (t := store.next_trial(who, "q")) is not None:
            want = "model" if t["pair"] in ("0", "2") else "baseline"
            store.record_vote(store.trial(t["trial"]), "A" if t["a_is"] == want else "B", None, None)
    per = listen.listening_results(store)["questions"][0]["per_prompt"]
    assert [(r["prompt"], r["pairs"], r["seeds"], r["votes"], r["wins"]) for r in per] == [
        ("first prompt", ["0", "2"], [100, 101], 4, 4), ("second prompt", ["4", "6"], [102, 103], 4, 0)]
    assert per[0]["pair"] == "0;2" and per[0]["seed"] == "100;101"
