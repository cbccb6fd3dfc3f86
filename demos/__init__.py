"""Gradio demos built on embedhub (installed as ``embedhub.demos``)."""
