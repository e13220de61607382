"""The listening page in headless Chromium: play both clips, vote with mouse clicks, then read the votes back
from SQLite and the numbers from the results page."""

import sqlite3

import pytest
from cdp import Chromium, skip_reason
from listen_fixtures import make_eval
from scipy import special, stats

from dragontune import listen

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")


def test_listening_page_plays_votes_and_shows_results(tmp_path):
    make_eval(tmp_path / "run" / "eval", n_pairs=4, seconds=1.2)
    srv = listen.make_server(tmp_path / "run", port=0, question="Which has better music quality?")
    listen.start_in_thread(srv)
    plan = {"0": "model", "2": "baseline", "4": "tie", "6": "model"}
    try:
        with Chromium(tmp_path / "profile") as b:
            b.navigate(srv.url)
            assert b.eval("document.getElementById('question').textContent") == "Which has better music quality?"
            listener = b.wait_for("document.getElementById('listener').value", what="a listener id")
            for k in range(4):
                trial = b.wait_for("document.body.dataset.state === 'trial' && !document.getElementById('trial').hidden "
                                   "&& document.body.dataset.trial", what=f"trial {k}")
                assert b.eval("document.getElementById('vote-a').disabled"), "voting must wait until both clips played"
                b.click("#play-a")
                b.wait_for("document.getElementById('audio-a').currentTime > 0.1", what="clip A to play")
                if k == 0:  # B interrupts A: A was not heard to its end, so voting stays closed
                    b.click("#play-b")
                    b.wait_for("document.getElementById('audio-b').currentTime > 0.1", what="clip B to play")
                    assert b.eval("document.getElementById('audio-a').paused"), "playing B pauses A"
                    b.wait_for("document.getElementById('audio-b').ended", what="clip B to end")
                    assert b.eval("document.getElementById('vote-a').disabled")
                    b.click("#play-a")  # replayed from the start, to its end: now both were heard
                    b.wait_for("document.getElementById('audio-a').ended", what="clip A to end")
                else:
                    b.wait_for("document.getElementById('audio-a').ended", what="clip A to end")
                    assert b.eval("document.getElementById('vote-a').disabled")
                    b.click("#play-b")
                b.wait_for("!document.getElementById('vote-a').disabled", what="the vote buttons after playing A and B")
                t = srv.store.trial(trial)
                want = plan[t["pair"]]
                button = "#vote-none" if want == "tie" else ("#vote-a" if t["a_is"] == want else "#vote-b")
                b.click(button)
                b.wait_for(f"document.body.dataset.trial !== {trial!r} || document.body.dataset.state === 'done'",
                           what=f"the page to move on after vote {k}")
            b.wait_for("document.body.dataset.state === 'done'", what="the end of the test")
            assert "4 of 4 judged" in b.eval("document.getElementById('progress').textContent")
            assert b.eval("document.getElementById('status').textContent") == ""
            # the rows, read back from SQLite
            con = sqlite3.connect(srv.store.path)
            rows = con.execute("SELECT pair, choice, preferred, a_is, listener, listened_a, listened_b, created, question "
                               "FROM votes").fetchall()
            con.close()
            assert len(rows) == 4
            assert {r[0]: r[2] for r in rows} == plan
            for pair, choice, preferred, a_is, who, la, lb, created, q in rows:
                assert who == listener and q == "Which has better music quality?" and created
                assert la > 0 and lb > 0, "the page reports how long each clip was heard"
                assert (choice == "none") == (preferred == "tie")
                if choice != "none":
                    assert (choice == "A") == (a_is == preferred)
            # the numbers on the results page
            b.navigate(srv.url + "results")
            cells = b.eval("(function(){var r=document.querySelector('tr.overall'); var o={};"
                           "r.querySelectorAll('td[data-k]').forEach(function(td){o[td.dataset.k]=[td.textContent,"
                           "td.dataset.v];}); return o;})()")
            assert [cells[k][0] for k in ("votes", "wins", "losses", "ties")] == ["4", "2", "1", "1"]
            s, n = 2.5, 4  # ties count half
            assert cells["win_rate"][0] == "62.5%" and float(cells["win_rate"][1]) == pytest.approx(s / n)
            p_ref = min(1.0, 2 * min(special.betainc(s, n - s + 1, 0.5), special.betainc(n - s, s + 1, 0.5)))
            assert float(cells["p_value"][1]) == pytest.approx(p_ref, rel=1e-9)
            assert float(cells["p_better"][1]) == pytest.approx(stats.beta.sf(0.5, 1 + s, 1 + n - s), rel=1e-9)
            assert b.eval("document.querySelectorAll('tr.per-prompt').length") == 4
            assert b.console_errors() == []
    finally:
        srv.shutdown()
        srv.server_close()
