"""Declared settings: every field of a step written once — type, default, bounds, choices, labels, help, YAML
comment and CLI flag — and everything users see about it generated from that declaration.

Why: a training setting used to be described in seven places (the dataclass, type sets, range checks, YAML comments,
argparse, the CLI's override list, the page's widgets) and they drifted: the page allowed ``lora_r`` 2–128, the
validator 1–1024 and its message said 4–64. Here a :class:`Field` holds all of it, and a :class:`Schema` derives

* validation — one ``(English, Chinese)`` sentence per problem, naming the key and the fix (:meth:`Schema.problems`);
* warnings for legal but unusual values, from the field's ``typical`` range (:meth:`Schema.warnings`);
* commented YAML that ``yaml.safe_load`` reads back (:meth:`Schema.to_yaml`);
* argparse flags whose defaults are ``None``, so a flag given on the command line wins over a ``--config`` file
  (:meth:`Schema.add_arguments`, :meth:`Schema.overrides`);
* the dashboard's widgets (``ui_fields.py`` reads ``label``/``help``/``widget``/``step`` — no bounds in the browser:
  an out-of-range value is shown as typed and blocked with the same sentence the CLI prints).

Streamlit-free and torch-free: the CLI imports it for every step.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

Pair = tuple[str, str]
"""``(English, Chinese)`` — a problem or warning sentence (English first: the CLI prints it, tools read it)."""
Label = tuple[str, str]
"""``(Chinese, English)`` — UI text, in the argument order of ``i18n.tr``."""


class SettingsError(UserError, ValueError):
    """Settings with problems; ``problems`` lists each English sentence, the message lists them all."""

    def __init__(self, message: str, problems: list[str] | None = None, zh: str | None = None):
        super().__init__(message, zh=zh)
        self.problems = problems or [message]


class ConfigError(SettingsError):
    """A training-config problem; the message names the key and the fix.

    Declared here, below ``config``, ``methods`` and ``memory``, because all three raise it and ``config`` imports the
    other two (``config.ConfigError`` is this class)."""


@dataclass(frozen=True)
class Field:
    """One setting. Only ``name``, ``default``, ``label`` and ``comment`` are required; the rest narrows it."""

    name: str
    default: Any
    label: Label
    comment: str
    """English, one line: the YAML comment and the CLI ``--help`` text (say the trade-off, not the name)."""
    help: Label | None = None
    """Widget tooltip; ``None``: none."""
    kind: type | None = None
    """int, float, bool, str, list or dict; ``None``: the type of ``default``."""
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    """``min`` itself is not allowed (``0 < learning_rate``)."""
    max_open: bool = False
    choices: tuple | None = None
    choice_labels: dict | None = None
    """``{choice: (zh, en)}`` — how a choice is shown in the dashboard (the YAML and the CLI keep the value)."""
    valid: Callable[[Any], bool] | None = None
    """A custom test instead of ``min``/``max`` (e.g. ``max_steps`` is -1 or positive)."""
    range_msg: Pair | None = None
    """``(en, zh)`` sentence after ``"<key>: "`` when the bound/choice/valid test fails; ``{value}`` is filled in."""
    typical: tuple[float, float] | None = None
    """Legal values outside this range get a warning (shown, never blocking)."""
    flag: str | None = None
    """CLI flag; ``None``: ``--`` + the name with dashes; ``""``: no flag."""
    section: tuple[str, str, str] | None = None
    """Starts a group: ``(zh, en, YAML header)``."""
    widget: str = ""
    """"" (by type), "text", "textarea", "radio", "list" (comma-separated names), "hidden"."""
    step: float | None = None
    fmt: str | None = None
    show: Callable[[dict], bool] | None = None
    """The widget is shown only when this is true of the current values (the value is kept either way)."""
    example: str = ""
    """For list/dict/str type errors: an example value (``[q_proj, v_proj]``)."""

    @property
    def type(self) -> type:
        return self.kind or type(self.default)

    @property
    def cli_flag(self) -> str:
        return "--" + self.name.replace("_", "-") if self.flag is None else self.flag


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt_num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class Schema:
    """The settings of one step; ``rules`` add cross-field problems (each returns ``(en, zh)`` pairs)."""

    name: str
    fields: tuple[Field, ...]
    rules: tuple[Callable[[dict], list[Pair]], ...] = ()
    title: str = ""
    """First YAML header line."""
    command: str = ""
    """The command that reads the saved YAML (default: ``name``)."""
    by_name: dict[str, Field] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {f.name: f for f in self.fields})

    def __getitem__(self, name: str) -> Field:
        return self.by_name[name]

    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def defaults(self) -> dict:
        return {f.name: _copy(f.default) for f in self.fields}

    # ---- reading --------------------------------------------------------------------------------------------------
    def coerce(self, name: str, value):
        """Forgive spellings clearly meant as numbers: ``5e-4`` (a string to YAML 1.1), ``3000.0`` for an int."""
        f = self.by_name.get(name)
        if f is None:
            return value
        if f.type is float and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
        if f.type is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if f.type is int and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        return value

    def unknown_keys(self, data: dict) -> list[Pair]:
        """One problem per key the schema does not know, with the closest known name when there is one."""
        out: list[Pair] = []
        for key in data:
            if key in self.by_name:
                continue
            close = difflib.get_close_matches(str(key), self.by_name, n=1)
            if close:
                out.append(
                    (f"{key}: unknown key; did you mean '{close[0]}'?", f"{key}：未知的键；是不是想写“{close[0]}”？")
                )
            else:
                out.append(
                    (
                        f"{key}: unknown key; remove it (see `umtcds {self.name} --help` for the keys)",
                        f"{key}：未知的键；请删除它（可用的键见 `umtcds {self.name} --help`）",
                    )
                )
        return out

    def merge(self, data: dict) -> dict:
        """Defaults with the known keys of ``data`` applied (coerced), in declaration order."""
        values = self.defaults()
        values.update({k: self.coerce(k, v) for k, v in data.items() if k in self.by_name})
        return values

    # ---- checking -------------------------------------------------------------------------------------------------
    def field_problems(self, f: Field, value) -> list[Pair]:
        """Problems of one value: its type first; bounds only once the type is right."""
        k = f.name
        if value is None:
            return (
                []
                if f.nullable
                else [
                    (
                        f"{k}: must be set; e.g. {k}: {_yaml_scalar(f.default)}",
                        f"{k}：必须填写；例如 {k}: {_yaml_scalar(f.default)}",
                    )
                ]
            )
        t = f.type
        eg = f.example or _yaml_scalar(f.default)
        if t is bool and not isinstance(value, bool):
            return [(f"{k}: must be true or false (got {value!r})", f"{k}：必须是 true 或 false（当前是 {value!r}）")]
        if t is int and not _is_int(value):
            return [
                (
                    f"{k}: must be a whole number (got {value!r}); e.g. {k}: {eg}",
                    f"{k}：必须是整数（当前是 {value!r}）；例如 {k}: {eg}",
                )
            ]
        if t is float and not _is_num(value):
            return [
                (
                    f"{k}: must be a number (got {value!r}); e.g. {k}: {eg}",
                    f"{k}：必须是数字（当前是 {value!r}）；例如 {k}: {eg}",
                )
            ]
        null = (", or null", "，或 null") if f.nullable else ("", "")
        if t is str and (not isinstance(value, str) or (not f.nullable and not value.strip())):
            what = ("text", "文本") if f.nullable else ("non-empty text", "非空文本")
            return [
                (
                    f"{k}: must be {what[0]}{null[0]} (got {value!r}); e.g. {k}: {eg}",
                    f"{k}：必须是{what[1]}{null[1]}（当前是 {value!r}）；例如 {k}: {eg}",
                )
            ]
        if t is list and (
            not isinstance(value, list) or not value or not all(isinstance(x, str) and x.strip() for x in value)
        ):
            return [(f"{k}: must be a list of names like {eg}{null[0]}", f"{k}：必须是名称列表（如 {eg}）{null[1]}")]
        if t is dict and not isinstance(value, dict):
            return [
                (
                    f"{k}: must be a mapping of keys to values (or leave it out)",
                    f"{k}：必须是“键: 值”的映射（或者删掉这一项）",
                )
            ]
        ok = True
        if f.choices is not None:
            ok = value in f.choices
            if not ok and f.range_msg is None:
                listed = ", ".join(str(c) for c in f.choices)
                return [
                    (
                        f"{k}: '{value}' is not one of {listed}; pick one",
                        f"{k}：“{value}”不是 {listed} 之一；请从中选择一个",
                    )
                ]
        elif f.valid is not None:
            ok = bool(f.valid(value))
        elif _is_num(value):
            if f.min is not None:
                ok = ok and (value > f.min if f.min_open else value >= f.min)
            if f.max is not None:
                ok = ok and (value < f.max if f.max_open else value <= f.max)
        if ok:
            return []
        if f.range_msg is not None:
            en, zh = f.range_msg
            v = _fmt_num(value) if _is_num(value) else value
            return [(f"{k}: " + en.format(value=v), f"{k}：" + zh.format(value=v))]
        return [_bounds_sentence(f, value)]

    def problems(self, values: dict) -> list[Pair]:
        """Every problem of ``values`` (a full mapping of this schema), fields in order, then the cross-field rules."""
        out: list[Pair] = []
        for f in self.fields:
            out += self.field_problems(f, values.get(f.name))
        if not out:  # rules may compare fields, which is only meaningful once each field is well-typed
            for rule in self.rules:
                out += rule(values)
        return out

    def warnings(self, values: dict) -> list[Pair]:
        """Legal values outside a field's ``typical`` range: ``(en, zh)`` sentences that never block."""
        out: list[Pair] = []
        for f in self.fields:
            v = values.get(f.name)
            if f.typical is None or not _is_num(v):
                continue
            lo, hi = f.typical
            if lo <= v <= hi:
                continue
            side_en, side_zh = ("high", "高于") if v > hi else ("low", "低于")
            out.append(
                (
                    f"{f.name} {_fmt_num(v)} is unusually {side_en} (usual: {_fmt_num(lo)}–{_fmt_num(hi)}); "
                    f"{f.comment}.",
                    f"{f.name} = {_fmt_num(v)}，{side_zh}常用范围 {_fmt_num(lo)}–{_fmt_num(hi)}；请确认这是你想要的值。",
                )
            )
        return out

    def check(self, data: dict, where: str = "The settings") -> dict:
        """``data`` merged over the defaults and validated; raises one :class:`SettingsError` listing every problem."""
        if not isinstance(data, dict):
            raise SettingsError(
                f"{where} is not a mapping of keys to values; write `key: value` lines.",
                zh=f"{where_zh(where)}不是“键: 值”的映射；请按 `key: value` 的格式逐行书写。",
            )
        values = self.merge(data)
        raise_problems(where, self.unknown_keys(data) + self.problems(values), SettingsError)
        return values

    # ---- YAML -----------------------------------------------------------------------------------------------------
    def to_yaml(self, values: dict, title: str | None = None) -> str:
        """``values`` as YAML: a header, a ``# ---- section`` line per group and the field's comment on each line."""
        lines = [
            f"# {title or self.title or f'UMTCDS {self.name} settings'}",
            f"# Edit freely; `umtcds {self.command or self.name}` validates it and names any wrong key with a fix.",
        ]
        for f in self.fields:
            if f.section:
                lines += ["", f"# ---- {f.section[2]}"]
            value = values.get(f.name, f.default)
            if f.type is dict and not value:
                value = {}
            line = f"{f.name}: {_yaml_scalar(value)}"
            lines.append(f"{line}  # {f.comment}" if f.comment else line)
        return "\n".join(lines) + "\n"

    def read_yaml(self, path: str | Path) -> dict:
        """A settings file's raw mapping (not validated yet); a missing file or bad YAML is one clear sentence."""
        path = Path(path)
        if not path.is_file():
            raise SettingsError(
                f"Settings file {path} does not exist; save it from the dashboard or write one with `key: value` lines.",
                zh=f"设置文件 {path} 不存在；请在仪表盘中保存，或按 `key: value` 的格式写一个。",
            )
        return parse_yaml_text(path.read_text(encoding="utf-8"), str(path))

    def load_yaml(self, path: str | Path) -> dict:
        """A settings file, validated (missing keys take their defaults)."""
        return self.check(self.read_yaml(path), where=str(path))

    def save_yaml(self, values: dict, path: str | Path, title: str | None = None) -> Path:
        from .fileio import write_text_atomic

        raise_problems("The settings", self.problems(self.merge(values)), SettingsError)
        return write_text_atomic(path, self.to_yaml(self.merge(values), title))

    # ---- command line ---------------------------------------------------------------------------------------------
    def add_arguments(self, parser: argparse.ArgumentParser, skip: Iterable[str] = (), config: bool = True) -> None:
        """One flag per field (``default=None``: only flags actually given override the file or the defaults)."""
        if config:
            parser.add_argument(
                "--config",
                metavar="SETTINGS.yaml",
                help="read the settings from this YAML (the dashboard saves one per job); flags given too win",
            )
        skip = set(skip)
        for f in self.fields:
            if f.name in skip or not f.cli_flag:
                continue
            text = f.comment.replace("%", "%%")
            if f.type is bool:
                parser.add_argument(
                    f.cli_flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text
                )
                continue
            kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": text}
            if f.type is list:
                kwargs["type"] = _comma_list
                kwargs["metavar"] = "A,B"
            elif f.type in (int, float):
                kwargs["type"] = f.type
            if f.choices is not None:
                kwargs["choices"] = f.choices
            parser.add_argument(f.cli_flag, **kwargs)

    def overrides(self, args: argparse.Namespace) -> dict:
        """The fields whose flags were given."""
        return {f.name: getattr(args, f.name) for f in self.fields if getattr(args, f.name, None) is not None}

    def from_args(self, args: argparse.Namespace, base: dict | None = None) -> dict:
        """Settings for a command: defaults ← ``base`` ← ``--config`` file ← flags; validated as a whole."""
        data: dict = dict(base or {})
        where = "The settings"
        if getattr(args, "config", None):
            raw = self.read_yaml(args.config)
            if not isinstance(raw, dict):
                self.check(raw, where=str(args.config))  # raises the "not a mapping" sentence
            data.update(raw)
            where = str(args.config)
        data.update(self.overrides(args))
        return self.check(data, where=where)


