"""Plot a pre-training run's loss curves: python experiments/plot_pretrain.py RUN_DIR OUT.png"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

recs = [json.loads(x) for x in open(f"{sys.argv[1]}/metrics.jsonl") if x.strip()]
tr = [(r["step"], r["loss"]) for r in recs if "loss" in r]
va = [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r]
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(*zip(*tr), label="training loss (EDM-weighted, per 100 steps)")
ax.plot(*zip(*va), "o-", label="validation loss (EMA weights, fixed sigma/noise)")
ax.set_xlabel("step")
ax.set_ylabel("loss")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=80)
