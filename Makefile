# vaelab: `make demo` trains, evaluates and draws a VAE on the embedded digits; `make test` runs
# the test suite. Both create .venv and install the project on first use (offline-safe: the CPU
# build of torch is installed first, so nothing pulls a multi-GB CUDA build).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
TORCH  ?= torch==2.13.0

.PHONY: install demo test bench bench-bounds bench-gaps bench-vamp bench-correctness bench-quality bench-ais bench-adversarial bench-ood bench-two-stage bench-correctness2 clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH)" \
	  || $(BIN)/python -m pip install --quiet "torch>=2.4" --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/vaelab train --data digits --binarize threshold --epochs 300 --out runs/demo --quiet
	$(BIN)/vaelab evaluate runs/demo --k 5000 --quiet

# the layers contract (pyproject.toml, [tool.importlinter]) first, then the suite: one worker per
# core, one thread each (the tests are small models, which a second thread barely helps while a
# second worker doubles throughput)
test: $(STAMP)
	$(BIN)/lint-imports --no-cache
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n auto

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_foundation.py --json benchmarks/results/foundation.json

# about an hour on 2 cores: seven objectives, 15 epochs each, K=5000 evaluation, SNR against K
bench-bounds: $(STAMP)
	$(BIN)/python benchmarks/bench_bounds.py --epochs 15 --out benchmarks/runs/bounds \
	  --json benchmarks/results/bounds.json --plot benchmarks/results/snr_vs_k.png

# about 70 minutes on 2 cores: diagonal Gaussian, planar and IAF flows, VampPrior, 200 epochs
# each; the inference gaps and K=5000 test log-likelihoods (the N(0, I) and VampPrior runs are
# trained once and reused by the second command)
bench-gaps: $(STAMP)
	$(BIN)/python benchmarks/bench_gaps.py --epochs 200 --warmup 50 --flow planar:8 \
	  --out benchmarks/runs/gaps --json benchmarks/results/gaps.json
	$(BIN)/python benchmarks/bench_gaps.py --epochs 200 --warmup 50 --flow iaf:4 \
	  --out benchmarks/runs/gaps --json benchmarks/results/gaps_iaf.json

bench-vamp: $(STAMP)
	$(BIN)/python benchmarks/bench_vamp.py --json benchmarks/results/vamp_step.json

bench-quality: $(STAMP)
	$(BIN)/python benchmarks/bench_quality.py --budget 420 --out benchmarks/runs/quality \
	  --json benchmarks/results/quality.json --figure benchmarks/results/quality_samples.png

bench-ais: $(STAMP)
	$(BIN)/python benchmarks/bench_ais.py --budget 240 --limit 100 --steps 200 --chains 16 \
	  --out benchmarks/runs/ais --json benchmarks/results/ais.json

# about an hour on an idle 2-core machine: 36 short 2-D runs, then 10 image models at 180 s each
bench-adversarial: $(STAMP)
	$(BIN)/python benchmarks/bench_adversarial.py --out benchmarks/runs/adversarial \
	  --json benchmarks/results/adversarial.json --figure benchmarks/results/adversarial_samples.png

# about 10 minutes on 2 cores: a VAE on Fashion-MNIST classes 0-8 (420 s), then every test image
# of class 9 and of the held-out classes 0-8 scored by is:1000 and elbo, and their AUROC
bench-ood: $(STAMP)
	$(BIN)/python benchmarks/bench_ood.py --time-limit 420 --k 1000 --out benchmarks/runs/ood \
	  --json benchmarks/results/ood.json

# about 10 minutes on 2 cores (plus a few minutes the first time, to train the quality classifier):
# stage 1 (240 s), its codes, stage 2 (120 s), then vaelab quality of 10000 samples per sampler
bench-two-stage: $(STAMP)
	$(BIN)/python benchmarks/bench_two_stage.py --time-limit 240 --time-limit2 120 --out benchmarks/runs/two_stage \
	  --json benchmarks/results/two_stage.json --figure benchmarks/results/two_stage_samples.png

bench-correctness: $(STAMP)
	$(BIN)/python benchmarks/bench_correctness.py --json benchmarks/results/correctness.json

# about 25 minutes on 2 cores: the second review's AIS/BDMC, codebook and coverage figures
bench-correctness2: $(STAMP)
	$(BIN)/python benchmarks/bench_correctness2.py --json benchmarks/results/correctness2.json

clean:
	rm -rf $(VENV) runs/demo build *.egg-info
