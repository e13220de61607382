"""The one prompt loader (dragontune/data/prompts.py) and the one seed scheme (dragontune/seeds.py) that the
DRAGON loop, the evaluation and the CLI share."""

import hashlib

import pytest

from dragontune.data.prompts import corpus_split, load_prompts
from dragontune.errors import ConfigError, DataError
from dragontune.seeds import derived_seed, eval_seed, gen_for


def test_corpus_split_names_the_split_or_none():
    assert corpus_split("corpus:train") == "train" and corpus_split("corpus:val") == "val"
    assert corpus_split("test") == "test"
    assert corpus_split("prompts.txt") is None and corpus_split("train.txt") is None


def test_split_and_corpus_spec_give_the_same_prompts(tmp_path):
    from tiny import tiny_corpus

    corpus = tiny_corpus(tmp_path / "c")
    assert load_prompts("corpus:test", corpus) == load_prompts("test", corpus)
    assert load_prompts("corpus:test", corpus, limit=2) == load_prompts("test", corpus)[:2]
    with pytest.raises(DataError, match="no corpus folder"):
        load_prompts("corpus:test")
    with pytest.raises(ConfigError, match="limit 0"):
        load_prompts("test", corpus, limit=0)
    with pytest.raises(DataError, match="corpus:SPLIT"):
        load_prompts(tmp_path / "nope.txt")


def test_seeds_are_a_hash_of_their_parts():
    # the scheme, written out: the first 15 hex digits of sha256("part/part/...")
    ref = int(hashlib.sha256(b"7/sample/3/11").hexdigest()[:15], 16)
    assert derived_seed(7, "sample", 3, 11) == ref < 2 ** 60
    # the evaluation's clip 0 of prompt i is the loop's held-out seed; other clips differ
    assert eval_seed(7, 5) == derived_seed(7, "eval", 5) == int(hashlib.sha256(b"7/eval/5").hexdigest()[:15], 16)
    assert eval_seed(7, 5, 1) == int(hashlib.sha256(b"7/eval/5/1").hexdigest()[:15], 16) != eval_seed(7, 5)
    a, b = gen_for(1, "x"), gen_for(1, "x")
    assert a.initial_seed() == b.initial_seed() == derived_seed(1, "x")
