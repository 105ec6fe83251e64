"""Helpers shared by the app's pages: run-folder readers, plots, the training launcher."""
