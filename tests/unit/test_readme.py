"""The README stays true: generated blocks current, every metric and make target documented."""

from __future__ import annotations

import re

from prometheus_client import REGISTRY

from bridge import metrics
from bridge.devtools.docs import render
from tests.unit.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_generated_blocks_are_current() -> None:
    assert render(README) == README, "run `make docs`"


def test_every_metric_is_in_the_metrics_table() -> None:
    names = {m.name for m in REGISTRY.collect() if m.name.startswith(metrics.PREFIX)}
    assert names, "no bridge metric registered"
    table = README.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(apizee_bridge_[a-z_]+)`", table))
    # prometheus-client reports counters without their _total suffix.
    exposed = {n if n in documented else f"{n}_total" for n in names}
    assert exposed == documented


def test_every_reason_label_is_documented() -> None:
    row = next(line for line in README.splitlines() if "webhook_requests_total" in line)
    for reason in metrics.REASONS:
        assert reason in row, reason


def test_every_make_target_is_documented() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = re.search(r"^\.PHONY: (.+)$", makefile, re.MULTILINE)
    assert targets is not None
    for target in targets.group(1).split():
        if target != "format":
            assert f"`make {target}`" in README, target
