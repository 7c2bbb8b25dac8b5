"""Every `make steer*` recipe is a command the current CLI accepts: its flags parse, its config and
hypotheses pass their checks, and the conditions it names exist (steering.run.check_inputs: all that
is checked before the model loads), on the tiny dataset in place of the default one. The
confirmatory targets are the README's record of what each run fixed first; a renamed flag or
condition would leave them unrunnable, and a typo in a new one would show only when it is run."""

import re
import shlex
from pathlib import Path

import pytest

from turnphase.builders.cli import parser_for
from turnphase.steering.cli import config_from
from turnphase.steering.run import check_inputs

MAKEFILE = Path(__file__).parents[2] / "Makefile"


def steer_recipes(text: str) -> dict[str, list[str]]:
    """target -> the arguments of its `turnphase steer` command, continuation lines joined."""
    recipes, target = {}, None
    for line in text.replace("\\\n", " ").splitlines():
        if found := re.match(r"^([\w-]+):", line):
            target = found.group(1)
        elif line.startswith("\t") and "/turnphase steer " in line:
            recipes[target] = shlex.split(line.split("/turnphase ", 1)[1])
    return recipes


TEXT = MAKEFILE.read_text(encoding="utf-8")
RECIPES = steer_recipes(TEXT)


def test_every_phony_steer_target_has_a_steer_recipe():
    phony = re.search(r"^\.PHONY:(.*)$", TEXT, re.M).group(1).split()
    steer_targets = {t for t in phony if t == "steer" or t.startswith("steer-confirm")}
    assert len(steer_targets) >= 13  # `steer` and the 12 confirmatory runs the README's table lists
    assert set(RECIPES) == steer_targets
    assert steer_recipes(
        "a:\n\t$(BIN)/turnphase steer d \\\n\t\t--fold 2 --confirm mid 'x y' p_end higher\n"
    ) == {"a": ["steer", "d", "--fold", "2", "--confirm", "mid", "x y", "p_end", "higher"]}


def _set(argv: list[str], flag: str, value: str) -> list[str]:
    i = argv.index(flag)
    return [*argv[: i + 1], value, *argv[i + 2 :]]


@pytest.mark.parametrize("target", sorted(RECIPES))
def test_make_steer_recipe_passes_every_check_before_the_model_loads(target, tiny_analysed, tmp_path):
    data, report = tiny_analysed
    argv = RECIPES[target]
    for var, path in {"$(DATA)": data, "$(REPORT)": report, "$(STEER)": tmp_path}.items():
        argv = [a.replace(var, str(path)) for a in argv]  # also "$(STEER)/confirm"
    argv = _set(argv, "--layers", "3")  # the tiny model's layers are 1 and 3; its report has 3 folds
    if "--fold" in argv:
        argv = _set(argv, "--fold", "0")
    assert not [a for a in argv if "$(" in a]
    parser, _ = parser_for(argv)
    config = config_from(parser.parse_args(argv))
    _, _, fold_of = check_inputs(config)  # ConfigError / TurnphaseError here fails the test
    assert config.layers == [3] and fold_of and tmp_path in (config.out, *config.out.parents)
    if target.startswith("steer-confirm"):
        assert config.confirm and config.matched_controls
