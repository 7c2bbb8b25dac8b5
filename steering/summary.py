"""The printed one-screen summary and the findings in words (also stored in steer.json).

A finding names an effect beyond random directions only when its interval over prompts excludes 0
and it lies outside the random draws (|z| >= 2 and empirical p <= 0.05), and, where the run has
a condition's own controls (--matched-controls, --offset-controls), outside those too; everything
else is said to be no effect beyond random directions. The same holds for a sign contrast
(--sign-controls: an edit's effect at +a minus at -a) against the random draws' (a direction's +u
minus -u, a plane's +theta minus -theta) and, for a rotation with size-matched draws, against
theirs (a random direction's two signs, each moving h as far as the rotation). With many
conditions, about one in twenty passes by chance. A run with --confirm puts its confirmatory tests
(confirm.py) first.
"""

from __future__ import annotations

from turnphase.steering.config import ALL_FOLDS
from turnphase.steering.confirm import OWN_CONTROLS
from turnphase.timing import time_line

Z_FLOOR = 2.0
P_FLOOR = 0.05


def outside(draws: dict) -> bool:
    """Outside a family of random draws: |z| >= Z_FLOOR and empirical p <= P_FLOOR."""
    return draws["z"] is not None and abs(draws["z"]) >= Z_FLOOR and draws["p"] <= P_FLOOR


def beyond_random(effect: dict) -> bool:
    ci = effect["ci95"]
    return (
        ci is not None
        and (ci[0] > 0 or ci[1] < 0)
        and outside(effect)
        and all(outside(effect[f"vs_{own}"]) for own in OWN_CONTROLS if f"vs_{own}" in effect)
    )


def _zp(e: dict) -> str:
    z = "n/a" if e["z"] is None else f"{e['z']:+.1f}"
    return f"z {z}, p {e['p']:.2f}"


def _fmt(e: dict) -> str:
    ci = e["ci95"]
    z = "  n/a" if e["z"] is None else f"{e['z']:+5.1f}"
    span = f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""
    return f"{e['value']:+7.2f} {span:>17} z {z} p {e['p']:.2f}"


def findings(result: dict) -> list[str]:
    lines = []
    n_tested = n_contrasts = 0
    crossed = result.get("prompts", {}).get("fold") == ALL_FOLDS
    whose = " from every fold, each steered with its own fold's directions" if crossed else ""
    for L, settings in result["layers"].items():
        for setting, entry in settings.items():
            base = entry["unsteered"]
            contrasts = entry.get("contrasts")
            n_tested += len(entry["conditions"])
            n_contrasts += len(contrasts or [])
            passed = [c for c in entry["conditions"] if beyond_random(c["effect"]["length"])]
            lead = (
                f"Layer {L}, {setting} of the assistant turn ({entry['n_prompts']} prompts{whose}): unsteered turns "
                f"run {base['length']['value']:.1f} tokens, {100 * base['ended']['value']:.0f}% end within the budget."
            )
            if not passed:
                lines.append(lead + " No condition changes turn length beyond random directions.")
            else:
                said = []
                for c in passed:
                    e = c["effect"]
                    length, broke = e["length"], e["broken"]["value"]
                    said.append(
                        f"{c['name']} {length['value']:+.1f} tokens ({_zp(length)}"
                        + "".join(
                            f"; vs {word} {_zp(length[f'vs_{own}'])}"
                            for own, (word, _) in OWN_CONTROLS.items()
                            if f"vs_{own}" in length
                        )
                        + f"; broken {broke:+.2f}, KL {c['mean']['kl']:.3f})"
                    )
                lines.append(lead + " Beyond random directions: " + "; ".join(said) + ".")
            lines.append(next_user_line(entry["conditions"]))
            if contrasts is not None:
                lines.append(sign_line(contrasts))
    tested = f"{n_tested} condition{'s' if n_tested != 1 else ''} (on turn length and on the role named next)"
    if n_contrasts:
        tested += f" and {n_contrasts} sign contrast{'s' if n_contrasts != 1 else ''} (on length)"
    tested += f" {'were' if n_tested + n_contrasts != 1 else 'was'} tested against random controls"
    n_tested = 2 * n_tested + n_contrasts  # the tests read above
    # a subset picked with --only after seeing a whole run: its chance is the whole run's
    if result["config"].get("only"):
        lines.append(
            f"{tested}, chosen with --only: count the chance of a pass over the set they were chosen from "
            f"(about {P_FLOOR:g} of its tests pass by chance alone)."
        )
    else:
        lines.append(
            f"{tested}; at p <= {P_FLOOR} about {n_tested * P_FLOOR:.0f} of these {n_tested} tests "
            "would pass by chance alone."
        )
    if confirmatory := result.get("confirmatory"):  # the tests fixed before the run come first
        lines = [
            *confirm_lines(confirmatory, result.get("run")),
            "Exploratory (every condition run, uncorrected):",
            *lines,
        ]
    return lines


