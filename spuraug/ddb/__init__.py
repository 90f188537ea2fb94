"""Diffusion Driven Balancing (DDB, Yazdan Parast et al., ICCV 2025), stage by stage.

- :mod:`spuraug.ddb.invert`   textual inversion, one token per class
- :mod:`spuraug.ddb.sources`  the K lowest-ERM-loss training images per class
- :mod:`spuraug.ddb.segment`  object masks from a text prompt (Grounding DINO + SAM, CLIPSeg)
- :mod:`spuraug.ddb.inpaint`  repaint the object as the other class (SD inpainting)
- :mod:`spuraug.ddb.prune`    bicephalous pruning (ERM probability, Integrated Gradients)
- :mod:`spuraug.ddb.retrain`  retraining on original + kept samples (on spuraug.engine)
- :mod:`spuraug.ddb.pipeline` the stages chained through cached artifacts
- :mod:`spuraug.ddb.method`   the ``ddb`` method of the registry
- :mod:`spuraug.ddb.commands` ``spuraug ddb ...``

See docs/ddb.md.
"""
