"""Every bundled alignment recipe loads with its stage's config class (its own section included)."""

from openqwen.align.dpo import DPOConfig
from openqwen.align.ppo import PPOConfig
from openqwen.align.reward_train import RewardConfig
from openqwen.train.config import list_recipes

CONFIG_OF = {"reward": RewardConfig, "dpo": DPOConfig, "ppo": PPOConfig}


def test_alignment_recipes_load_with_their_config_class():
    names = [n for n in list_recipes() if n.split("-")[0].removesuffix(".yaml") in CONFIG_OF]
    assert {"reward.yaml", "reward-nano.yaml", "dpo.yaml", "dpo-nano.yaml", "ppo.yaml", "ppo-nano.yaml"} <= set(names)
    for name in names:
        CONFIG_OF[name.split("-")[0].removesuffix(".yaml")].load(name)
    ppo = PPOConfig.load("ppo.yaml")  # the report's PPO settings
    assert (ppo.ppo.kl_coef, ppo.ppo.value_clip, ppo.ppo.top_p, ppo.ppo.value_warmup_steps, ppo.ppo.responses_per_prompt) == (0.04, 0.15, 0.9, 50, 2)
