"""The pretraining data pipeline: demo corpus, normalisation, exact and fuzzy dedup, language id,
quality filters, decontamination, mixing, and packing into token shards (see docs/data.md).

Everything here is a plain function: :func:`~openqwen.data.pipeline.run_pipeline` runs the cleaning
stages, :func:`~openqwen.data.packing.pack_documents` packs, :class:`~openqwen.data.packing.PackedDataset`
reads the result. Submodules are imported on use so that ``import openqwen.data`` stays light.
"""

# the cleaning stages in their default order (each is `openqwen data <stage>` and a pipeline step)
STAGES = ["extract", "normalize", "dedup-exact", "dedup-fuzzy", "langid", "filter", "safety", "decontam", "mix"]
# every stage, in pipeline order: the defaults plus those that need a model first (perplexity needs
# an n-gram model from `openqwen data train-lm`), which a run lists in its stages to use
ALL_STAGES = ["extract", "normalize", "dedup-exact", "dedup-fuzzy", "langid", "filter", "perplexity", "safety",
              "decontam", "mix"]
