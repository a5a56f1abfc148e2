# libre: the two Quick-start commands and helpers. cargo alone cannot fetch libtorch here, so every
# target first provisions the lean libtorch 2.11.0 from PyPI into the user cache (once).
#
#   make quickstart   fetch MNIST + the zoo LeNet5 and run the main job on the embedded default
#   make test         the whole test suite (what .ci/run runs): the cargo tests, then the Slurm test

CARGO ?= cargo
LIBRE_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/libre
export LIBRE_CACHE

.PHONY: quickstart test test-unit test-slurm build libtorch bench clean-cache gpu-carry

libtorch:
	@scripts/fetch-libtorch.sh >/dev/null
	@ln -sfn "$$(scripts/fetch-libtorch.sh --print-dir)" .libtorch

build: libtorch
	$(CARGO) build --release --locked

quickstart: build
	target/release/libre quickstart

# cargo runs test threads in parallel and each libre process would start one libtorch thread per
# core: one intra-op thread each keeps the 2-core CI machine from oversubscribing (10x slower).
test: test-unit test-slurm

test-unit: libtorch
	OMP_NUM_THREADS=1 $(CARGO) test --workspace --release --locked --no-fail-fast

# A real single-node Slurm (installed with apt if missing; needs root): job arrays of libre detect
# and libre evaluate, merged, equal to unsharded runs (docs/cluster.md).
test-slurm: build
	scripts/slurm/ci-test.sh

bench: build
	$(CARGO) bench --workspace --locked

clean-cache:
	rm -rf "$(LIBRE_CACHE)"

# What a lent GPU machine needs for scripts/gpu_bench.sh (it has no Rust toolchain and no network):
# the two binaries and the Fashion-MNIST files, gzipped into gpu-carry/ (about 44 MB with the
# binaries; the device tool carries 64 MiB).
gpu-carry: build
	$(CARGO) build --release --locked --example bench_vs_pytorch
	target/release/libre data fetch fashion-mnist
	mkdir -p gpu-carry
	for s in train test; do \
	  gzip -c "$(LIBRE_CACHE)/data/fashion-mnist-$$s.safetensors" > gpu-carry/fashion-mnist-$$s.safetensors.gz.tmp \
	  && mv gpu-carry/fashion-mnist-$$s.safetensors.gz.tmp gpu-carry/fashion-mnist-$$s.safetensors.gz; \
	done
