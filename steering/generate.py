"""Batched, seeded generation with an edit at one layer, written with nnsight.

Every prompt's keys and values are computed once, unsteered, and kept (builders/prefix_cache.py).
Each condition then feeds only each prompt's last token: every forward of its `generate` call
processes exactly the positions a token is sampled from (the last prompt token, then each new
token), and the edit applies to all of them. The prompt itself is never edited, so conditions
differ only through the edit, on every generated position.

    run = Steerer(model, tokenizer, prompt_ids, 19, max_new_tokens=48, temperature=0.7, top_p=0.9)
    out = run.generate(Add(u, 0.1), seed=0)                   # out.tokens, out.p_end, out.ended
    text = run.generate(None, seed=0)                         # the unsteered turns
    kl, edit = run.kl(Add(u, 0.1), text, run.log_probs(None, text, 32)[0], 32)  # edit["edit_size"]
    who = run.next_user(Add(u, 0.1), out)   # log-odds that the user's header follows each turn
    out = run.generate(Add(u, 0.1), seed=0, next_user=True)  # out.next_user: the same, read off
                                                             # the generation's own cache

Prompts may come in groups (`groups`, consecutive runs of them: a cross-fitted run's folds, each
steered with its own fold's directions): every call then takes one edit per group, and each group
is prefilled, batched and seeded as if it were the only one, so its turns are those a run on it
alone writes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from turnphase.builders.activations import decoder_blocks, hidden_of
from turnphase.builders.conversations import end_of_turn_ids
from turnphase.builders.errors import TurnphaseError
from turnphase.builders.prefix_cache import PrefixCache
from turnphase.steering.config import NextUserEdit
from turnphase.steering.prompts import next_header

Edit = Callable[[torch.Tensor], torch.Tensor]
Edits = Edit | None | list[Edit | None]  # one for all the prompts, or one per group
PREFILL_BATCH = 8  # prompts per prefill forward: bounds the attention buffers, not the results


@dataclass
class Generation:
    tokens: list[list[int]]  # per prompt: generated ids before the end-of-turn token (or all, if capped)
    ended: np.ndarray  # (n,) bool: the end-of-turn token came within the budget
    p_end: np.ndarray  # (n, max_new_tokens) P(end of turn) at each step; NaN after the turn ended
    next_user: np.ndarray | None = None  # (n,) Steerer.next_user's reading, when asked for

    @property
    def length(self) -> np.ndarray:
        return np.array([len(t) for t in self.tokens])


class _Steps:
    """A streamer (transformers' protocol): collects the ids `generate` samples, step by step."""

    def __init__(self):
        self.steps: list[torch.Tensor] = []

    def put(self, value: torch.Tensor) -> None:
        self.steps.append(value.detach().cpu())

    def end(self) -> None:
        pass


class Steerer:
    def __init__(
        self,
        model,
        tokenizer,
        prompts: list[list[int]],
        layer: int,
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        batch_size: int = 64,
        groups: list[list[int]] | None = None,
        next_user_edit: NextUserEdit = "turn",
    ):
        from nnsight import TransformersModel

        self.model, self.tokenizer, self.layer = model, tokenizer, layer
        self.prompts = [list(p) for p in prompts]
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.batch_size, self.next_user_edit = batch_size, next_user_edit
        self.eos_ids = end_of_turn_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.header = next_header(tokenizer)
        self.lm = TransformersModel(model, tokenizer=tokenizer)
        self.at_layer(layer)
        self.cache = PrefixCache(model.config)
        if not self.cache.supported:
            raise TurnphaseError(
                "steering needs a model whose every layer keeps a full-attention KV cache "
                "(the prompts are computed once and reused); this one does not"
            )
        self.keys = list(range(len(prompts)))
        self.groups = [self.keys] if groups is None else [list(g) for g in groups]
        if [k for g in self.groups for k in g] != self.keys or not all(self.groups):
            raise ValueError("groups must split the prompts into consecutive, non-empty runs, in order")
        self._prefill()

    def at_layer(self, layer: int) -> None:
        """Edit this layer from now on (the cached prompts do not depend on it)."""
        self.layer, self.block = layer, decoder_blocks(self.lm)[layer]

    def _prefill(self) -> None:
        """Keys and values of every prompt but its last token (which each condition feeds, edited)."""
        for _, _, keys in self._chunks(PREFILL_BATCH):
            rows = [self.prompts[k][:-1] for k in keys]
            ids, mask, cache = self.cache.batch(keys, rows, self.pad_id, 0)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache)
            self.cache.store(keys, rows, mask, cache, [[] for _ in keys])

    def _chunks(self, size: int):
        """(group index, n, keys): each group's prompts `size` at a time, n counting within the group."""
        for g, group in enumerate(self.groups):
            for n, b in enumerate(range(0, len(group), size)):
                yield g, n, group[b : b + size]

    def _batches(self, edit: Edits):
        """(edit, n, keys): each group's batches with that group's edit, n counting within the group."""
        edits = edit if isinstance(edit, list) else [edit] * len(self.groups)
        if len(edits) != len(self.groups):
            raise ValueError(f"{len(edits)} edits for {len(self.groups)} groups of prompts")
        for g, n, keys in self._chunks(self.batch_size):
            yield edits[g], n, keys

    def generate(self, edit: Edits, seed: int, *, plain: bool = False, next_user: bool = False) -> Generation:
        """Sample every prompt's continuation with `edit` at the layer (None: unsteered, still through
        nnsight; `plain`: unsteered through transformers alone, the reference a zero edit must match).
        With `next_user`, also read `Steerer.next_user(edit, <these turns>)`, from the keys and values
        the generation left in its cache (`_next_user_cached`): the turn's last token and the header
        (four tokens a row on SmolLM2), not the whole turn again."""
        tokens, ended, p_end, who = [], [], [], []
        room = 1 + len(self.header.tail) if next_user else 0  # for the re-fed token and the header
        for group_edit, n, keys in self._batches(edit):
            rows = [self.prompts[k] for k in keys]
            ids, mask, cache = self.cache.batch(keys, rows, self.pad_id, self.max_new_tokens + room)
            kwargs = dict(
                attention_mask=mask,
                cache=cache,
                max_new_tokens=self.max_new_tokens,
                do_sample=True,
                temperature=self.temperature,
                top_p=self.top_p,
                eos_token_id=self.eos_ids,
                pad_token_id=self.pad_id,
            )
            steps, probs = _Steps(), []
            torch.manual_seed(seed + n)
            with torch.inference_mode():
                if plain:
                    out = self.model.generate(ids, **kwargs, return_dict_in_generate=True, output_logits=True)
                    new = out.sequences[:, ids.shape[1] :]
                    probs = [self._p_end(lg) for lg in out.logits]
                else:
                    with warnings.catch_warnings():
                        # the open-ended step loop leaves one request parked after the last step
                        warnings.simplefilter("ignore")
                        with self.lm.generate(ids, streamer=steps, **kwargs) as tracer:
                            for _ in tracer.all():
                                if group_edit is not None:
                                    h = hidden_of(self.block.output)
                                    h[:] = group_edit(h)
                                probs.append(self._p_end(self.lm.lm_head.output[:, -1]))
                    new = torch.stack(steps.steps[1:], dim=1)
            turns = []
            for b, row in enumerate(new.tolist()):
                end = next((k for k, t in enumerate(row) if t in self.eos_ids), None)
                turns.append(row if end is None else row[:end])
                ended.append(end is not None)
                curve = np.full(self.max_new_tokens, np.nan)
                steps_run = len(row) if end is None else end + 1
                curve[:steps_run] = [float(p[b]) for p in probs[:steps_run]]
                p_end.append(curve)
            tokens += turns
            if next_user:
                who += self._next_user_cached(group_edit, rows, turns, mask, cache)
        return Generation(tokens, np.array(ended), np.stack(p_end), np.array(who) if next_user else None)

    def _p_end(self, logits: torch.Tensor) -> torch.Tensor:
        """P(end of turn) under the model's own next-token distribution (temperature 1, no top-p)."""
        return torch.softmax(logits.float(), dim=-1)[:, self.eos_ids].sum(-1).cpu()

    def _continuation(self, keys: list[int], rows: list[list[int]]) -> tuple[torch.Tensor, dict]:
        """The ids of each row past its cached prompt (left-padded: every row ends at the last
        column) and the forward's kwargs (mask, positions, the prompts' keys and values)."""
        ids, mask, cache = self.cache.batch(keys, rows, self.pad_id, 0)
        reused = cache.get_seq_length()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids[:, reused:], dict(attention_mask=mask, position_ids=positions[:, reused:], cache=cache)

    def log_probs(
        self, edit: Edits, reference: Generation, n_tokens: int
    ) -> tuple[list[torch.Tensor], dict[str, np.ndarray]]:
        """Per prompt, log-softmax (t, vocab) of the next-token distribution along the reference's
        first tokens (teacher forcing: the unsteered text), with `edit` at the layer on every fed
        position; t = min(n_tokens, tokens generated + 1 for the end-of-turn token). Also what the
        edit did there, each (n,) the mean over those positions: `edit_size` |edit(h) - h| / |h| (0
        without an edit) and, for a rotation of a plane with a readout, `phase_shift`, the degrees
        its phase estimate moved (edits.Rotate.phase_shift), and `phase_error`, how far each
        position's move was from the intended angle (|shift - theta|, degrees)."""
        logps, done = [], {"edit_size": [], "phase_shift": [], "phase_error": []}
        for group_edit, _, keys in self._batches(edit):
            readout = getattr(group_edit, "readout", None)
            conts = [reference.tokens[k][: n_tokens - 1] for k in keys]
            rows = [self.prompts[k] + c for k, c in zip(keys, conts, strict=True)]
            fed, kwargs = self._continuation(keys, rows)
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with self.lm.trace(fed, **kwargs):
                    h = hidden_of(self.block.output)
                    if group_edit is not None:
                        new = group_edit(h)
                        size = ((new - h).norm(dim=-1) / h.norm(dim=-1)).save()
                        if readout is not None:
                            shift = group_edit.phase_shift(h, new).save()
                        h[:] = new
                    logits = self.lm.lm_head.output.save()
            logp = torch.log_softmax(logits.float(), dim=-1)
            width = logp.shape[1]
            for b, c in enumerate(conts):
                fed = slice(width - len(c) - 1, width)  # the last prompt token and the continuation
                logps.append(logp[b, fed])
                done["edit_size"].append(float(size[b, fed].mean()) if group_edit is not None else 0.0)
                if readout is not None:
                    done["phase_shift"].append(float(shift[b, fed].mean()))
                    done["phase_error"].append(float((shift[b, fed] - group_edit.degrees).abs().mean()))
        return logps, {k: np.array(v) for k, v in done.items() if v}

    def kl(
        self, edit: Edits, reference: Generation, unsteered: list[torch.Tensor], n_tokens: int
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(n,) mean over the first positions of the reference (unsteered) text of
        KL(steered || unsteered), `unsteered` being log_probs(None, reference, n_tokens)'s; and what
        the edit did there (log_probs)."""
        steered, done = self.log_probs(edit, reference, n_tokens)
        kl = [float((s.exp() * (s - u)).sum(-1).mean()) for s, u in zip(steered, unsteered, strict=True)]
        return np.array(kl), done

    def _next_user_cached(self, edit: Edit | None, rows, turns, mask, cache) -> list[float]:
        """next_user's reading for one batch of `generate`, from the cache its generation left.

        The cache holds, per row, the prompt (`mask`'s columns, the last prompt token at the last one)
        and then one column per decoding step after the first, the token fed at it: the turn's, then
        the end-of-turn token and pads in rows that ended while others went on. A turn's last token
        never was fed if the turn hit the budget, so for every row the columns from its turn's last
        token (the last prompt token, for an empty turn) on are masked out, and that token is fed
        again, edited, with the header after it (edited too with next_user_edit "all"), at the
        positions they take after the turn."""
        tail = self.header.tail
        held, width = int(cache.get_seq_length()), mask.shape[1]
        keep = torch.ones((len(rows), held), dtype=mask.dtype)
        keep[:, :width] = mask
        fed = torch.empty((len(rows), 1 + len(tail)), dtype=torch.long)
        positions = torch.empty_like(fed)
        for b, (row, turn) in enumerate(zip(rows, turns, strict=True)):
            keep[b, width - 1 + len(turn) :] = 0
            fed[b] = torch.tensor([(row + turn)[-1], *tail])
            positions[b] = torch.arange(len(row) - 1 + len(turn), len(row) + len(turn) + len(tail))
        mask = torch.cat([keep, torch.ones_like(fed)], 1)
        return self._role_log_odds(edit, fed, dict(attention_mask=mask, position_ids=positions, cache=cache))

    def _role_log_odds(self, edit: Edit | None, fed: torch.Tensor, kwargs: dict) -> list[float]:
        """log P(user) - log P(assistant) at the last column of `fed` (each row ending with the
        header's tail), with `edit` on the columns before the tail (on all of them with
        next_user_edit "all"): the one forward both readings of next_user end in."""
        edited = slice(None) if self.next_user_edit == "all" else slice(0, -len(self.header.tail))
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with self.lm.trace(fed, **kwargs):
                if edit is not None:
                    h = hidden_of(self.block.output)
                    h[:, edited] = edit(h[:, edited])
                logits = self.lm.lm_head.output[:, -1].save()
        logp = torch.log_softmax(logits.float(), dim=-1)
        return (logp[:, self.header.user] - logp[:, self.header.assistant]).tolist()

    def next_user(self, edit: Edits, gen: Generation) -> np.ndarray:
        """(n,) log P(user) - log P(assistant), in nats, of the token that names the next turn's role
        once each turn of `gen` ends: the turn, then the chat template's end of turn and next header
        up to the role (self.header; appended to a turn that hit the budget too) are fed, with
        `edit` at the layer on the positions it was on while the turn was written (the last prompt
        token and the turn's), not on the template's: so the reading is what the steered turn left
        in the context, not the edit at the header itself (with next_user_edit "all", on the
        template's too: as steering that stays on would be). After an assistant turn the user's header
        comes next (large and positive); a model that took the turn it wrote for the user's would
        put the assistant's there instead."""
        tail, out = self.header.tail, []
        for group_edit, _, keys in self._batches(edit):
            rows = [self.prompts[k] + gen.tokens[k] + tail for k in keys]
            out += self._role_log_odds(group_edit, *self._continuation(keys, rows))
        return np.array(out)
