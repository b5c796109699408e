"""modules/script_callbacks.py: on_ui_tabs(callback) / ui_tabs_callback()."""

ui_tabs_callbacks: list = []


def on_ui_tabs(callback):
    ui_tabs_callbacks.append(callback)


def ui_tabs_callback():
    return [tab for callback in ui_tabs_callbacks for tab in callback() or []]
