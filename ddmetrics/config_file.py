"""Run configurations as YAML: ``ddmetrics distill --config run.yaml`` and a run folder's ``config.yaml``.

The file is one mapping. Its keys are the ``distill`` command's options (by their long names,
``-`` or ``_``) and the :class:`~ddmetrics.distill.presets.DistillConfig` fields, the latter at
the top level or under ``config:``::

    dataset: digits          # the command's options (COMMAND_KEYS)
    method: dm
    ipc: 10
    seed: 0
    runs: 3                  # evaluation runs (0: none); no_full: true skips the full-data model
    out: runs/dm10
    config:                  # DistillConfig fields: synthesis, teacher, evaluation
      iterations: 2000
      lr: 0.5
      eval_protocol: soft

Precedence: the file, then ``--set key=value``, then the options given on the command line
(``--ipc 50`` over ``ipc: 10``; ``--iterations`` over ``--set iterations=`` over
``iterations:``). Everything is checked when the file is read, before any data: a key that is
not a setting, a value a setting does not allow, a key given twice and a syntax error are
refused with the file, the line and the key. A field whose value is the method's own
(:func:`~ddmetrics.distill.presets.preset`) is not an override, so a recorded ``config.yaml``
(every field) reads back even where a field does not apply to the method; any other value of a
field the method does not use is refused, as on the command line.

A run folder's ``config.yaml`` (:func:`write_config`) records the resolved run: the command's
options that decide the result and every ``DistillConfig`` field; ``ddmetrics distill --config
runs/x/config.yaml --out runs/y`` repeats the run.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

__all__ = ["COMMAND_KEYS", "COMMAND_ONLY", "RunConfigFile", "read_config", "write_config", "config_text"]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _text(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _optional(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or test(v)


#: the ``distill`` command's options a file may set -> (test of a value, what is allowed); the
#: options that are also ``DistillConfig`` fields (loss, iterations, budget, teacher_arch) are fields here
COMMAND_KEYS: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "dataset": (_text, "a dataset name or a path"),
    "method": (_text, "a method preset"),
    "ipc": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "seed": (_is_int, "an integer"),
    "runs": (lambda v: _is_int(v) and v >= 0, "0 (no evaluation) or a positive integer"),
    "no_full": (lambda v: isinstance(v, bool), "true or false"),
    "teacher": (_optional(_text), "null or the path of a teacher file"),
    "image_size": (_optional(lambda v: _is_int(v) and v >= 1), "null or a positive number of pixels"),
    "workers": (lambda v: _is_int(v) and v >= 0, "0 or a positive integer"),
    "device": (_text, "auto, cpu, cuda or cuda:N"),
    "amp": (lambda v: isinstance(v, bool), "true or false"),
    "class_batch": (lambda v: v in ("auto", "all") or (_is_int(v) and v >= 1), "auto, all or a positive integer"),
    "out": (_text, "a folder"),
    "checkpoint": (_optional(_text), "null or a folder"),
    "checkpoint_every": (_optional(lambda v: _is_int(v) and v >= 1), "null or a positive number of steps"),
}

#: options that act on one invocation, not settings of a run: refused in a file, with where they go
COMMAND_ONLY = ("overwrite", "resume", "quiet", "debug", "config", "set")

#: the command's options a run folder's ``config.yaml`` records (where the run was written is not recorded)
RECORDED = ("dataset", "method", "ipc", "seed", "runs", "no_full", "teacher", "image_size", "workers", "device",
            "amp", "class_batch")


def _fields() -> Dict[str, str]:
    """``DistillConfig`` field -> its annotation (imported on use: the presets import torch)."""
    from .distill.presets import DistillConfig

    return {f.name: str(f.type) for f in dataclasses.fields(DistillConfig)}


@dataclass
class RunConfigFile:
    """A read ``--config`` file: the command's options and the ``DistillConfig`` fields it sets,
    checked, and the line of each (1-based)."""

    path: str
    command: Dict[str, Any] = field(default_factory=dict)
    config: Dict[str, Any] = field(default_factory=dict)
    lines: Dict[str, int] = field(default_factory=dict)

    def where(self, key: str) -> str:
        """``"run.yaml line 7 (lr)"``: where ``key`` was set."""
        return f"{self.path} line {self.lines[key]} ({key})"

    def overrides(self, method: str, loss: Optional[str] = None) -> Dict[str, Any]:
        """The file's ``DistillConfig`` settings that differ from ``method``'s own values (with the
        run's ``loss``: another loss than the preset's drops its ``loss_kwargs``, as
        :func:`~ddmetrics.distill.presets.preset` does)."""
        own = _own_values(method, loss)
        return {k: v for k, v in self.config.items() if k not in own or own[k] != v}

    def locate(self, message: str, fields: Iterable[str]) -> str:
        """``message`` prefixed with where the first of ``fields`` set in the file was set (else as it is)."""
        for name in fields:
            if name in self.lines and name in self.config:
                return f"{self.where(name)}: {message}"
        return message


def _own_values(method: str, loss: Optional[str]) -> Dict[str, Any]:
    from .distill.presets import PRESETS, DistillConfig

    if method not in PRESETS:
        return {}
    settings = dict(PRESETS[method])
    if loss is not None and loss != settings.get("loss", DistillConfig.loss):
        settings.update(loss=loss, loss_kwargs={})
    return DistillConfig().replace(**settings).to_dict()


def _fail(path: str, line: int, key: Optional[str], message: str) -> ValueError:
    """The error of a file's line (and key)."""
    return ValueError(f"{path} line {line}{f' ({key})' if key else ''}: {message}")