def setting(default, label: Label, comment: str, **declared):
    """A dataclass field that carries its :class:`Field` declaration (litgpt's style: documented where declared)."""
    factory = (lambda: _copy(default)) if isinstance(default, (list, dict)) else None
    meta = {"setting": dict(default=default, label=label, comment=comment, **declared)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def optional_text(label: Label, comment: str, default: str | None = None, **declared):
    """A text setting that may be left empty (None): a folder, a file, a model reference, a URL — the commonest kind."""
    return setting(default, label, comment, kind=str, nullable=True, **declared)


def from_dataclass(cls, name: str, rules: tuple = (), title: str = "", command: str = "") -> Schema:
    """The :class:`Schema` of a dataclass whose fields were declared with :func:`setting`, in declaration order."""
    out = []
    for f in dataclasses.fields(cls):
        declared = f.metadata.get("setting")
        if declared is None:
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with setting()")
        out.append(Field(name=f.name, **declared))
    return Schema(name, tuple(out), rules=rules, title=title, command=command)


def _comma_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _copy(value):
    return list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value


def _bounds_sentence(f: Field, value) -> Pair:
    lo, hi = f.min, f.max
    v = _fmt_num(value)
    if lo is not None and hi is not None:
        lo_s = f"{'>' if f.min_open else '≥'} {_fmt_num(lo)}"
        hi_s = f"{'<' if f.max_open else '≤'} {_fmt_num(hi)}"
        return (
            f"{f.name}: {v} is out of range; use a value {lo_s} and {hi_s}",
            f"{f.name}：{v} 超出范围；请用 {lo_s} 且 {hi_s} 的值",
        )
    if lo is not None:
        op = ">" if f.min_open else "at least"
        op_zh = "大于" if f.min_open else "至少为"
        return (
            f"{f.name}: must be {op} {_fmt_num(lo)} (got {v})",
            f"{f.name}：必须{op_zh} {_fmt_num(lo)}（当前是 {v}）",
        )
    op = "<" if f.max_open else "at most"
    op_zh = "小于" if f.max_open else "至多为"
    return (f"{f.name}: must be {op} {_fmt_num(hi)} (got {v})", f"{f.name}：必须{op_zh} {_fmt_num(hi)}（当前是 {v}）")


# ---- messages -----------------------------------------------------------------------------------------------------
def where_zh(where: str) -> str:
    """``where`` ("The config"/"The settings" or a file name) as the subject of a Chinese sentence."""
    if where == "The config":
        return "配置"
    if where == "The settings":
        return "设置"
    return f"配置文件 {where} "


def problems_message(where: str, problems: list[str], lang: str = "en") -> str:
    """One message listing ``problems`` (already in ``lang``) under a heading naming ``where``."""
    if lang == "zh":
        if len(problems) == 1:
            return f"{where_zh(where)}有一个问题——{problems[0]}"
        return f"{where_zh(where)}有 {len(problems)} 个问题：\n" + "\n".join(f"- {x}" for x in problems)
    if len(problems) == 1:
        return f"{where} has a problem — {problems[0]}"
    return f"{where} has {len(problems)} problems:\n" + "\n".join(f"- {x}" for x in problems)


def check_value(schema: Schema, name: str, value) -> None:
    """Raise one :class:`~umtcds_core.errors.UserError` sentence, flag first (``--depth must be 0 or more …``), when
    ``value`` breaks field ``name``'s declaration — for code that builds a step's runtime object directly (a test, the
    demo, a bench): the same bounds and words as the CLI and the settings YAML, said the way a flag is."""
    f = schema[name]
    problems = schema.field_problems(f, value)
    if problems:
        en, zh = problems[0]
        en, zh = en.split(": ", 1)[-1], zh.split("：", 1)[-1]
        raise UserError(f"{f.cli_flag or name} {en}.", zh=f"{f.cli_flag or name} {zh}。")


def raise_problems(where: str, pairs: list[Pair], error: type[SettingsError] = SettingsError) -> None:
    """Raise one ``error`` listing every ``(English, Chinese)`` problem; nothing when there are none."""
    if pairs:
        en, zh = [e for e, _ in pairs], [z for _, z in pairs]
        raise error(problems_message(where, en), en, zh=problems_message(where, zh, "zh"))


def parse_yaml_text(text: str, where: str = "The config", error: type[SettingsError] = SettingsError):
    """YAML text → Python data; a syntax error names the line."""
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        at_zh = f"第 {mark.line + 1} 行" if mark is not None else ""
        raise error(
            f"{where} is not valid YAML{at} ({getattr(exc, 'problem', exc)}); fix that line.",
            zh=f"{where_zh(where)}{at_zh}不是有效的 YAML（{getattr(exc, 'problem', exc)}）；请修正那一行。",
        ) from exc


def _yaml_scalar(value) -> str:
    """One value as YAML that ``yaml.safe_load`` reads back to the same Python value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        if "e" in text or "E" in text:  # YAML 1.1 (PyYAML) needs "5.0e-04", not "5e-04"
            mant, _, exp = text.lower().partition("e")
            if "." not in mant:
                mant += ".0"
            if exp[0] not in "+-":
                exp = "+" + exp
            text = f"{mant}e{exp}"
        elif text in ("inf", "-inf", "nan"):
            text = {"inf": ".inf", "-inf": "-.inf", "nan": ".nan"}[text]
        return text
    return json.dumps(value, ensure_ascii=False)  # strings, lists, dicts: JSON is YAML (double-quoted / flow style)


yaml_scalar = _yaml_scalar
