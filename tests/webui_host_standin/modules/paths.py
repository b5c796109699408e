"""modules/paths.py: models_path (the test sets it to its Web-UI folder's models/)."""

models_path = ""
