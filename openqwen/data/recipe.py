"""The data recipe of the demo: every stage switched on, the models trained first.

:func:`prepare_demo_data` adds the built-in web sample to the demo corpus (``corpus/web``), trains
the two models the model-based stages need, on the corpus itself, and returns the pipeline
configuration:

* the quality classifier (:mod:`~openqwen.data.quality`) on a sample of the curated sources against
  synthetic junk, with a seeded 20 % held out: ``quality_report.json`` holds its precision and
  recall of removal on that held-out share;
* the n-gram model of the perplexity stage (:mod:`~openqwen.data.perplexity`) on the clean
  reference part (Shakespeare and the Tang poems), scoring the web pages only (CCNet is a filter
  for crawled text);
* up-sampling by source (``DemoDataConfig.weights``), the report's "up-sampling of chosen sources".
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import ALL_STAGES
from .filters import FilterConfig
from .io import read_documents, list_input_files
from .mix import MixConfig
from .perplexity import NgramLM, PerplexityConfig
from .pipeline import PipelineConfig
from .quality import train_with_heldout
from .websample import build_web_sample


@dataclass
class DemoDataConfig:
    """weights: mix weight per source. reference_sources: the clean part the n-gram model learns.
    quality_docs: documents sampled to train the quality classifier. min_quality: its threshold."""

    weights: dict[str, float] = field(default_factory=lambda: {"web": 2.0, "python_stdlib": 1.5})
    reference_sources: tuple[str, ...] = ("shakespeare", "chinese_poetry")
    quality_docs: int = 2000
    min_quality: float = 0.5
    lm_order: int = 3
    seed: int = 0


def _corpus_docs(corpus: Path) -> list[dict]:
    return [d for f in list_input_files(corpus) if not f.name.endswith((".warc.gz", ".warc"))
            for d in read_documents(f) if isinstance(d, dict)]


def prepare_demo_data(corpus: str | Path, work: str | Path, config: DemoDataConfig | None = None,
                      log: Callable[[str], None] = print) -> PipelineConfig:
    """Add the web sample to ``corpus``, train the quality classifier and the n-gram model into
    ``work`` (skipped when already there), and return the demo's :class:`PipelineConfig`."""
    c = config or DemoDataConfig()
    corpus, work = Path(corpus), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    if not (corpus / "web" / "pages.warc.gz").exists():
        build_web_sample(corpus / "web")
    docs = _corpus_docs(corpus)
    quality_path, report_path = work / "quality.npz", work / "quality_report.json"
    if not report_path.exists():
        texts = [d["text"] for d in docs]
        if len(texts) > c.quality_docs:
            texts = random.Random(c.seed).sample(texts, c.quality_docs)
        clf, report = train_with_heldout(texts, seed=c.seed, threshold=c.min_quality)
        clf.save(quality_path)
        report_path.write_text(json.dumps(report, indent=1) + "\n")
        log(f"quality classifier: held-out precision {report['precision']:.3f}, recall {report['recall']:.3f} "
            f"of removal, {report['good_kept']:.1%} of good documents kept")
    lm_path = work / "lm.npz"
    if not lm_path.exists():
        reference = [d["text"] for d in docs if d.get("source") in c.reference_sources]
        if not reference:
            raise ValueError(f"the corpus has none of the reference sources {c.reference_sources}")
        NgramLM(c.lm_order).fit(reference).save(lm_path)
        log(f"n-gram model: order {c.lm_order} on {len(reference)} reference documents")
    return PipelineConfig(
        stages=list(ALL_STAGES),
        filter=FilterConfig(scorer=str(quality_path), min_quality=c.min_quality),
        perplexity=PerplexityConfig(model=str(lm_path), sources=["web"]),
        mix=MixConfig(weights=dict(c.weights), seed=c.seed),
    )
