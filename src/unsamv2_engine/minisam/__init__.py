"""A miniature SAM 2.1 of our own, pretrained on the synthetic generator (``unsamv2 pretrain-mini``).

No pretrained SAM weights can be downloaded on every machine, and a random-weight encoder gives the
decoder nothing to work with; this package trains a SAM 2.1-architecture model (every weight) on
:mod:`unsamv2_engine.synth` images with the SAM recipe, so that fine-tuning experiments start from
features that mean something. The result is a plain SAM 2.1 checkpoint (``{"model": state_dict}``)
that also records its input size and says, in its metadata, that it is a synthetic miniature and
never a real SAM.

Modules: :mod:`.samples` (synthetic images and prompt targets), :mod:`.recipe` (one simulated
interaction and SAM's ambiguity-aware loss), :mod:`.pretrain` (the time-budgeted, resumable loop); the command is
:mod:`unsamv2_engine.cli.pretrain_mini`.
"""
