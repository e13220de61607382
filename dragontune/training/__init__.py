"""The trainers: what builds the project's models, apart from what uses them at scoring time.

- ``pretrain``: the text-to-audio DiT on a captioned corpus (EDM loss).
- ``clap_mini``: the small contrastive text-audio model behind ``clap-mini`` (its model and encoder live in
  ``dragontune.encoders.clap_mini``).
- ``aesthetics``: the aesthetics predictor's ratings, metrics and head fitting (the predictor itself lives in
  ``dragontune.aesthetics``).

DRAGON fine-tuning is not here: it is the method, in ``dragontune.dragon``.
"""
