"""Engines layer: the pretraining trainer (:mod:`.pretrain`), contrastive gradient accumulation,
optimiser groups, ignite handlers, the checkpoint format (:mod:`.checkpoints`, the one reader and
writer of ``model.pt`` + ``model.json``), the embedding loop (:mod:`.encode`), tolerant inference
helpers, and :mod:`.tasks` (one module per downstream task).

Imports data, nets, losses and metrics below it; never tools.
"""
