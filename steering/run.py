"""`steer(config)`: dataset + analysis report in; steer.json, figures and a printed summary out.

    result = steer(SteerConfig("data/smollm2", "report/smollm2", layers=[19], out=Path("steer")))
    result["layers"]["19"]["start"]["conditions"]   # schema: steering/STEER.md

The model is the dataset's (its provenance names it and its weights hash); directions and prompts
come from one analysis fold: its models were fitted without the conversations the prompts come from.
Or from every fold (config.fold "all", cross-fitted): each prompt is steered with the directions
of the fold that held its conversation out, so a run can use every held-out conversation's prompts;
a condition is then one edit per fold (each phase direction its fold's; a random direction or
plane the same in every fold, about that fold's training mean), and each fold's prompts get the
turns a run on that fold alone would write.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from turnphase.analysis.directions import Directions
from turnphase.analysis.report import check_out
from turnphase.analysis.source import DatasetSource
from turnphase.builders.errors import TurnphaseError
from turnphase.builders.layers import select_layers
from turnphase.builders.lock import folder_lock
from turnphase.builders.log import progress
from turnphase.builders.model import DEFAULT_MODEL, LoadedModel, load_model
from turnphase.builders.provenance import fingerprint, source_state, turnphase_version
from turnphase.builders.writer import atomic_write_json, staged_folder
from turnphase.steering import figures
from turnphase.steering.conditions import Condition, conditions
from turnphase.steering.config import ALL_FOLDS, SteerConfig, contrast_name
from turnphase.steering.confirm import OWN_CONTROLS, check_power, count_tests, evaluate, prompts_needed
from turnphase.steering.generate import Generation, Steerer
from turnphase.steering.measures import (
    EDIT_MEASURES,
    MEASURES,
    OUTCOMES,
    against_random,
    interval,
    per_prompt,
    turn_texts,
)
from turnphase.steering.prompts import Prompt, conversations, make_prompts
from turnphase.steering.summary import findings, table
from turnphase.steering.turns import TURNS_FILE, UNSTEERED, turn_rows, write_turns
from turnphase.timing import Stopwatch

log = logging.getLogger(__name__)

STEER_FILE = "steer.json"
# 3: a rotation's two signs share their size-matched draws ("matched rotate <plane> ±<theta>");
# 2: a phase plane turns about its readout's zero by default (config.rotate_about)
STEER_VERSION = 3
EXAMPLES = 3  # example generations per (non-random) condition, or one per fold when more folds


def check_inputs(config: SteerConfig) -> tuple[Directions, DatasetSource, dict[int, int]]:
    """Everything that can be checked before the model loads: one TurnphaseError line if not."""
    directions = Directions.load(config.report)
    src = DatasetSource.open(config.dataset, revision=config.revision)
    if directions.metadata.get("dataset_fingerprint") != fingerprint(src.provenance):
        raise TurnphaseError(
            f"{config.report} was made from another dataset than {config.dataset} "
            "(its dataset fingerprint differs); steer with the dataset it analysed"
        )
    config.layers = select_layers(
        config.layers, directions.layers, holder="the report"
    )  # auto/all: the report's; recorded
    if config.confirm:
        check_power(config.confirm, len(config.layers), config.alpha, config.n_random, config.max_prompts)
    n_folds = len(next(iter(directions.layers.values())).folds)
    chosen = range(n_folds) if config.fold == ALL_FOLDS else [config.fold]
    fold_of = {int(c): f for f in chosen for c in directions.held_out(f)}
    if not fold_of:
        which = "no fold holds out any" if config.fold == ALL_FOLDS else f"fold {config.fold} holds out no"
        raise TurnphaseError(
            f"{which} conversations (the report has {n_folds} folds; a token split holds out none)"
        )
    for L in config.layers if config.only or config.confirm else []:  # their names, before the model loads
        found = directions.layers[L].folds[min(fold_of.values())]
        for setting in config.settings:
            conditions(found, len(found.mean), config, L, setting)
    return directions, src, fold_of


def held_by(config: SteerConfig) -> str:
    """Whose held-out conversations a run's prompts come from, for its messages."""
    return "every fold's" if config.fold == ALL_FOLDS else f"fold {config.fold}'s"


