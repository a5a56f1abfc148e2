# libre: the two Quick-start commands and helpers. cargo alone cannot fetch libtorch here, so every
# target first provisions the lean libtorch 2.11.0 from PyPI into the user cache (once).
#
#   make quickstart   fetch MNIST + the zoo LeNet5 and run the main job on the embedded default
#   make test         the whole test suite (what .ci/run runs)

CARGO ?= cargo
LIBRE_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/libre
export LIBRE_CACHE

.PHONY: quickstart test build libtorch bench clean-cache

libtorch:
	@scripts/fetch-libtorch.sh >/dev/null
	@ln -sfn "$$(scripts/fetch-libtorch.sh --print-dir)" .libtorch

build: libtorch
	$(CARGO) build --release --locked

quickstart: build
	target/release/libre quickstart

# cargo runs test threads in parallel and each libre process would start one libtorch thread per
# core: one intra-op thread each keeps the 2-core CI machine from oversubscribing (10x slower).
test: libtorch
	OMP_NUM_THREADS=1 $(CARGO) test --workspace --release --locked --no-fail-fast

bench: build
	$(CARGO) bench --workspace --locked

clean-cache:
	rm -rf "$(LIBRE_CACHE)"
