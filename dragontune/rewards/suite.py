"""The reward suite of an evaluation: which rewards, toward which exemplars, with which encoders (docs/evaluation.md).

:data:`DEFAULT_SUITE` holds the paper's 20 rewards over this project's encoders and two disjoint exemplar subsets
of the embedded corpus; :func:`suite_specs` resolves names (or explicit specs) into reward specs with the corpus
folder filled in, and :func:`build_suite` builds them through the reward registry.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Mapping, Sequence

from dragontune.errors import DragontuneError, RewardError
from dragontune.utils import log

__all__ = ["CORPUS", "EXEMPLAR_SETS", "TEXT_EXEMPLARS", "SUITE_ENCODERS", "DEFAULT_SUITE", "suite_specs",
           "build_suite"]

#: placeholder for the corpus root inside suite specs (replaced by :func:`suite_specs`)
CORPUS = "${corpus}"

#: two disjoint exemplar subsets of the embedded corpus
EXEMPLAR_SETS = {
    "piano": {"corpus": CORPUS, "filter": "instrument=piano,quality=clean"},
    "calm": {"corpus": CORPUS,
             "filter": "instrument=pluck|pad|bass|bell|drums,mood=calm|melancholic|laid-back,quality=clean"},
}
#: text exemplars for the cross-modal centroid reward
TEXT_EXEMPLARS = [
    "a calm slow piano melody",
    "a gentle solo piano ballad",
    "soft piano chords, peaceful and warm",
    "a melancholic piano piece in a minor key",
]
#: encoders of the suite; musicnn hops 16 patch frames (~0.26 s) so a 4 s clip gives several frames
SUITE_ENCODERS = {
    "codec": "codec",
    "musicnn": {"name": "musicnn", "hop_patches": 16},
    "clap-mini": "clap-mini",
}


def _default_suite() -> list[tuple[str, dict]]:
    s: list[tuple[str, dict]] = [
        ("aesthetics", {"name": "aesthetics"}),
        ("clap_score", {"name": "clap_score"}),
        ("tag_score", {"name": "tag_score"}),
    ]
    for kind in ("per_song_fad", "fad"):
        for enc in ("codec", "musicnn", "clap-mini"):
            for ex in ("piano", "calm"):
                s.append((f"{kind}/{enc}/{ex}",
                          {"name": kind, "encoder": SUITE_ENCODERS[enc], "exemplars": EXEMPLAR_SETS[ex]}))
    s.append(("centroid/clap-mini/text",
              {"name": "centroid", "encoder": SUITE_ENCODERS["clap-mini"], "exemplars": {"texts": TEXT_EXEMPLARS}}))
    for enc in ("codec", "musicnn"):
        s.append((f"kad/{enc}/piano", {"name": "kad", "encoder": SUITE_ENCODERS[enc], "exemplars": EXEMPLAR_SETS["piano"]}))
    for enc in ("codec", "musicnn"):
        s.append((f"vendi/{enc}", {"name": "vendi", "encoder": SUITE_ENCODERS[enc]}))
    return s


#: the default suite: (name, reward spec) with ``CORPUS`` for the corpus root (20 rewards, as in the paper)
DEFAULT_SUITE: list[tuple[str, dict]] = _default_suite()


def _substitute(obj: Any, corpus: str) -> Any:
    if isinstance(obj, str):
        return corpus if obj == CORPUS else obj
    if isinstance(obj, Mapping):
        return {k: _substitute(v, corpus) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, corpus) for v in obj]
    return obj


def suite_specs(names: str | Sequence[Any] = "default", corpus: str | os.PathLike = "data/corpus") -> list[tuple[str, dict]]:
    """Reward specs of the suite: ``"default"`` (all of :data:`DEFAULT_SUITE`), a list of suite names
    (e.g. ``["per_song_fad/codec/piano", "vendi/codec"]``), or a list mixing names and explicit
    ``(name, spec)`` pairs / spec dicts (a dict's ``name`` is its label). ``corpus`` replaces ``CORPUS``."""
    table = dict(DEFAULT_SUITE)
    if isinstance(names, str):
        if names == "default":
            items: list[Any] = [n for n, _ in DEFAULT_SUITE]
        else:
            items = [x.strip() for x in names.split(",") if x.strip()]
    else:
        items = list(names)
    if not items:
        raise RewardError(f"the evaluation suite is empty; give 'default' or names among: {', '.join(table)}")
    out: list[tuple[str, dict]] = []
    for it in items:
        if isinstance(it, str):
            if it not in table:
                import difflib

                close = difflib.get_close_matches(it, list(table), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise RewardError(f"unknown suite reward {it!r}{hint}; known suite rewards: {', '.join(table)}")
            out.append((it, copy.deepcopy(table[it])))
        elif isinstance(it, Mapping):
            if "name" not in it:
                raise RewardError(f"a suite entry dict needs a 'name'; got {dict(it)!r}")
            out.append((str(it["name"]), dict(it)))
        elif isinstance(it, (tuple, list)) and len(it) == 2 and isinstance(it[0], str):
            spec = {"name": it[1]} if isinstance(it[1], str) else dict(it[1])
            out.append((it[0], spec))
        else:
            raise RewardError(f"bad suite entry {it!r}: give a suite name, a spec dict or a (name, spec) pair")
    labels = [n for n, _ in out]
    dup = sorted({n for n in labels if labels.count(n) > 1})
    if dup:
        raise RewardError(f"suite rewards listed twice: {dup}")
    return [(n, _substitute(s, str(corpus))) for n, s in out]


def build_suite(specs: Sequence[tuple[str, Any]], context, skip_unavailable: bool = False):
    """Build every ``(name, spec)`` with :func:`dragontune.rewards.registry.build_reward`.

    Returns ``(rewards, skipped)``: ``rewards`` a list of ``(name, Reward)``, ``skipped`` a list of
    ``(name, reason)``. With ``skip_unavailable`` a reward that cannot be built (an implementation or
    encoder that is not installed, exemplars that cannot be read, ...) is logged and listed in ``skipped``
    instead of raising; the reason is shown in the evaluation table.
    """
    from dragontune.rewards.registry import build_reward

    rewards, skipped = [], []
    for name, spec in specs:
        try:
            rewards.append((name, build_reward(spec, context)))
        except (DragontuneError, ImportError) as e:
            if not skip_unavailable:
                if isinstance(e, DragontuneError):
                    raise type(e)(f"suite reward {name!r}: {e}") from None
                raise
            log.warning("evaluation: suite reward %s skipped: %s", name, e)
            skipped.append((name, f"{type(e).__name__}: {e}"))
    return rewards, skipped
