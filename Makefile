# scoot-rs: build, test and regenerate.
#
#   make test        every test (unit, end-to-end with real binaries, Python Thrift cross-client,
#                    generated-code drift check); installs what it needs first
#   make smoketest   builds everything and runs the smoke test on a local cluster
#   make bench       measures (release build) and rewrites docs/benchmarks.md; not part of test
#   make bench-scale how cost grows: a simulated fleet of 100-1,000 workers, many clients, big
#                    blobs, a generated 1,000-action Bazel build (about 20 minutes)
#   make thrift      regenerates crates/thrift/src/gen from thrift/*.thrift
#   make deploy-check validates deploy/ offline (Kubernetes schemas, systemd-analyze); part of test
#   make lint        rustfmt and clippy, as CI runs them

CARGO ?= cargo
THRIFT_IDLS := scoot worker sched
THRIFT_GEN := crates/thrift/src/gen

.PHONY: all build test test-deps thrift thrift-check deploy-check lint smoketest bench bench-scale clean

all: build

build:
	$(CARGO) build --release

test-deps:
	scripts/ensure-test-deps.sh
	scripts/ensure-bazel.sh
	scripts/ensure-bst.sh >/dev/null

test: test-deps thrift-check deploy-check
	$(CARGO) test --workspace --all-targets

thrift:
	scripts/ensure-test-deps.sh thrift
	for idl in $(THRIFT_IDLS); do thrift --gen rs -out $(THRIFT_GEN) thrift/$$idl.thrift || exit 1; done

# Fails when the committed generated code is not what the IDL produces.
thrift-check:
	scripts/ensure-test-deps.sh thrift
	@tmp=$$(mktemp -d) && \
	for idl in $(THRIFT_IDLS); do thrift --gen rs -out $$tmp thrift/$$idl.thrift || exit 1; done && \
	if diff -r $$tmp $(THRIFT_GEN) >/dev/null; then rm -rf $$tmp; echo "thrift bindings match the IDL"; \
	else diff -r $$tmp $(THRIFT_GEN) | head -40; rm -rf $$tmp; \
	  echo "crates/thrift/src/gen is out of date: run 'make thrift' and commit"; exit 1; fi

# Kubernetes manifests against pinned schemas, cross-references, systemd units; no network.
deploy-check:
	scripts/check-deploy.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The main job: a local cluster (scheduler + 5 workers) running Scoot's smoke test.
smoketest:
	$(CARGO) build --release
	target/release/setup-cloud-scoot --strategy local.local run scootcl smoketest --num_jobs 20

bench: test-deps
	$(CARGO) bench --bench scheduling
	$(CARGO) bench --bench throughput
	$(CARGO) bench --bench bazel
	$(CARGO) bench --bench sandbox
	# Last: its gigabyte of fsynced uploads leaves the disk busy writing back for a while,
	# which would slow the saga log of the benchmarks above.
	$(CARGO) bench --bench cas

bench-scale: test-deps
	$(CARGO) bench --bench fleet
	$(CARGO) bench --bench clients
	$(CARGO) bench --bench bazel_scale
	# Last, as in bench: gigabytes of fsynced uploads leave the disk busy for a while.
	$(CARGO) bench --bench big_blobs

clean:
	$(CARGO) clean