def load_dataset_model(config: SteerConfig, src: DatasetSource, d_model: int) -> LoadedModel:
    made_with = src.provenance["model"]
    wanted = config.model or made_with["id"]
    loaded = load_model(
        None if wanted == DEFAULT_MODEL and config.model is None else wanted,
        layers="all",
        revision=None if config.model else made_with.get("revision"),
    )
    if loaded.weights_sha256 != made_with.get("weights_sha256") and not config.force:
        raise TurnphaseError(
            f"model {loaded.id!r} has weights sha256 {loaded.weights_sha256} but the dataset was made "
            f"with {made_with.get('weights_sha256')}; pass --force to steer it anyway"
        )
    if loaded.d_model != d_model:
        raise TurnphaseError(
            f"model {loaded.id!r} has width {loaded.d_model}, the report's directions {d_model}"
        )
    return loaded


def steer(config: SteerConfig, *, verbose: bool = True) -> dict:
    """Run the steering test; with `config.out`, write it there (locked meanwhile, whole or not at
    all, the place checked for writing before the model loads)."""
    if config.out is None:
        result = _steer(config, None)
    else:
        out = Path(config.out)
        with folder_lock(out, "turnphase steer"):
            check_out(out, config.overwrite)
            with staged_folder(out) as tmp:
                result = _steer(config, tmp)
    if verbose:
        log.info("%s", table(result))
        if config.out is not None:
            log.info("steer.json, turns.parquet, figures and summary: %s/", config.out)
    return result


def _steer(config: SteerConfig, tmp: Path | None) -> dict:
    clock = Stopwatch()
    run = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "source": source_state()}
    with clock.stage("inputs"):
        directions, src, fold_of = check_inputs(config)
        d_model = len(next(iter(directions.layers.values())).folds[0].mean)
    with clock.stage("model"):
        loaded = load_dataset_model(config, src, d_model)
    with clock.stage("prompts"):
        chats = conversations(src, np.array(sorted(fold_of)))
        turns = sum(m["role"] == "assistant" for messages in chats.values() for m in messages)
        if config.fold == ALL_FOLDS and turns > config.max_prompts:
            log.warning(
                "--fold all: a sample of %d of the %d prompts per setting (--prompts); a fold's prompts "
                "get the turns a run on that fold alone gives them only when every prompt is taken",
                config.max_prompts,
                turns,
            )
        made = {  # fold by fold (a stable sort: by conversation within each), for the Steerer's groups
            s: sorted(
                make_prompts(loaded.tokenizer, chats, s, config.cut, config.max_prompts, config.seed),
                key=lambda p: fold_of[p.conversation_id],
            )
            for s in config.settings
        }
    if config.confirm:  # every setting's prompts are checked before any generation
        need = prompts_needed(count_tests(config.confirm, len(config.layers)), config.alpha)
        for setting, prompts in made.items():
            if len(prompts) < need:
                raise TurnphaseError(
                    f"{held_by(config)} held-out conversations give {len(prompts)} {setting} prompts; "
                    f"the confirmatory tests need {need} (a sign-flip p cannot fall below 2^-prompts)"
                )
    layers: dict[str, dict] = {str(L): {} for L in config.layers}
    written: list[dict] = []  # every turn's row, for turns.parquet
    prompt_info = {}
    for setting, prompts in made.items():
        prompt_info[setting] = [
            {"conversation_id": p.conversation_id, "round": p.round, "fold": fold_of[p.conversation_id]}
            for p in prompts
        ]
        folds = list(dict.fromkeys(fold_of[p.conversation_id] for p in prompts))
        groups = [[i for i, p in enumerate(prompts) if fold_of[p.conversation_id] == f] for f in folds]
        steerer = None
        for L in config.layers:
            if steerer is None:  # the prompts' keys and values do not depend on the layer
                steerer = Steerer(
                    loaded.model,
                    loaded.tokenizer,
                    [p.ids for p in prompts],
                    L,
                    max_new_tokens=config.max_new_tokens,
                    temperature=config.temperature,
                    top_p=config.top_p,
                    batch_size=config.batch_size,
                    groups=groups,
                    next_user_edit=config.next_user_edit,
                )
            steerer.at_layer(L)
            per_fold = [conditions(directions.layers[L].folds[f], d_model, config, L, setting) for f in folds]
            with clock.stage(f"layer {L} {setting}"):
                layers[str(L)][setting], rows = run_setting(steerer, per_fold, prompts, config, L, setting)
                written += rows
    result = {
        "steer_version": STEER_VERSION,
        "turnphase_version": turnphase_version(),
        "dataset": config.dataset,
        "dataset_fingerprint": fingerprint(src.provenance),
        "report": str(config.report),
        "model": loaded.describe(),
        "config": config.to_json(),
        "run": run,
        "prompts": {"fold": config.fold, "conversations": sorted(fold_of), **prompt_info},
        "layers": layers,
    }
    if config.confirm:
        result["confirmatory"] = evaluate(
            result, config.confirm, config.alpha, config.n_bootstrap, config.seed
        )
    result["findings"] = findings(result)
    if tmp is not None:
        with clock.stage("figures"):
            result["figures"] = figures.write_all(result, tmp, config.figure_format, config.dpi)
    result["timings"] = {"total": clock.elapsed(), "stages": dict(clock.seconds)}
    if tmp is not None:
        write_turns(written, tmp / TURNS_FILE)
        atomic_write_json(tmp / STEER_FILE, result)
        (tmp / "summary.txt").write_text(table(result) + "\n")
    return result


