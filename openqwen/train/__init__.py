"""Training: one loop for pretraining and SFT (and, as further tasks, reward modelling and PPO).

- :mod:`.config`: dataclass configs, YAML recipes, ``--section.key value`` overrides
- :mod:`.loop`: :class:`Trainer`, the loop (precision, accumulation, clipping, checkpoints, metrics)
- :mod:`.tasks`: the objectives plugged into the loop
- :mod:`.optim`: AdamW and the learning-rate schedules
- :mod:`.batches`: recomputable data order, rank sharding
- :mod:`.checkpointing`: atomic, resumable checkpoints
- :mod:`.distributed`: torchrun, FSDP2 and DDP
- :mod:`.pretrain`, :mod:`.sft`, :mod:`.sft_data`: the two stages; :mod:`.lora`: adapters
"""
