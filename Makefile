# The two commands of the README: `make serve` and `make test`. Both set up what they need.
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test image-test setup setup-dev train-all evaluate-all

setup:
	scripts/setup

setup-dev:
	scripts/setup --dev

serve: setup
	$(VENV)/bin/genserve serve --host $(HOST) --port $(PORT)

test: setup-dev
	$(VENV)/bin/python -m pytest

# Build the CPU API image (scripts/build-image) and serve from it: minutes, so not part of `test`.
image-test: setup-dev
	GENSERVE_IMAGE_TEST=1 $(VENV)/bin/python -m pytest -s tests/deploy/test_image.py

# Reproduce the shipped weights (hours on a CPU; see the cards for the commands and times): each run
# replaces the shipped weights/NAME (--overwrite), or continues its own run in runs/NAME (--resume).
train-all: setup
	for m in classifier dcgan vae pixelcnn pixelrnn diffusion; do $(VENV)/bin/python -m models.train $$m --resume --overwrite || exit 1; done

evaluate-all: setup
	$(VENV)/bin/python -m models.evaluate weights/classifier weights/pixelcnn weights/pixelrnn weights/vae weights/dcgan weights/diffusion