def next_user_line(conditions: list[dict]) -> str:
    """Which conditions moved who the model names next, after the turn, beyond random directions
    (the length rule: beyond_random)."""
    moved = [c for c in conditions if beyond_random(c["effect"]["next_user"])]
    if not moved:
        return "No condition moves the role the model names after the turn beyond random directions."
    said = []
    for c in moved:
        e = c["effect"]["next_user"]
        vs = "".join(
            f"; vs {word} {_zp(e[f'vs_{own}'])}"
            for own, (word, _) in OWN_CONTROLS.items()
            if f"vs_{own}" in e
        )
        said.append(f"{c['name']} {e['value']:+.2f} nats ({_zp(e)}{vs})")
    return (
        "The role named after the turn (log P(user) - log P(assistant); lower: the assistant's header, "
        "as if the turn had been the user's) moved beyond random directions: " + "; ".join(said) + "."
    )


SIGN_DRAWS = "random draws' (a direction's +u minus -u, a plane's +theta minus -theta)"


def sign_line(contrasts: list[dict]) -> str:
    """The sign contrasts whose length effect is beyond the random draws' contrasts (and, for a
    rotation with size-matched draws, theirs)."""
    passed = [c for c in contrasts if beyond_random(c["effect"]["length"])]
    if not passed:
        return (
            f"  Sign contrasts ({len(contrasts)}): none on turn length beyond {SIGN_DRAWS} "
            "(and, for a rotation, its size-matched pairs')."
        )
    said = []
    for c in passed:
        length = c["effect"]["length"]
        matched = (
            f"; vs {OWN_CONTROLS['matched'][0]} {_zp(length['vs_matched'])}" if "vs_matched" in length else ""
        )
        said.append(f"{c['name']} {length['value']:+.1f} tokens ({_zp(length)}{matched})")
    return (
        f"  Sign contrasts (+a minus -a, +theta minus -theta) beyond {SIGN_DRAWS}: " + "; ".join(said) + "."
    )


def confirm_lines(c: dict, run: dict | None = None) -> list[str]:
    """The confirmatory tests (confirm.py) in words: each hypothesis, its p-values, held or not;
    with the run's record (steer.json `run`), when it started and from which commit."""
    out = [
        f"Confirmatory: {c['n_tests']} test{'s' if c['n_tests'] > 1 else ''} fixed before the run, each "
        f"one-sided at alpha {c['alpha']:g} / {c['n_tests']} = {c['level']:.3g}; {c['n_hold']} of them hold."
    ]
    for t in c["tests"]:
        lo, hi = t["interval"] or (float("nan"),) * 2
        tests = ", ".join(f"{name.replace('_', ' ')} p {p:.3g}" for name, p in t["p"].items())
        failed = ", ".join(name.replace("_", " ") for name in t["failed"])
        verdict = f"does not hold ({failed})" if failed else "holds"
        out.append(
            f"  layer {t['layer']} {t['setting']}: {t['condition']}, {t['measure']} {t['direction']}: "
            f"{t['value']:+.4g} [{lo:+.4g}, {hi:+.4g}]; {tests} ({t['n_differ']} prompts differ): {verdict}."
        )
    if run is not None:
        out.append(f"  {source_line(run)}")
    return out


