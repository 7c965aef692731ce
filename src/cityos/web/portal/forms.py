"""Draws a service's JSON Schema form with NiceGUI (the mapping itself is in `schema.py`).

Two layouts: every field on one page, or — in the elderly-friendly mode — one question per step
with large "previous / next" buttons. Each widget carries the CSS class `f-<field name>` so that
browser tests (and assistive tools) can find it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nicegui import ui

from cityos.web.portal.schema import Field, check, collect, field_errors, fields_from_schema


def _css_name(name: str) -> str:
    return "f-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


class SchemaForm:
    """A form drawn from a JSON Schema; `submit` reads and checks it, `show_errors` marks fields."""

    def __init__(self, schema: dict[str, Any] | None, *, values: dict[str, Any] | None = None,
                 one_per_step: bool = False) -> None:
        self.fields: list[Field] = fields_from_schema(schema)
        self.values: dict[str, Any] = {}
        for spec in self.fields:
            given = (values or {}).get(spec.name, spec.default)
            self.values[spec.name] = (False if given is None else given) if spec.kind == "boolean" else given
        self.one_per_step = one_per_step
        self.widgets: dict[str, Any] = {}
        self.error_labels: dict[str, ui.label] = {}
        self.step = 0
        self._step_views: list[ui.element] = []
        self._progress: ui.label | None = None
        self._prev: ui.button | None = None
        self._next: ui.button | None = None
        self.on_last_step: Callable[[bool], None] | None = None

    # ------------------------------------------------------------------ drawing

    def render(self) -> None:
        if not self.fields:
            ui.label("本事项无需填写表单 This service needs no form").classes("text-grey-8")
            return
        if not self.one_per_step:
            with ui.column().classes("w-full gap-1 schema-form"):
                for spec in self.fields:
                    self._draw(spec)
            return
        with ui.column().classes("w-full gap-2 schema-form step-form"):
            self._progress = ui.label().classes("text-lg font-bold step-progress")
            for spec in self.fields:
                with ui.column().classes("w-full step-view") as view:
                    self._draw(spec)
                self._step_views.append(view)
            with ui.row().classes("gap-4"):
                self._prev = ui.button("上一题 Previous", icon="arrow_back", on_click=lambda: self.go(-1)) \
                    .props("outline size=lg").classes("t-prev")
                self._next = ui.button("下一题 Next", icon="arrow_forward", on_click=lambda: self.go(1)) \
                    .props("size=lg").classes("t-next")
        self._show_step()

    def _draw(self, spec: Field) -> None:
        label = spec.label + (" *" if spec.required else "")
        css = _css_name(spec.name)

        def bind(element: Any) -> Any:
            element.on_value_change(lambda e, name=spec.name: self._changed(name, e.value))
            return element

        with ui.column().classes(f"w-full gap-0 field-block {css}-block"):
            widget: Any
            if spec.kind == "enum":
                options = {value: text for value, text in spec.options}
                widget = bind(ui.select(options, label=label, value=self.values.get(spec.name))
                              .props("outlined").classes(f"w-full {css}"))
            elif spec.kind == "boolean":
                widget = bind(ui.checkbox(label, value=bool(self.values.get(spec.name))).classes(css))
            elif spec.kind in ("number", "integer"):
                widget = bind(ui.number(label, value=self.values.get(spec.name), min=spec.minimum,
                                        max=spec.maximum, step=spec.step,
                                        precision=0 if spec.kind == "integer" else None)
                              .props("outlined").classes(f"w-full {css}"))
            elif spec.kind == "date":
                widget = bind(ui.date_input(label, value=self.values.get(spec.name) or "")
                              .props("outlined").classes(f"w-full {css}"))
            elif spec.kind == "text":
                widget = bind(ui.textarea(label, value=self.values.get(spec.name) or "")
                              .props("outlined autogrow").classes(f"w-full {css}"))
            else:
                widget = bind(ui.input(label, value=self.values.get(spec.name) or "")
                              .props("outlined").classes(f"w-full {css}"))
            if spec.kind != "boolean":
                widget.props["hide-bottom-space"] = True
            hint = " · ".join(x for x in (spec.description, spec.hint) if x)
            if hint:
                ui.label(hint).classes("text-caption text-grey-8 field-hint")
            self.error_labels[spec.name] = ui.label().classes("text-negative text-sm field-error")
            self.error_labels[spec.name].set_visibility(False)
            self.widgets[spec.name] = widget

    def _changed(self, name: str, value: Any) -> None:
        self.values[name] = value
        self.set_error(name, None)

    # ------------------------------------------------------------------ step mode

    def go(self, delta: int) -> None:
        if delta > 0 and self.fields:
            spec = self.fields[self.step]
            _value, error = check(spec, self.values.get(spec.name))
            if error:
                self.set_error(spec.name, error)
                return
        self.step = max(0, min(len(self.fields) - 1, self.step + delta))
        self._show_step()

    def _show_step(self) -> None:
        for index, view in enumerate(self._step_views):
            view.set_visibility(index == self.step)
        if self._progress is not None:
            self._progress.text = f"第 {self.step + 1} / {len(self.fields)} 题  Question {self.step + 1} of " \
                                  f"{len(self.fields)}"
        if self._prev is not None:
            self._prev.set_enabled(self.step > 0)
        if self._next is not None:
            self._next.set_visibility(self.step < len(self.fields) - 1)
        if self.on_last_step is not None:
            self.on_last_step(self.is_last_step)

    @property
    def is_last_step(self) -> bool:
        return not self.one_per_step or not self.fields or self.step >= len(self.fields) - 1

    # ------------------------------------------------------------------ reading and errors

    def set_error(self, name: str, message: str | None) -> None:
        label = self.error_labels.get(name)
        if label is None:
            return
        label.text = message or ""
        label.set_visibility(bool(message))
        widget = self.widgets.get(name)
        if widget is not None and name != "" and hasattr(widget, "props"):
            if message:
                widget.props(add="error")
            else:
                widget.props(remove="error")

    def show_errors(self, errors: dict[str, str]) -> list[str]:
        """Mark the fields; returns the messages that belong to no field (show them elsewhere)."""
        for name in self.error_labels:
            self.set_error(name, errors.get(name))
        unplaced = [f"{k}: {v}" if k else v for k, v in errors.items() if k not in self.error_labels]
        if self.one_per_step and errors:
            first = next((i for i, spec in enumerate(self.fields) if spec.name in errors), None)
            if first is not None:
                self.step = first
                self._show_step()
        return unplaced

    def show_problem(self, problem: Any) -> list[str]:
        """Mark the fields named in a ProblemDetails body; returns the messages for no field."""
        return self.show_errors(field_errors(problem))

    def submit(self) -> tuple[dict[str, Any], dict[str, str]]:
        """(form document, errors); the errors are shown next to their fields."""
        doc, errors = collect(self.fields, self.values)
        self.show_errors(errors)
        return doc, errors
