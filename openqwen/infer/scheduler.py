"""Where requests run: the KV-cache slots, the waiting queue, admission, prefix reuse, prefill grouping.

The engine's KV cache has one row ("slot") per concurrent request. The scheduler decides, between
engine steps, which waiting request goes into which free slot, and how the newly admitted ones are
prefilled; it never touches the model.

Prefix reuse. Each slot remembers the token ids whose keys/values sit at the start of its row (the
prompt and the tokens decoded after it). A new request whose prompt starts with them - the next turn
of a chat - goes to that slot and prefills only its new tail. Reuse is taken only from
:data:`MIN_PREFIX_REUSE` tokens on, because a reusing request is prefilled alone, giving up batched
prefill. When the model's weights change, every remembered prefix is forgotten
(:meth:`Scheduler.forget_prefixes`): keys computed with the old weights are not the new model's.

A row whose windowed layers keep ring buffers (:mod:`openqwen.kv_cache`) has lost what its windows no
longer see, so it is continued only from its end (the next turn of the same chat), never from an
earlier point of it (the runner's ``can_continue`` says which).

Prefill grouping. Requests admitted together in consecutive slots with similar prompt lengths are
prefilled as one right-padded batch; a group costs (rows x longest prompt), so very uneven prompts
are prefilled separately.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Sequence

from .requests import Request

MIN_PREFIX_REUSE = 32
"""Shortest cached prefix worth reusing (shorter ones are cheaper to prefill in a batch)."""


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading items ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Scheduler:
    """Slots, the waiting queue and the prefixes cached in each slot.

    ``lock`` guards ``waiting`` (submitters append from any thread); everything else is touched only
    by the stepping thread.
    """

    def __init__(self, num_slots: int) -> None:
        self.slots: list[Request | None] = [None] * num_slots
        # token ids whose keys/values sit at the start of each row; None: unknown (never reuse)
        self.slot_tokens: list[list[int] | None] = [[] for _ in range(num_slots)]
        self.waiting: deque[Request] = deque()
        self.lock = threading.Lock()
        self.reused_tokens = 0
        """Prompt tokens served from the KV cache instead of being prefilled."""

    # ------------------------------------------------------------------------------ state
    @property
    def num_active(self) -> int:
        return sum(r is not None for r in self.slots)

    def idle(self) -> bool:
        """Nothing waiting and no slot occupied (call with ``lock`` held)."""
        return not self.waiting and not any(self.slots)

    def cancelled(self) -> list[Request]:
        """Active requests whose caller cancelled them; their slots are freed."""
        out = [r for r in self.slots if r is not None and r.handle.cancelled.is_set()]
        for r in out:
            self.release(r)
        return out

    def release(self, r: Request) -> None:
        """Free the slot of a finished request."""
        if r.slot >= 0 and self.slots[r.slot] is r:
            self.slots[r.slot] = None

    def drain(self) -> list[Request]:
        """Remove every active and waiting request (the engine fails or cancels them); trust no row."""
        with self.lock:
            reqs = [r for r in self.slots if r is not None] + list(self.waiting)
            self.waiting.clear()
        self.slots = [None] * len(self.slots)
        self.forget_prefixes()
        return reqs

    def forget_prefixes(self) -> None:
        """No cached row may be reused any more (the weights changed, or a step failed)."""
        self.slot_tokens = [None] * len(self.slots)

    # ------------------------------------------------------------------------------ admission
    def admit(self, can_continue: Callable[[int, int], bool] | None = None) -> tuple[list[Request], list[Request]]:
        """Move waiting requests into free slots: (admitted, cancelled while waiting). Each admitted
        request gets the free slot holding the longest prefix of its prompt (lowest index on ties).
        ``can_continue(slot, start)``: whether a slot's row can be continued after ``start`` cached
        positions (ring buffers of windowed layers only from the row's end); a prefix it refuses counts
        as none."""
        admitted: list[Request] = []
        dropped: list[Request] = []
        with self.lock:
            while self.waiting and None in self.slots:
                r = self.waiting.popleft()
                if r.handle.cancelled.is_set():
                    dropped.append(r)
                    continue
                free = [i for i, occupant in enumerate(self.slots) if occupant is None]
                common = [common_prefix(self.slot_tokens[i] or (), r.prompt) for i in free]
                if can_continue is not None:
                    common = [c if c < MIN_PREFIX_REUSE or can_continue(i, min(c, len(r.prompt) - 1)) else 0
                              for i, c in zip(free, common)]
                best = max(range(len(free)), key=lambda j: (common[j], -free[j]))
                r.slot = free[best]
                # reuse only when it pays for giving up batched prefill; keep >= 1 token to compute logits
                r.reuse = min(common[best], len(r.prompt) - 1) if common[best] >= MIN_PREFIX_REUSE else 0
                self.slots[r.slot] = r
                admitted.append(r)
        return admitted, dropped

    def prefill_plan(self, admitted: list[Request]) -> tuple[list[Request], list[list[Request]]]:
        """(requests that reuse a cached prefix, each prefilled alone; groups of the others, each one
        right-padded batch over consecutive slots)."""
        reusing = [r for r in admitted if r.reuse]
        groups: list[list[Request]] = []
        for r in sorted((r for r in admitted if not r.reuse), key=lambda r: r.slot):
            g = groups[-1] if groups else None
            if g and g[-1].slot + 1 == r.slot:
                lens = [len(x.prompt) for x in g] + [len(r.prompt)]
                if max(lens) * len(lens) <= 1.25 * sum(lens) + 16 * len(lens):
                    g.append(r)
                    continue
            groups.append([r])
        return reusing, groups

    def prefilled(self, r: Request) -> None:
        """Record that ``r``'s slot now holds its prompt."""
        self.slot_tokens[r.slot] = list(r.prompt)
        self.reused_tokens += r.reuse

    # ------------------------------------------------------------------------------ decoding
    def decode_span(self) -> tuple[int, list[Request | None]] | None:
        """(first slot, the slots from there to the last decoding one) or None when none decodes.
        Rows in the span that do not decode (holes) are computed and thrown away."""
        decoding = [i for i, r in enumerate(self.slots) if r is not None and r.next_input >= 0]
        if not decoding:
            return None
        return decoding[0], self.slots[decoding[0] : decoding[-1] + 1]

    def decoded(self, start: int, rows: list[Request | None], fed: list[int], idle: list[int]) -> None:
        """Record a decode step over ``rows`` (from slot ``start``) that fed ``fed``; ``idle`` rows had
        their position 0 overwritten by the throwaway token."""
        for i, token in enumerate(fed):
            tokens = self.slot_tokens[start + i]
            if i in idle:
                self.slot_tokens[start + i] = []
            elif tokens is not None:
                tokens.append(token)
