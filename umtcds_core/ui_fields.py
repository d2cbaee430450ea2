"""Streamlit widgets generated from a step's :class:`~umtcds_core.schema.Schema` — the page never restates a field.

Why the widgets are bound to session-state keys and never get ``value=``: a keyed widget keeps what the browser last
sent, so passing a new ``value=`` after "reset to preset" changed the preview but not the field, and Save wrote the
field. Here the one way to change what a widget shows is :func:`seed` (writing ``st.session_state[key]``), which
Streamlit sends to the browser; what is read back (:func:`inputs`) is therefore exactly what the user sees.

Why there are no ``min_value``/``max_value``: the browser refused out-of-range numbers with an English tooltip and
kept the old value silently. Any number can be typed; the schema's sentence (the same the CLI prints) says what is
wrong, and the page blocks saving until it is fixed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import streamlit as st

from .i18n import current_lang, tr
from .schema import Field, Schema


def to_widget(f: Field, value):
    """A field's value as its widget holds it (lists as "a, b", ``None`` text as "", floats as floats)."""
    if f.widget == "list" or f.type is list:
        return ", ".join(value or []) if isinstance(value, list) else ("" if value is None else str(value))
    if f.type is str and value is None:
        return ""
    if f.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def from_widget(f: Field, value):
    """What a widget holds, back as the field's value (the inverse of :func:`to_widget`)."""
    if f.widget == "list" or f.type is list:
        names = [t.strip() for t in str(value or "").split(",") if t.strip()]
        return names or (None if f.nullable else [])
    if f.type is str and isinstance(value, str):
        text = value.strip()
        return (text or None) if f.nullable else text
    return value


def seed(schema: Schema, values: dict, prefix: str, names: Iterable[str] | None = None, force: bool = False) -> None:
    """Put ``values`` into the widgets' keys: all of them (``force``, after a reset/load) or only missing ones."""
    for name in names if names is not None else schema.names():
        key = prefix + name
        if force or key not in st.session_state:
            st.session_state[key] = to_widget(schema[name], values.get(name, schema[name].default))


def widget(f: Field, container, key: str, on_change: Callable | None = None, disabled: bool = False):
    """One field's widget, bound to ``key`` (seeded beforehand); returns the field's value."""
    label = tr(*f.label)
    help_ = tr(*f.help) if f.help else None
    common = dict(key=key, help=help_, on_change=on_change, disabled=disabled)
    if f.choices and f.choice_labels:
        # the language is read now: Streamlit may call format_func outside the script run (AppTest does), where
        # tr() would fall back to English
        zh = current_lang() != "en"
        common["format_func"] = lambda c: f.choice_labels[c][0 if zh else 1] if c in f.choice_labels else str(c)
    if f.widget == "radio" and f.choices:
        raw = container.radio(label, list(f.choices), horizontal=True, **common)
    elif f.choices:
        raw = container.selectbox(label, list(f.choices), **common)
    elif f.type is bool:
        raw = container.checkbox(label, **common)
    elif f.type in (int, float):
        step = f.step if f.step is not None else (1 if f.type is int else 0.01)
        step = int(step) if f.type is int else float(step)
        raw = container.number_input(label, step=step, format=f.fmt, **common)
    elif f.widget == "textarea":
        raw = container.text_area(label, height=70, **common)
    else:
        raw = container.text_input(label, **common)
    return from_widget(f, raw)


def visible(schema: Schema, values: dict, names: Iterable[str] | None = None) -> list[Field]:
    """The fields to draw: not hidden and, where a field has ``show``, shown for these values."""
    chosen = schema.names() if names is None else list(names)
    return [
        schema[n] for n in chosen if schema[n].widget != "hidden" and (schema[n].show is None or schema[n].show(values))
    ]


def inputs(
    schema: Schema,
    values: dict,
    prefix: str,
    names: Iterable[str] | None = None,
    cols: int = 3,
    sections: bool = True,
    on_change: dict[str, Callable] | None = None,
    disabled: bool = False,
) -> dict:
    """Draw the visible fields of ``names`` (default: all) and return their values as typed.

    Fields sit ``cols`` to a row; text areas, lists and radios take a full row; a field declaring ``section``
    starts a subheader. Missing widget keys are seeded from ``values`` first (a field hidden on the last run, e.g.
    the LoRA rank while P-tuning was chosen, comes back with its kept value)."""
    live = dict(values)  # what the widgets hold now decides what is shown (e.g. a choice that reveals its options)
    for f in schema.fields:
        if prefix + f.name in st.session_state:
            live[f.name] = from_widget(f, st.session_state[prefix + f.name])
    fields = visible(schema, live, names)
    seed(schema, values, prefix, [f.name for f in fields])
    out: dict = {}
    row: list[Field] = []

    def flush() -> None:
        if row:
            columns = st.columns(cols)
            for i, f in enumerate(row):
                out[f.name] = widget(f, columns[i], prefix + f.name, (on_change or {}).get(f.name), disabled)
            row.clear()

    for f in fields:
        if sections and f.section:
            flush()
            st.subheader(tr(f.section[0], f.section[1]))
        if f.widget in ("textarea", "list", "radio", "text"):
            flush()
            out[f.name] = widget(f, st, prefix + f.name, (on_change or {}).get(f.name), disabled)
            continue
        row.append(f)
        if len(row) == cols:
            flush()
    flush()
    return out
