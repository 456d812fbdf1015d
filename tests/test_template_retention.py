"""Which templates a host removes: those no VM of it has used for the grace period."""

from __future__ import annotations

import pytest

from novacron.agent.config import ConfigError, load
from novacron.agent.core.images.retention import Retention, used_refs
from novacron.agent.core.templates import TEMPLATE_LABEL


def test_a_template_unused_for_the_grace_is_removed_and_one_in_use_is_kept() -> None:
    rule = Retention(grace=100.0)
    held = ["debian-12:1", "alpine:3"]
    assert rule.look(held, used=["alpine:3"], now=0.0) == []
    assert rule.look(held, used=["alpine:3"], now=99.0) == []
    assert rule.look(held, used=["alpine:3"], now=100.0) == ["debian-12:1"]
    assert rule.unused_since("alpine:3") is None


def test_using_a_template_again_restarts_its_grace() -> None:
    rule = Retention(grace=100.0)
    rule.look(["debian-12:1"], used=[], now=0.0)
    rule.look(["debian-12:1"], used=["debian-12:1"], now=80.0)  # a VM made from it
    assert rule.look(["debian-12:1"], used=[], now=150.0) == []  # unused again since 150
    assert rule.unused_since("debian-12:1") == 150.0
    assert rule.look(["debian-12:1"], used=[], now=250.0) == ["debian-12:1"]


def test_a_template_pulled_again_after_removal_gets_a_fresh_grace() -> None:
    rule = Retention(grace=100.0)
    rule.look(["debian-12:1"], used=[], now=0.0)
    assert rule.look([], used=[], now=120.0) == []  # removed: forgotten
    assert rule.look(["debian-12:1"], used=[], now=130.0) == []
    assert rule.look(["debian-12:1"], used=[], now=229.0) == []


def test_a_zero_grace_keeps_every_template() -> None:
    rule = Retention(grace=0.0)
    assert rule.look(["debian-12:1"], used=[], now=0.0) == []
    assert rule.look(["debian-12:1"], used=[], now=1e9) == []


def test_a_vm_label_or_a_disk_base_counts_as_use() -> None:
    labels = [{TEMPLATE_LABEL: "debian-12:1", "team": "edge"}, {"team": "web"}, {}]
    assert used_refs(labels, ["alpine:3"]) == {"debian-12:1", "alpine:3"}
    assert used_refs([{TEMPLATE_LABEL: ""}], []) == set()


def test_a_negative_grace_is_refused_at_start_and_the_default_is_a_week() -> None:
    with pytest.raises(ConfigError, match="template_unused_grace must not be negative"):
        load({"template_unused_grace": -1.0}, environ={}, config_file="/dev/null")
    assert load({}, environ={}, config_file="/dev/null").template_unused_grace == 7 * 86400