def run_setting(
    steerer: Steerer,
    per_fold: list[list[Condition]],
    prompts: list[Prompt],
    config: SteerConfig,
    layer: int,
    setting: str,
) -> tuple[dict, list[dict]]:
    """Every condition on the prompts: per_fold holds the run's conditions once per group of the
    steerer's prompts (a fold's), in the same order, each with that fold's edit. Returns the
    setting's steer.json entry and every turn's row for turns.parquet (turns.py)."""
    conds = per_fold[0]
    if any([c.name for c in other] != [c.name for c in conds] for other in per_fold[1:]):
        raise ValueError("every fold must have the same conditions, in the same order")
    tok = steerer.tokenizer
    shown = example_rows(steerer.groups)
    desc = f"layer {layer} {setting}"
    unsteered = steerer.generate(None, config.seed, next_user=True)
    reference, _ = steerer.log_probs(None, unsteered, config.kl_tokens)
    zero = np.zeros(len(prompts))
    said = turn_texts(tok, unsteered)
    base = per_prompt(unsteered, prompts, said, unsteered.next_user, zero, zero)
    rows = turn_rows(layer, setting, UNSTEERED, None, prompts, unsteered, said, base)
    examples = {UNSTEERED: [said[k] for k in shown]}
    measured: list[tuple[Condition, dict[str, np.ndarray], Generation]] = []
    shifts: dict[str, dict] = {}  # a rotated plane's phase estimate: how far it moved, per prompt
    for i, cond in enumerate(progress(conds, desc=desc, unit="condition")):
        edit = [fold[i].edit for fold in per_fold]  # one per group of prompts
        gen = steerer.generate(edit, config.seed, next_user=True)
        kl, done = steerer.kl(edit, unsteered, reference, config.kl_tokens)
        said = turn_texts(tok, gen)
        m = per_prompt(gen, prompts, said, gen.next_user, kl, done["edit_size"])
        measured.append((cond, m, gen))
        rows += turn_rows(
            layer, setting, cond.name, cond.family if cond.is_random else None, prompts, gen, said, m
        )
        examples[cond.name] = [said[k] for k in shown]
        if "phase_shift" in done:
            shifts[cond.name] = {
                "mean": float(np.mean(done["phase_shift"])),
                "error": float(np.mean(done["phase_error"])),
                "per_prompt": done["phase_shift"].tolist(),
                "error_per_prompt": done["phase_error"].tolist(),
            }

    random: dict[str, dict[str, list[float]]] = {}
    for cond, m, _ in measured:
        if cond.is_random:
            fam = random.setdefault(cond.family, {k: [] for k in MEASURES})
            for k in MEASURES:
                fam[k].append(float(np.mean(m[k] - base[k])))
    entries = []
    for cond, m, gen in measured:
        if cond.is_random:
            continue
        fam = random[cond.family]
        effect = {}
        for k in MEASURES:
            effect[k] = scored(m[k] - base[k], fam[k], config, cond.index)
            for own in OWN_CONTROLS:  # size-matched directions, offset planes (conditions.py)
                if family := getattr(cond, own):
                    effect[k][f"vs_{own}"] = against_random(effect[k]["value"], np.asarray(random[family][k]))
        entries.append(
            {
                "name": cond.name,
                "kind": cond.kind,
                "target": cond.target,
                "strength": cond.strength,
                "family": cond.family,
                "matched": cond.matched,
                "offset": cond.offset,
                "mean": {k: float(np.mean(m[k])) for k in MEASURES},
                "effect": effect,
                **({"phase_shift": shifts[cond.name]} if cond.name in shifts else {}),
                "p_end_curve": _curve(gen),
                "per_prompt": {k: m[k].tolist() for k in MEASURES},
                "examples": examples[cond.name],
            }
        )
    signs = {}
    if config.sign_controls:
        signs["contrasts"], contrast_draws = sign_contrasts(measured, random, config)
        random |= contrast_draws
    entry = {
        "n_prompts": len(prompts),
        "natural_length": float(np.mean([p.natural_length for p in prompts])),
        "unsteered": {
            **{
                k: {
                    "value": float(np.mean(base[k])),
                    "ci95": interval(base[k], config.n_bootstrap, config.seed),
                }
                for k in MEASURES
                if k not in EDIT_MEASURES
            },
            "p_end_curve": _curve(unsteered),
            "per_prompt": {k: base[k].tolist() for k in MEASURES if k not in EDIT_MEASURES},
            "examples": examples[UNSTEERED],
        },
        "example_prompts": shown,
        "conditions": entries,
        **signs,
        "random": random,
    }
    return entry, rows


