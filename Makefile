# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv if missing, then trains alexnet briefly on CPU and prints its accuracy
#   make test   creates .venv if missing, then runs the test suite
#   make quick  the same, without the tests marked slow: the tier for the edit loop
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN ?= torch==2.13.0

.PHONY: venv demo test quick clean chromium-note

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# Keep a torch that is already there; otherwise take the pinned CPU-friendly release.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# A short real run: 2 epochs of a 3,000-image balanced subset, on the CPU's fast path where it
# has one (bf16 autocast and channels_last on a CPU with native bf16), about a minute on 2 cores.
# Data: $CIFAR10_DIR, else the per-user cache (downloaded there if missing).
demo: venv
	$(BIN)/alexnet-cifar train alexnet --epochs 2 --batch-size 32 --limit-train 3000 \
		--limit-test 1000 --device cpu --out runs/demo \
		$(if $(wildcard runs/demo/checkpoint*.pt),--resume)
	@echo
	@echo "What this shows: the post's alexnet, trained for 2 epochs on 3,000 of the 50,000"
	@echo "training images, already guesses far better than chance (10%) on 1,000 test images."
	@echo "The first line named the engine: bf16 autocast and channels_last where this CPU"
	@echo "has native bf16 (AVX512-BF16 or AMX), else exact fp32. runs/demo holds the run:"
	@echo "  $(BIN)/alexnet-cifar report runs/demo --out runs/demo-report   (curves, verdict)"
	@echo "The whole study, five variants: $(BIN)/alexnet-cifar study --help"

# The browser the tests of report.html open (tests/headless_chromium.py looks the same way).
CHROMIUM ?= $(or $(shell command -v chromium chromium-browser 2>/dev/null | head -n 1),$(wildcard /usr/bin/chromium))

# Without it those tests skip: say how many (the tests carry the marker "chromium", given by
# tests/conftest.py to every test that opens a page) and how to install it.
chromium-note: venv
	@test -n "$(CHROMIUM)" || echo "note: $$($(BIN)/python -m pytest -q --collect-only -m \
	chromium 2>/dev/null | grep -c '::') tests of report.html need headless Chromium and skip \
	without it; on Debian: sudo apt-get install chromium (as .ci/run does)"

test: venv chromium-note
	$(BIN)/python -m pytest -q

quick: venv
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
