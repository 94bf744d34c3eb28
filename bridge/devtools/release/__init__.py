"""Release tooling: one version for every artefact, the container image, the release's dist/.

`python -m bridge.devtools.release --help`; the Makefile's `image`, `image-test` and `release`
targets drive it, docs/shipping.md says how to ship what it builds.
"""
