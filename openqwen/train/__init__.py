"""Training: one loop for pretraining and SFT (and, as further tasks, reward modelling and PPO).

- :mod:`.config`: dataclass configs, YAML recipes, ``--section.key value`` overrides
- :mod:`.loop`: :class:`Trainer`, the loop (precision, accumulation, clipping, checkpoints, metrics),
  with overridable parts of a step (``next_batches``, ``forward_backward``, ``optimizer_step``, ``train_step``)
- :mod:`.tasks`: the objectives plugged into the loop (a task may train modules of its own)
- :mod:`.sources`: where batches come from (rows in a recomputable order, or made on the fly)
- :mod:`.batches`: row datasets and ``collate``
- :mod:`.optim`: AdamW and the learning-rate schedules
- :mod:`.checkpointing`: atomic, resumable checkpoints; :mod:`.export`: strict export of model and modules
- :mod:`.distributed`: torchrun, FSDP2 and DDP
- :mod:`.pretrain`, :mod:`.sft`, :mod:`.sft_data`: the two stages; :mod:`.lora`: adapters
"""
