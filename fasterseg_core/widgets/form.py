"""The config form: one widget per key of :class:`~fasterseg_core.config.RunConfig`, built from the schema.

Every leaf key that :func:`fasterseg_core.schema.fields_of` lists gets a widget (a dropdown for a
``Literal``, a checkbox for a bool, a bounded number for a ranged int/float, a text box otherwise; tuples
are typed as ``256, 512``), grouped in one tab per section (``run`` holds the top-level keys such as
``seeds``). Each row shows the key, the profile's value and the dataclass default. The form's output is
the override dict: the keys whose value differs from the profile's. Every edit is validated at once by
:func:`~fasterseg_core.config.load_config`, the same function the notebooks call, and its error is shown
next to the field it names, so what the form accepts is exactly what a stage accepts.
"""

from __future__ import annotations

import html
import json
import math
import re
import typing
from collections.abc import Callable
from typing import Any

import ipywidgets as w

from ..config import RunConfig, load_config
from ..schema import ConfigError, FieldInfo, Range, fields_of
from .commands import profile_names

# Sections in pipeline order; "run" is the top level (device, output_root, seeds, ...).
SECTIONS = ("run", "data", "model", "search", "teacher", "distill", "student", "latency", "report")
# The profile is chosen with its own dropdown (it names the YAML file and the output folder), not overridden.
_NOT_IN_FORM = {"profile"}
# A number bounded on one side only still needs both bounds in a Bounded*Text widget: these stand for "none"
# (ints stay within JavaScript's exact integers).
_NO_BOUND_INT, _NO_BOUND_FLOAT = 2**31 - 1, 1e12
_LABEL = {"description_width": "190px"}
_ERROR_KEY = re.compile(r"^([\w.]+)(?:\[\d+\])?: ")


def section_of(key: str) -> str:
    """``"student.epochs"`` → ``"student"``; a top-level key (``seeds``) → ``"run"``."""
    return key.split(".")[0] if "." in key else "run"


def value_at(cfg: RunConfig, key: str) -> Any:
    """The value of a dotted key in a config (``value_at(cfg, "search.arch_lr")``)."""
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _plain(tp: Any) -> Any:
    tp = typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp
    # A tuple of choices (latency.backends) is typed in as words; load_config then checks each is a choice.
    return type(typing.get_args(tp)[0]) if typing.get_origin(tp) is typing.Literal else tp


def _tuple_items(base: Any) -> tuple[list[Any], bool]:
    """(element types, variadic) of a ``tuple[...]`` field."""
    args = typing.get_args(base)
    if len(args) == 2 and args[1] is Ellipsis:
        return [_plain(args[0])], True
    return [_plain(a) for a in args], False