def example_rows(groups: list[list[int]]) -> list[int]:
    """The prompts whose generations a run keeps as examples: the first EXAMPLES, or, when the
    prompts come from several folds, the first of each (so a cross-fitted run shows every fold)."""
    if len(groups) == 1:
        return groups[0][:EXAMPLES]
    return [group[0] for group in groups]


def scored(diff: np.ndarray, draws: list[float], config: SteerConfig, index: int) -> dict:
    """A paired effect (per prompt differences): its mean, its bootstrap interval over prompts
    (seeded by the condition's place in the run) and where it lies among the random draws."""
    value = float(np.mean(diff))
    return {
        "value": value,
        "ci95": interval(diff, config.n_bootstrap, config.seed + index),
        **against_random(value, np.asarray(draws)),
    }


def sign_contrasts(
    measured: list[tuple[Condition, dict[str, np.ndarray], Generation]],
    random: dict[str, dict[str, list[float]]],
    config: SteerConfig,
) -> tuple[list[dict], dict[str, dict[str, list[float]]]]:
    """Each edit's sign contrast: per prompt, the turn written at +a minus the one written at -a
    (same prompt, same seeds), against the random draws' own: draw i of a family at +a and draw i
    of its opposite family at -a are one direction (an add) or one plane (a rotation), and its
    contrast is the difference of their effects in `random`. A rotation whose -theta draws are
    mirrored (size-matched along -u) is also read against its size-matched draws' contrasts
    (`vs_matched`): a random direction's two signs, each moving h as far as its rotation does.
    Only for the edits run at both signs."""
    signed = {(c.kind, c.target, c.strength): (c, m) for c, m, _ in measured if not c.is_random}

    def pairs(plus: str, minus: str) -> dict[str, list[float]]:
        pos, neg = random[plus], random[minus]
        return {k: [p - q for p, q in zip(pos[k], neg[k], strict=True)] for k in OUTCOMES}

    entries, draws = [], {}
    for cond, plus, _ in measured:
        other = signed.get((cond.kind, cond.target, -cond.strength))
        if cond.is_random or cond.opposite is None or cond.strength < 0 or other is None:
            continue
        against, minus = other
        family = f"sign {cond.family}"
        draws[family] = pairs(cond.family, cond.opposite)
        diff = {k: plus[k] - minus[k] for k in OUTCOMES}
        effect = {k: scored(diff[k], draws[family][k], config, cond.index) for k in OUTCOMES}
        matched = None
        if cond.matched and against.mirrored:
            matched = f"sign {cond.matched}"
            draws[matched] = pairs(cond.matched, against.mirrored)
            for k in OUTCOMES:
                effect[k]["vs_matched"] = against_random(effect[k]["value"], np.asarray(draws[matched][k]))
        entries.append(
            {
                "name": contrast_name(cond.kind, cond.target, cond.strength),
                "kind": cond.kind,
                "target": cond.target,
                "strength": cond.strength,
                "family": family,
                "matched": matched,
                "effect": effect,
                "per_prompt": {k: v.tolist() for k, v in diff.items()},
            }
        )
    return entries, draws


def _curve(gen: Generation) -> list[float | None]:
    """Mean P(end of turn) at each step over the prompts still in their turn (None: none left)."""
    running = (~np.isnan(gen.p_end)).sum(0)
    with np.errstate(invalid="ignore"):
        mean = np.nansum(gen.p_end, axis=0) / running
    return [float(v) if r else None for v, r in zip(mean, running, strict=True)]
