"""Streamlit-only helpers shared by the app's pages: run-folder readers, plots, widgets. The library is cvae/."""
