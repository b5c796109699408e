"""The web UI (a face): a Gradio app over the job manager, its form built from the config's fields."""
