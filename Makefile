# The two commands of the README: `make demo` and `make test`.
# Both run `make setup` first; set-up caches everything it builds, so a
# second run only checks the caches.  `make gpu-check` (docs/ops.md) needs no
# set-up: on a GPU machine it builds and checks the op with the torch there.
PY := .venv/bin/python
DEMO_CONFIG ?= configs/_demo_/dino-4scale_surgeryclip-tiny_deformneck-s16-128_toy.py
DEMO_WORK_DIR ?= work_dirs/demo
GROUNDING_CONFIG ?= configs/_demo_/grounding_dino-4scale_surgeryclip-tiny_deformneck-s16-128_toy.py
PYTEST_ARGS ?=

.PHONY: setup demo demo-grounding test toy-data tiny-bert clean-work gpu-check

setup:
	@bash tools/setup_env.sh

toy-data: setup
	@test -f data/toy/annotations/instances_train.json || $(PY) tools/make_toy_dataset.py --out data/toy

demo: setup toy-data
	@bash tools/run_demo.sh "$(DEMO_CONFIG)" "$(DEMO_WORK_DIR)"

# GroundingDINO's text encoder needs a local BERT folder: a tiny random one.
tiny-bert: setup
	@test -f data/tiny_bert/config.json || $(PY) tools/make_tiny_bert.py --out data/tiny_bert

# The GroundingDINO demo: the toy category names are the text prompt.
demo-grounding: setup toy-data tiny-bert
	@bash tools/run_demo.sh "$(GROUNDING_CONFIG)" work_dirs/demo_grounding

test: setup
	@bash tools/run_tests.sh $(PYTEST_ARGS)

# On a GPU machine, in tiers: `make gpu-check` = build,tests (the op built
# and its GPU tests, well inside 5 minutes on one H100);
# `make gpu-check TIER=build,tests,bench,detector` adds the CUDA benchmarks
# and a DINO run on bf16.  Logs and results go to $$OUT when set (else
# build/gpu_check/); no network.  Exits non-zero on any failure and with 2
# at once when no GPU is visible.  See docs/ops.md.
TIER ?=
GPU_CHECK_ARGS ?=
gpu-check:
	@bash tools/gpu_check.sh $(if $(TIER),--tier $(TIER)) $(GPU_CHECK_ARGS)

clean-work:
	rm -rf work_dirs
