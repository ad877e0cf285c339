# genre-tagger: `make run` starts the daemon on the shipped default model; `make test` runs the whole suite.
# Needs only python3 and make: the targets build the virtual environment they use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
MUSIC  ?= ../shared/data/realworld
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP     := $(VENV)/.dev-installed
# Present when `make install-gpu` chose the CUDA build of ONNX Runtime for this environment.
GPU_STAMP     := $(VENV)/.onnxruntime-gpu

.PHONY: run tag test lint install install-dev install-gpu install-cpu swap-to-gpu system-deps default-model wheel clean

# Debian packages for live capture and its tests (PortAudio, ALSA's PulseAudio route, a PulseAudio server),
# the sqlite3 shell the README's library example uses (tests/test_readme.py runs it), and for the display's
# tests a headless browser and its WebDriver, and an Icecast server; espeak-ng speaks for the default
# model's "no music" test.
SYSTEM_PACKAGES := libportaudio2 libasound2-plugins pulseaudio pulseaudio-utils sqlite3 chromium chromium-driver \
	icecast2 espeak-ng

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# ONNX Runtime comes in two builds that install the same `onnxruntime` package: `onnxruntime` (CPU, what
# pyproject.toml asks for) and `onnxruntime-gpu` (CUDA). Never both in one environment: every install
# below removes the GPU build before pip adds the CPU one, and where `make install-gpu` chose the GPU
# build, swaps it back in afterwards (the same version), so the environment always holds exactly one.
define pip_install
	$(BIN)/python -m pip uninstall --quiet --yes onnxruntime-gpu 2>/dev/null || true
	$(BIN)/python -m pip install --quiet $(1)
	if [ -f $(GPU_STAMP) ]; then $(MAKE) --no-print-directory swap-to-gpu; fi
endef

# The runtime: numpy, PyAV, ONNX Runtime, onnx, pyzmq, sqlite-utils, watchdog, tqdm. No torch.
$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(call pip_install,-e .)
	touch $@

DEV_SPEC := -e '.[train,test,live,web]'
# Development and tests: the local CPU build of torch first, then the extras (torch 2.13.0 satisfies them).
$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(call pip_install,$(DEV_SPEC))
	touch $@ $(RUNTIME_STAMP)

# The CUDA build of ONNX Runtime instead of the CPU one (for `--device auto|cuda`), in this environment.
install-gpu: $(RUNTIME_STAMP)
	touch $(GPU_STAMP)
	$(MAKE) --no-print-directory swap-to-gpu

# Back to the CPU build (the same version).
install-cpu: $(RUNTIME_STAMP)
	rm -f $(GPU_STAMP)
	@version=$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("onnxruntime-gpu"))' 2>/dev/null); \
	if [ -n "$$version" ]; then \
		echo "replacing onnxruntime-gpu $$version with onnxruntime $$version (CPU)"; \
		$(BIN)/python -m pip uninstall --quiet --yes onnxruntime-gpu && \
		$(BIN)/python -m pip install --quiet "onnxruntime==$$version"; \
	fi

# CPU build out, GPU build in: the same version when the GPU build has it, else its newest. The GPU wheel
# is downloaded before the CPU build goes, and the CPU build comes back if the install fails, so the
# environment holds exactly one build at any moment.
swap-to-gpu:
	@version=$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("onnxruntime"))' 2>/dev/null); \
	[ -n "$$version" ] || exit 0; \
	wheels=$$(mktemp -d); trap 'rm -rf "$$wheels"' EXIT; \
	$(BIN)/python -m pip download --quiet --no-deps --dest "$$wheels" "onnxruntime-gpu==$$version" 2>/dev/null || \
		$(BIN)/python -m pip download --quiet --no-deps --dest "$$wheels" "onnxruntime-gpu>=1.20" || exit 1; \
	echo "replacing onnxruntime $$version (CPU) with $$(basename "$$wheels"/*.whl)"; \
	$(BIN)/python -m pip uninstall --quiet --yes onnxruntime && \
	$(BIN)/python -m pip install --quiet "$$wheels"/*.whl || \
		{ echo "the GPU build did not install: back to the CPU build" >&2; \
		  $(BIN)/python -m pip install --quiet "onnxruntime==$$version"; exit 1; }

system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq $$missing; \
	fi

install: $(RUNTIME_STAMP)
install-dev: $(DEV_STAMP)

# The main job: watch $(MUSIC), tag it into ~/.local/state/genre-tagger/library.db, publish on
# tcp://127.0.0.1:5556, follow changes until Ctrl-C.
run: $(RUNTIME_STAMP)
	$(BIN)/genre-tagger daemon --folder $(MUSIC)

# One-shot: a confidence chart per file of $(MUSIC).
tag: $(RUNTIME_STAMP)
	$(BIN)/genre-tagger tag $(MUSIC)

lint: $(DEV_STAMP)
	$(BIN)/ruff check tagger training service tests beetsplug

test: $(DEV_STAMP) lint
	$(BIN)/python -m pytest

# Rebuild models/msd-musicnn-gtzan.onnx from scratch (seeded): the musicnn wheel, ../shared/data and, for the
# music detector, Debian packages of game soundtracks (training/music_sources.py: `apt-get download`, unpacked
# under .cache/music-packages, never installed).
default-model: $(DEV_STAMP)
	$(BIN)/python -m training.default_model --data ../shared/data --out models

# dist/genre_tagger-*.whl: the package with its shipped models (`pip install dist/*.whl`, `pipx install .`).
wheel: | $(BIN)/python
	$(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir dist .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .cache dist