def source_line(run: dict) -> str:
    """When a run started and the code it ran (steer.json `run`): a hypothesis fixed in a commit
    before that start was fixed before the run."""
    src = run["source"]
    if src is None:
        return (
            f"The run started {run['started']}; no commit recorded (not a git checkout, or git unavailable)."
        )
    changes = ", with uncommitted changes to tracked files" if src["dirty"] else ""
    return (
        f"The run started {run['started']}, from commit {src['commit'][:12]} "
        f"(committed {src['committed']}){changes}."
    )


MATCHED_PAIRS = "a random direction's two signs, each moving h as far as the rotation does"


def _vs_line(effect: dict, own: str, what: str) -> str:
    """An effect's length and P(end) against one of its own controls (OWN_CONTROLS), indented."""
    name = f"vs_{own}"
    return (
        f"{'':<4}vs {OWN_CONTROLS[own][0]} random: length {_zp(effect['length'][name])}, "
        f"P(end) {_zp(effect['p_end'][name])} ({what})"
    )


def table(result: dict) -> str:
    out = ["\n".join(result["findings"]), ""]
    for L, settings in result["layers"].items():
        for setting, entry in settings.items():
            base = entry["unsteered"]
            out.append(
                f"layer {L}, {setting}: effects vs unsteered (length {base['length']['value']:.1f} tokens, "
                f"P(end) {base['p_end']['value']:.4f}, broken {base['broken']['value']:.2f}, "
                f"next user {base['next_user']['value']:+.2f} nats); "
                "z and p against the random draws; KL and edit size |dh|/|h| are of the edit itself"
            )
            out.append(
                f"{'condition':<32}{'length effect [95% CI]':>45}{'P(end)':>10}{'broken':>8}"
                f"{'next user':>20}{'KL':>8}{'size':>7}"
            )
            for c in entry["conditions"]:
                e = c["effect"]
                out.append(
                    f"{c['name']:<32}{_fmt(e['length']):>45}{e['p_end']['value']:+10.4f}"
                    f"{e['broken']['value']:+8.2f}{e['next_user']['value']:+7.2f} ({_zp(e['next_user']):>10})"
                    f"{c['mean']['kl']:8.3f}{c['mean']['edit_size']:7.3f}"
                )
                if "phase_shift" in c:
                    out.append(
                        f"{'':<4}the plane's phase estimate moved {c['phase_shift']['mean']:+.1f} degrees, "
                        f"{c['phase_shift']['error']:.1f} from the intended {c['strength']:+g} at a position "
                        "(means over the edited positions and prompts)"
                    )
                out += [
                    _vs_line(e, own, what)
                    for own, (_, what) in OWN_CONTROLS.items()
                    if f"vs_{own}" in e["length"]
                ]
            if entry.get("contrasts"):
                out.append(
                    "sign contrasts: the effect at +a minus at -a (a rotation's at +theta minus at -theta); "
                    f"z and p against the {SIGN_DRAWS}"
                )
                out.append(f"{'edit':<32}{'length contrast [95% CI]':>45}{'P(end) contrast':>32}")
                for c in entry["contrasts"]:
                    e = c["effect"]
                    out.append(
                        f"{c['name']:<32}{_fmt(e['length']):>45}   {e['p_end']['value']:+.4f} ({_zp(e['p_end'])})"
                    )
                    if "vs_matched" in e["length"]:
                        out.append(_vs_line(e, "matched", MATCHED_PAIRS))
            out.append("")
    if timings := result.get("timings"):
        out.append(time_line(timings))
    return "\n".join(out)
