"""Alignment: preference data, the built-in verifiable task, the reward model, DPO and PPO.

All of it trains with the one :class:`~openqwen.train.loop.Trainer` (each stage is a ``Task``) and
samples with the one :class:`~openqwen.infer.engine.Engine`. Modules:

- :mod:`.preferences`: JSONL preference pairs (``prompt``/``messages``/``conversations``, ``chosen``,
  ``rejected``), bad rows named by line or counted;
- :mod:`.synthetic`: the built-in arithmetic task with a checkable ground truth and held-out prompts;
- :mod:`.reward`: the reward model (a Qwen and a scalar head read at the last real token), its
  Bradley-Terry task, metrics, and the Hugging Face ``Qwen2ForSequenceClassification`` export;
- :mod:`.dpo`: direct preference optimisation against frozen reference log-probs;
- :mod:`.reward_cli`: the verbs ``openqwen reward train|score`` and ``openqwen dpo``.
"""
