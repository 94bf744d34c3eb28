# The Makefile is the interface: docs/development.md documents every target.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install install-test kafka registry lint format test test-unit test-integration ops-tools consumer-kit image image-test release set-version run bench reliability schemas vectors docs clean

install: $(STAMP)

# What `make run` needs: the service, the consumers' package (both editable) and the `dev`
# extra (the tansu fallback broker, confluent-kafka for the consumer example). Reinstalled only
# when a dependency declaration changes.
$(STAMP): pyproject.toml consumers/python/pyproject.toml constraints.txt VERSION
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e 'consumers/python[kafka]' -e '.[dev]'
	touch $(STAMP)

# What `make test` adds: test runners, linters, the chart's and the image's tooling.
TEST_STAMP := $(VENV)/.installed-test
install-test: $(TEST_STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e 'consumers/python[kafka]' -e '.[test]'
	touch $(TEST_STAMP)

# Apache Kafka's jars for the tests (devkafka/pom.xml pins the version): resolved from Maven
# Central into devkafka/lib once; later runs find the stamp and stay offline.
KAFKA_STAMP := devkafka/lib/.resolved
kafka: $(KAFKA_STAMP)

$(KAFKA_STAMP): devkafka/pom.xml
	rm -rf devkafka/lib
	cd devkafka && mvn -q -B -Dstyle.color=never -Djansi.force=false dependency:copy-dependencies \
	  -DoutputDirectory=lib -DincludeScope=runtime
	touch $@

# The Schema Registry of the tests: Apicurio Registry built by devregistry/ (a Quarkus build over
# Maven Central's jars, devregistry/README.md). Built once, online; later runs find the jar newer
# than every pom and source of devregistry/ and run no Maven at all.
REGISTRY_JAR := devregistry/server/target/apicurio-registry-runner.jar
REGISTRY_SOURCES := $(shell find devregistry -name target -prune -o -type f \( -name pom.xml -o -path '*/src/*' \) -print)
registry: $(REGISTRY_JAR)

$(REGISTRY_JAR): $(REGISTRY_SOURCES)
	cd devregistry && mvn -q -B -Dstyle.color=never -Djansi.force=false package
	touch $@

lint: install-test
	$(BIN)/ruff check bridge tests bench consumers/python
	$(BIN)/ruff format --check bridge tests bench consumers/python
	$(BIN)/mypy bridge consumers/python/src
	$(BIN)/lint-imports

format: install-test
	$(BIN)/ruff format bridge tests bench consumers/python
	$(BIN)/ruff check --fix bridge tests bench consumers/python

test: install-test kafka registry lint ops-tools consumer-kit
	$(BIN)/python -m pytest -q

test-unit: install-test
	$(BIN)/python -m pytest -q tests/unit

test-integration: install-test kafka registry ops-tools
	$(BIN)/python -m pytest -q tests/integration

# promtool and prometheus for tests/integration/test_ops.py, from Debian's package: only when
# promtool is missing and we are root. The package's own service is stopped and disabled (the
# tests start their own server on a free port; a system one would also take port 9090). When
# the package cannot be installed, the tests that need it skip and say why.
ops-tools:
	@if ! command -v promtool >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  if ! apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; then \
	    apt-get update -qq >/dev/null 2>&1; \
	    apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
	      || echo "ops-tools: the prometheus package could not be installed; its tests will skip"; \
	  fi; \
	  if command -v promtool >/dev/null 2>&1; then \
	    (service prometheus stop; systemctl disable prometheus) >/dev/null 2>&1 || true; \
	  fi; \
	fi

# The Java consumer kit (consumers/java): `mvn verify` generates its classes from schemas/, runs
# its JUnit tests (they decode every record of tests/vectors) and writes target/java-vectors/,
# which tests/vectors/test_java_vectors.py decodes in Python. The first build resolves the
# pinned artifacts from Maven Central; once one succeeded (stamp newer than the pom) it runs
# offline (-o). Without Maven it says so and the Python side skips.
KIT := consumers/java
MVN := mvn -q -B -Dstyle.color=never -Djansi.force=false
consumer-kit:
	@if ! command -v mvn >/dev/null 2>&1; then \
	  echo "consumer-kit: Maven (mvn) not found: the Java kit is not built and its tests do not run"; \
	elif [ -f $(KIT)/target/.resolved ] && [ $(KIT)/target/.resolved -nt $(KIT)/pom.xml ]; then \
	  cd $(KIT) && $(MVN) -o verify; \
	else \
	  cd $(KIT) && $(MVN) verify && touch target/.resolved; \
	fi

# The container image (docs/shipping.md): buildah from Debian's packages (installed with apt-get
# when missing and root), on the Dockerfile's base when it can be pulled, else on a Debian base
# made with debootstrap and cached in /var/cache/apizee-bridge (IMAGE_BASE=debian forces it,
# IMAGE_BASE=<ref> names another base, REFRESH_BASE=1 remakes it with Debian's latest updates).
# Saves dist/apizee-kafka-bridge-<version>.oci.tar and prints the image's size and layers.
IMAGE_BASE ?= auto
IMAGE_FLAGS = --base $(IMAGE_BASE) $(if $(REFRESH_BASE),--refresh-base)
image: install
	$(BIN)/python -m bridge.devtools.release image $(IMAGE_FLAGS)

# The image run as the chart runs it (tests/integration/test_image.py, marker `image`, left out
# of `make test`): uid 10001, read-only root, no capabilities, host network, against the tests'
# Apache Kafka. Where this machine cannot build or run containers, the test skips and says why.
image-test: install-test kafka
	$(BIN)/python -m bridge.devtools.release image $(IMAGE_FLAGS) --unavailable-ok
	$(BIN)/python -m pytest -q -rs -m image tests/integration/test_image.py

# The release in dist/ (docs/shipping.md): the bridge's and the consumers' package's wheels and
# sdists, the Java kit's jar and sources jar (mvn -Prelease package, its tests included), the
# chart (.tgz, Helm's library), the image's OCI archive (make image), a CycloneDX SBOM of each,
# SHA256SUMS; all of VERSION's version, read back and checked before it says done.
release: install-test
	$(BIN)/python -m bridge.devtools.release dist $(IMAGE_FLAGS)

# `make set-version V=1.2.3`: VERSION and every copy of it (chart, pom, pins, the image label's
# default); the changelog's Unreleased section becomes 1.2.3.
set-version: install
	$(BIN)/python -m bridge.devtools.release set-version $(V)

# The fault scenarios of tests/reliability/scenarios.py at full size (several minutes) on Apache
# Kafka clusters of their own (one node, then three; `make kafka`'s jars); prints the table. They
# reuse the integration tests' helpers, hence the test extra. CI runs them reduced:
# tests/integration/test_reliability.py and test_cluster.py.
reliability: install-test kafka
	$(BIN)/python -m tests.reliability.run --size full

# Regenerate schemas/ from the catalog (the test suite proves files and catalog agree).
schemas: install
	$(BIN)/apizee-bridge schemas schemas --write

# Regenerate the cross-language test vectors (tests/vectors/README.md); the suite proves the
# committed ones are what the codec writes.
vectors: install
	$(BIN)/python -m tests.vectors.generate

# Regenerate the generated blocks (config variables, event catalog) wherever they live in
# README.md and docs/*.md.
docs: install
	$(BIN)/python -m bridge.devtools.docs

run: install
	$(BIN)/apizee-bridge dev

# bench/ingress.py runs Apache Kafka from `make kafka`'s jars and installs wrk (apt-get, as
# root) when it is missing; about 4 minutes.
bench: install kafka
	$(BIN)/python bench/codec.py
	$(BIN)/python bench/state.py
	$(BIN)/python bench/ingress.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