def _float_text(kind: str, value: Any) -> Any:
    """A float field given text that is a number: PyYAML (YAML 1.1) reads ``1e-3`` (no dot) as text."""
    if kind in ("float", "Optional[float]") and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    return value


def read_config(path: str) -> RunConfigFile:
    """Read and check the YAML run configuration at ``path`` (see the module docstring).

    Raises
    ------
    ValueError
        The file is missing or not YAML, its top is not a mapping, a key is not a setting (or
        appears twice), or a value is not allowed; the message names the file, the line and the key.
    """
    import yaml

    from .distill.presets import PRESETS, check_field
    from .losses import loss_class

    if not os.path.isfile(path):
        raise ValueError(f"--config {path}: no such file")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"--config {path}: cannot read it ({err})") from None
    loader = yaml.SafeLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            line = mark.line + 1 if mark is not None else 1
            raise _fail(path, line, None, f"not valid YAML: {err.problem or err.context}") from None
        except yaml.YAMLError as err:
            raise ValueError(f"--config {path}: not valid YAML ({err})") from None
        out = RunConfigFile(path)
        if root is None:  # an empty file: nothing set
            return out
        if not isinstance(root, yaml.MappingNode):
            raise _fail(path, root.start_mark.line + 1, None, "the file must be a mapping of settings (key: value)")
        kinds = _fields()
        entries = []
        for key_node, value_node in root.value:
            key = _key(path, key_node)
            if key == "config":
                if isinstance(value_node, yaml.ScalarNode) and value_node.tag.endswith(":null"):
                    continue
                if not isinstance(value_node, yaml.MappingNode):
                    raise _fail(path, value_node.start_mark.line + 1, "config",
                                "config must be a mapping of DistillConfig fields")
                for sub_key, sub_value in value_node.value:
                    name = _key(path, sub_key)
                    if name not in kinds:
                        raise _fail(path, sub_key.start_mark.line + 1, name,
                                    f"not a DistillConfig field{_suggest(name, kinds)}; the fields: "
                                    f"{', '.join(sorted(kinds))}")
                    entries.append((name, sub_key.start_mark.line + 1, sub_value))
            else:
                entries.append((key, key_node.start_mark.line + 1, value_node))
        for key, line, value_node in entries:
            if key in out.lines:
                raise _fail(path, line, key, f"set twice (first on line {out.lines[key]})")
            if key in COMMAND_ONLY:
                flag = "--" + key.replace("_", "-")
                raise _fail(path, line, key, f"{key!r} acts on one invocation, it is not a setting of the run: "
                                             f"give {flag} on the command line")
            if key not in COMMAND_KEYS and key not in kinds:
                valid = sorted(set(COMMAND_KEYS) | set(kinds))
                raise _fail(path, line, key, f"not a setting of ddmetrics distill{_suggest(key, valid)}: the keys "
                                             f"are the command's options ({', '.join(COMMAND_KEYS)}) and the "
                                             f"DistillConfig fields ({', '.join(sorted(kinds))})")
            try:
                value = loader.construct_object(value_node, deep=True)
            except yaml.YAMLError as err:
                raise _fail(path, line, key, f"cannot read its value ({err})") from None
            out.lines[key] = line
            if key in COMMAND_KEYS:
                test, allowed = COMMAND_KEYS[key]
                if not test(value):
                    raise _fail(path, line, key, f"{key}={value!r} is not allowed: {key} must be {allowed}")
                if key == "method" and value not in PRESETS:
                    raise _fail(path, line, key, f"unknown method {value!r}; valid methods: "
                                                 f"{', '.join(sorted(PRESETS))}")
                out.command[key] = value
                continue
            if key == "loss" and value is None:  # the method's own, as without the key
                continue
            try:
                value = check_field(key, _float_text(kinds[key], value))
                if key == "loss":
                    loss_class(value)  # an unknown or uninstalled loss, by name
            except (ValueError, TypeError, KeyError, ImportError) as err:
                message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
                raise _fail(path, line, key, str(message)) from None
            out.config[key] = value
        return out
    finally:
        loader.dispose()


def _key(path: str, node: Any) -> str:
    import yaml

    if not isinstance(node, yaml.ScalarNode) or not isinstance(node.value, str) or not node.value:
        raise _fail(path, node.start_mark.line + 1, None, "a key must be a setting's name")
    return node.value.replace("-", "_")


def _suggest(key: str, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def config_text(command: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """The YAML of a resolved run: ``command`` (the recorded options of :data:`RECORDED`) and
    ``config`` (every ``DistillConfig`` field) under ``config:``."""
    import yaml

    head = ("# ddmetrics distill: the resolved settings of this run. Repeat it with\n"
            "#   ddmetrics distill --config config.yaml --out NEW_FOLDER\n")
    data = {k: command[k] for k in RECORDED if k in command}
    data["config"] = dict(config)
    return head + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def write_config(path: str, command: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """Write :func:`config_text` at ``path``, atomically."""
    from ._io import atomic_write_bytes

    atomic_write_bytes(path, config_text(command, config).encode("utf-8"))