def format_value(value: Any) -> str:
    """How a value reads in the form: tuples as ``256, 512``, floats in their shortest exact form."""
    if isinstance(value, tuple):
        return ", ".join(format_value(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


class Field:
    """One row of the form: the widget of a key, its profile value and default, and its error.

    Args:
        info: the key as the schema describes it.
        value: the value to show first (the profile's, with any initial overrides).
        profile_value: the profile's value (what an unchanged field means).
    """

    def __init__(self, info: FieldInfo, value: Any, profile_value: Any) -> None:
        self.info, self.key = info, info.key
        self.widget = self._build(info, value)
        self.note = w.HTML(layout=w.Layout(margin="0 0 0 8px"))
        self.error = w.HTML(layout=w.Layout(margin="0 0 0 8px"))
        self.message = ""  # the error shown (plain text)
        self.row = w.HBox([self.widget, self.note, self.error])
        self.show_profile(profile_value)

    def _build(self, info: FieldInfo, value: Any) -> w.ValueWidget:
        common = {"description": info.key.split(".")[-1], "tooltip": info.key, "style": _LABEL,
                  "layout": w.Layout(width="420px")}
        if info.choices:
            return w.Dropdown(options=list(info.choices), value=value, **common)
        if info.base is bool:
            return w.Checkbox(value=value, indent=True, **common)
        ranges = [r for r in info.rules if isinstance(r, Range) and not r.length]
        if info.base is int:
            lo = None if not ranges or ranges[0].lo is None else math.floor(ranges[0].lo) + ranges[0].lo_open
            hi = None if not ranges or ranges[0].hi is None else math.ceil(ranges[0].hi) - ranges[0].hi_open
            if lo is None and hi is None:
                return w.IntText(value=value, **common)
            lo, hi = (-_NO_BOUND_INT if lo is None else lo), (_NO_BOUND_INT if hi is None else hi)
            return w.BoundedIntText(value=value, min=lo, max=hi, **common)
        if info.base is float:
            # Open bounds (lr > 0) cannot be expressed by the widget: it allows the bound, load_config rejects it.
            lo = None if not ranges else ranges[0].lo
            hi = None if not ranges else ranges[0].hi
            if lo is None and hi is None:
                return w.FloatText(value=value, **common)
            lo, hi = (-_NO_BOUND_FLOAT if lo is None else lo), (_NO_BOUND_FLOAT if hi is None else hi)
            return w.BoundedFloatText(value=value, min=lo, max=hi, step=None, **common)
        if info.base is str or typing.get_origin(info.base) is tuple:
            return w.Text(value=format_value(value), continuous_update=False, **common)
        raise TypeError(f"no form widget for {info.key} of type {info.base}")  # a new kind of config field

    def parse(self) -> Any:
        """The widget's value as the config type (tuples from their text).

        Raises:
            ValueError: the text is not a list of the element type (the message names the key and an example).
        """
        value = self.widget.value
        if typing.get_origin(self.info.base) is not tuple:
            return value
        types, variadic = _tuple_items(self.info.base)
        items = [s.strip() for s in value.split(",")] if value.strip() else []
        try:
            parsed = tuple(tp(s) for s, tp in zip(items, types * len(items)))  # extra items: the length check
        except ValueError:
            kinds = {int: "integers", float: "numbers", str: "words"}[types[0]]
            raise ValueError(f"{self.key}: {value!r} is not a comma-separated list of {kinds}; "
                             f"e.g. {format_value(self.info.default) or '1, 2'}") from None
        if not variadic and len(parsed) != len(types):
            raise ValueError(f"{self.key}: {value!r} has {len(parsed)} values, expected {len(types)}; "
                             f"e.g. {format_value(self.info.default)}")
        return parsed

    def set(self, value: Any) -> None:
        """Show a config value in the widget."""
        tuple_or_str = typing.get_origin(self.info.base) is tuple or self.info.base is str
        self.widget.value = format_value(value) if tuple_or_str else value

    def show_profile(self, value: Any) -> None:
        """Note the profile's value and the default beside the widget."""
        self.profile_value = value
        default = self.info.default
        said = f"default {html.escape(format_value(default)) or '(empty)'}"
        if value != default:
            said = f"profile {html.escape(format_value(value)) or '(empty)'} · {said}"
        self.note.value = f"<span style='color: #777; font-size: 11px'>{said}</span>"

    def show_error(self, message: str) -> None:
        """An error next to the field (empty: none); the widget's frame turns red while it lasts."""
        self.message = message
        self.error.value = f"<span style='color: #c62828'>{html.escape(message)}</span>" if message else ""
        self.widget.layout.border = "1px solid #c62828" if message else ""


class ConfigForm:
    """The profile dropdown and one tab per config section; the live override dict; validation.

    Args:
        profile: the profile shown first.
        overrides: overrides applied on top of it at first (e.g. the notebook's ``overrides`` parameter).
        on_change: called with the form after every edit (after validation).
    """

    def __init__(self, profile: str, overrides: dict[str, Any] | None = None,
                 on_change: Callable[[ConfigForm], None] | None = None) -> None:
        self.on_change = on_change
        self.profile = w.Dropdown(options=profile_names(), value=profile, description="profile")
        self.message = w.HTML()  # errors that name no field (a broken profile file)
        self._general = ""
        self.overrides_view = w.HTML()
        self.cfg: RunConfig | None = None  # the validated config of the current values, None while invalid
        self._loading = False
        base = load_config(profile)
        shown = load_config(profile, dict(overrides or {}))
        infos = [f for f in fields_of(RunConfig) if f.key not in _NOT_IN_FORM]
        self.fields = {f.key: Field(f, value_at(shown, f.key), value_at(base, f.key)) for f in infos}
        for field in self.fields.values():
            field.widget.observe(self._changed, names="value")
        self.tabs = w.Tab(
            children=[w.VBox([f.row for f in self.fields.values() if section_of(f.key) == s]) for s in SECTIONS],
            titles=SECTIONS,
        )
        self.profile.observe(self._switch, names="value")
        self.widget = w.VBox([w.HBox([self.profile, self.message]), self.tabs, self.overrides_view])
        self.validate()

    def overrides(self) -> dict[str, Any]:
        """The keys whose value differs from the profile's, as JSON-ready values (tuples as lists).

        Raises:
            ValueError: a text field does not parse (see :meth:`Field.parse`).
        """
        overrides, errors = self._collect()
        if errors:
            raise ValueError(next(iter(errors.values())))
        return overrides

    def _collect(self) -> tuple[dict[str, Any], dict[str, str]]:
        """(overrides, parse errors by key) of the current values."""
        overrides, errors = {}, {}
        for key, field in self.fields.items():
            try:
                value = field.parse()
            except ValueError as err:
                errors[key] = str(err)
                continue
            if value != field.profile_value:
                overrides[key] = list(value) if isinstance(value, tuple) else value
        return overrides, errors

    def validate(self) -> RunConfig | None:
        """Check the current values with ``load_config``; errors go next to their fields.

        Returns:
            The resolved config, or ``None`` when a value is invalid (nothing may launch then).
        """
        overrides, errors = self._collect()
        general = ""
        self.cfg = None
        if not errors:
            try:
                self.cfg = load_config(self.profile.value, overrides)
            except ConfigError as err:
                key = (m := _ERROR_KEY.match(str(err))) and m[1]
                if key in self.fields:
                    errors[key] = str(err)
                else:
                    general = str(err)
        for key, field in self.fields.items():
            field.show_error(errors.get(key, ""))
        for i, s in enumerate(SECTIONS):  # a tab holding an error says so in its title
            bad = any(section_of(k) == s for k in errors)
            self.tabs.set_title(i, f"{s} ⚠" if bad else s)
        self._show_general(general)
        lines = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in overrides.items())  # one key a line
        text = html.escape(f"{{\n{lines}\n}}") if overrides else "{} (the profile as it is)"
        self.overrides_view.value = (
            f"<b>overrides</b> (keys that differ from <code>params/{html.escape(self.profile.value)}.yaml</code>):"
            f"<pre style='margin: 2px 0; font-size: 11px'>{text}</pre>"
        )
        return self.cfg

    def errors(self) -> dict[str, str]:
        """The errors shown now, by key (``""``: the form-level one)."""
        out = {k: f.message for k, f in self.fields.items() if f.message}
        return out | ({"": self._general} if self._general else {})

    def _show_general(self, message: str) -> None:
        self._general = message
        self.message.value = f"<span style='color: #c62828'>{html.escape(message)}</span>" if message else ""

    def _changed(self, _: Any = None) -> None:
        if self._loading:
            return
        self.validate()
        if self.on_change is not None:
            self.on_change(self)

    def _switch(self, change: dict[str, Any]) -> None:
        """A new profile: every field shows its value (the edits of the old profile are dropped)."""
        try:
            cfg = load_config(change["new"])
        except ConfigError as err:  # a broken profile file: say so, leave the fields as they are
            self.cfg = None
            self._show_general(str(err))
            if self.on_change is not None:
                self.on_change(self)
            return
        self._loading = True
        try:
            for key, field in self.fields.items():
                field.show_profile(value_at(cfg, key))
                field.set(value_at(cfg, key))
        finally:
            self._loading = False
        self._changed()
