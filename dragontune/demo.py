"""`dragontune demo`: the whole story on the embedded defaults, offline, on a CPU.

1. synthesise the captioned corpus if it is missing;
2. start from the committed baseline and run DRAGON toward an exemplar reward (per-song FAD in the codec's
   latent space against clean piano clips of the corpus), logging a watch-list of other rewards;
3. evaluate the fine-tuned model against the baseline on held-out prompts (same seeds, same sampler):
   win rates with confidence intervals;
4. write the HTML report and print where everything is.
"""

from __future__ import annotations

import time
from pathlib import Path

from dragontune.config import load_config
from dragontune.utils import log

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "dragon_cpu.yaml"


def demo_overrides(out: Path, corpus: str, quick: bool) -> list[str]:
    ex = f'{{corpus: {corpus}, filter: "instrument=piano,quality=clean"}}'
    ov = [f"out_dir={out}", f"data.corpus={corpus}", f"reward={{name: per_song_fad, encoder: codec, exemplars: {ex}}}",
          f"watch=[{{name: vendi, encoder: codec}}, {{name: fad, encoder: codec, exemplars: {ex}}}]"]
    if quick:  # the same recipe, fewer rounds and a smaller held-out evaluation
        ov += ["rounds=16", "eval_every=8", "ckpt_every=8", "eval_n_prompts=12", "data.synth_n=600"]
    return ov


def run_demo(out: str | Path = "runs/demo", quick: bool = False, corpus: str | None = None) -> Path:
    from dragontune.dragon.loop import DragonConfig, finetune
    from dragontune.data.prompts import load_prompts
    from dragontune.evaluate import evaluate_models, format_eval_table
    from dragontune.report import write_report
    from dragontune.data.corpus import ensure_corpus

    t0 = time.time()
    out = Path(out)
    corpus = corpus or ("data/corpus" if Path("data/corpus/metadata.jsonl").is_file() or not quick else "data/corpus-quick")
    cfg = load_config(DragonConfig, CONFIG if CONFIG.is_file() else None, demo_overrides(out, corpus, quick))
    log.info("demo: corpus %s, run directory %s (%s)", corpus, out, "quick" if quick else "full")
    ensure_corpus(cfg.data)
    t1 = time.time()
    final = finetune(cfg, overwrite=(out / "config.yaml").is_file())  # a new demo replaces the previous one
    t2 = time.time()
    n_eval = 16 if quick else 48
    prompts = load_prompts("test", corpus=corpus, limit=n_eval)
    suite = [("per_song_fad/codec/piano (target)", cfg.reward),
             ("fad/codec/piano", cfg.watch[1]), ("vendi/codec", cfg.watch[0])]
    res = evaluate_models(None, final, prompts, suite, seed=1, sampler=cfg.eval_sampler, device=cfg.device,
                          out_dir=out / "eval", corpus=corpus, n_boot=200, n_audio=4)
    t3 = time.time()
    report = write_report(out)
    print(format_eval_table(res))
    print(f"\ndemo finished in {t3 - t0:.0f} s (corpus {t1 - t0:.0f} s, DRAGON {t2 - t1:.0f} s, "
          f"evaluation {t3 - t2:.0f} s)")
    print(f"run directory: {out.resolve()}")
    print(f"fine-tuned model: {final}")
    print(f"report: {report.resolve()}")
    return report
