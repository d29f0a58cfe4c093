"""The fidelity table (docs/fidelity.md) says what the presets are: its "ddmetrics default" column
equals ``preset(method).to_dict()`` for every field a preset uses, and lists every such field."""
import ast
import os
import re

import pytest

from ddmetrics.distill.presets import PRESETS, applies, preset

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "fidelity.md")
FIELD = re.compile(r"^`([a-z_]+)`$")
LITERAL = re.compile(r"^`(.+)`$")


def tables():
    """method -> {field: (default as written, the row's cells)} from the doc's per-method tables."""
    with open(DOC, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    out, method, columns = {}, None, None
    for line in lines:
        heading = re.match(r"^## ([a-z0-9_]+)\s*$", line)
        if heading:
            method, columns = heading.group(1), None
            out[method] = {}
            continue
        if method is None or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if columns is None:
            columns = cells
            continue
        if set("".join(cells)) <= set("-: "):
            continue
        row = dict(zip(columns, cells))
        name = FIELD.match(row["field"])
        assert name is not None, f"{method}: the field column must name one field in backticks: {line}"
        default = LITERAL.match(row["ddmetrics default"])
        assert default is not None, f"{method}.{name.group(1)}: the default must be a literal in backticks"
        out[method][name.group(1)] = (default.group(1), row)
    return out


TABLES = tables()


def test_every_preset_has_a_table():
    assert sorted(TABLES) == sorted(PRESETS)


@pytest.mark.parametrize("method", sorted(PRESETS))
def test_the_default_column_is_the_preset(method):
    cfg = preset(method)
    values = cfg.to_dict()
    used = {name for name in values if applies(cfg, name)}
    listed = TABLES[method]
    assert sorted(set(used) - set(listed)) == [], "fields the preset uses that the table does not list"
    assert sorted(set(listed) - set(used)) == [], "fields the table lists that the preset does not use"
    for name, (written, row) in listed.items():
        assert ast.literal_eval(written) == values[name], f"{method}.{name}: table {written}, preset {values[name]!r}"
        for column in ("paper", "released code", "reproduces the release"):
            assert row.get(column), f"{method}.{name}: empty {column!r} cell"


def test_a_changed_preset_would_fail_the_table(monkeypatch):
    # the check can fail: move one preset value and the table no longer matches it
    monkeypatch.setitem(PRESETS, "dm", {**PRESETS["dm"], "batch_real": 64})
    cfg = preset("dm")
    written, _ = TABLES["dm"]["batch_real"]
    assert ast.literal_eval(written) != cfg.to_dict()["batch_real"]
