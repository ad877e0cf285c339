# genre-tagger: `make run` starts the daemon on the shipped default model; `make test` runs the whole suite.
# Needs only python3 and make: the targets build the virtual environment they use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
MUSIC  ?= ../shared/data/realworld
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP     := $(VENV)/.dev-installed

.PHONY: run tag test lint install install-dev system-deps default-model clean

# Debian packages for live capture and its tests (PortAudio, ALSA's PulseAudio route, a PulseAudio server).
SYSTEM_PACKAGES := libportaudio2 libasound2-plugins pulseaudio pulseaudio-utils

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The runtime: numpy, PyAV, ONNX Runtime, onnx, pyzmq, sqlite-utils, watchdog, tqdm. No torch.
$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# Development and tests: the local CPU build of torch first, then the extras (torch 2.13.0 satisfies them).
$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[train,test,live]'
	touch $@ $(RUNTIME_STAMP)

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
	$(BIN)/ruff check tagger training service tests

test: $(DEV_STAMP) lint
	$(BIN)/python -m pytest

# Rebuild models/msd-musicnn-gtzan.onnx from scratch (seeded): the musicnn wheel and ../shared/data.
default-model: $(DEV_STAMP)
	$(BIN)/python -m training.default_model --data ../shared/data --out models

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .cache
