"""Text embeddings from a causal LM: its final-norm hidden states, pooled per input.

``pool_hidden(model, rows, pooling, batch_size)`` runs ``model.hidden_states`` on right-padded batches
(no KV cache) and pools each row over its own tokens only:

* ``mean``: the average of every token's hidden state (the usual choice for a decoder used as an
  embedder without embedding training: every token contributes);
* ``last``: the last token's hidden state (it has attended to the whole input; what embedding-trained
  decoders such as GTE-Qwen read).

Right padding cannot change a row's real positions (attention is causal), so a row pools to the same
vector alone or in a batch. Every vector is L2-normalised (OpenAI's embeddings are unit length, so a dot
product is the cosine similarity), in fp32 whatever the model's dtype.
"""

from __future__ import annotations

from typing import Sequence

import torch

POOLINGS = ("mean", "last")


@torch.inference_mode()
def pool_hidden(model: torch.nn.Module, rows: Sequence[Sequence[int]], pooling: str = "mean",
                batch_size: int = 8) -> list[list[float]]:
    """One unit-length vector per row of token ids (each non-empty; the caller checks lengths)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    device = model.embed_tokens.weight.device
    out: list[list[float]] = []
    for s in range(0, len(rows), batch_size):
        batch = [list(r) for r in rows[s: s + batch_size]]
        T = max(len(r) for r in batch)
        ids = torch.zeros(len(batch), T, dtype=torch.long, device=device)
        real = torch.zeros(len(batch), T, dtype=torch.bool, device=device)
        for i, r in enumerate(batch):
            ids[i, : len(r)] = torch.tensor(r)
            real[i, : len(r)] = True
        hidden = model.hidden_states(ids).float()
        if pooling == "mean":
            vec = (hidden * real[..., None]).sum(1) / real.sum(1, keepdim=True)
        else:
            vec = hidden[torch.arange(len(batch)), real.sum(1) - 1]
        out += torch.nn.functional.normalize(vec, dim=-1).cpu().tolist()
    return out
