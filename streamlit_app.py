"""The cvae app: train a conditional VAE live, then look inside it.

    streamlit run streamlit_app.py

Navigation and the shared sidebar (the run picker) only; each page is a file in
app_pages/. Not pages/: a folder of that name next to this file switches
Streamlit to its old multipage mode, where a link straight to a page skips this file.
"""

from pathlib import Path

import streamlit as st

from ui.auth import gate
from ui.profiling import profiled
from ui.sidebar import run_picker

STATIC = Path(__file__).resolve().parent / "static"
# A local PNG: a :material/...: page icon becomes a favicon fetched from fonts.gstatic.com, which a
# classroom behind a firewall cannot reach (the icons in the navigation are drawn from a bundled font).
ICON = str(STATIC / "icon.png")


def main() -> None:
    with profiled("script"):  # the whole script run, around the page's own
        _main()


def _main() -> None:
    st.set_page_config(page_title="CVAE lab", page_icon=ICON, layout="wide")
    pages = [
        st.Page("app_pages/train.py", title="Train", icon=":material/model_training:", default=True),
        st.Page("app_pages/reconstructions.py", title="Reconstructions", icon=":material/compare:"),
        st.Page("app_pages/latent.py", title="Latent space", icon=":material/scatter_plot:"),
        st.Page("app_pages/generate.py", title="Generate", icon=":material/palette:"),
        st.Page("app_pages/draw.py", title="Draw a digit", icon=":material/draw:"),
        st.Page("app_pages/complete.py", title="Complete a digit", icon=":material/extension:"),
        st.Page("app_pages/compare.py", title="Compare runs", icon=":material/stacked_line_chart:"),
        st.Page("app_pages/twins.py", title="Twin runs", icon=":material/call_split:"),
        st.Page("app_pages/wall.py", title="Class wall", icon=":material/grid_view:"),
    ]
    st.html(f"<style>{(STATIC / 'app.css').read_text()}</style>")
    with st.sidebar:
        st.markdown("### :material/science: CVAE lab\nConditional variational autoencoders, live.")
    gate()  # sign-in, when the server's secrets turn it on; nothing below shows before it
    page = st.navigation(pages)
    st.set_page_config(page_title=f"{page.title} · CVAE lab")  # each page its own browser-tab title
    with profiled(page.url_path or "train"):
        run_picker()
        page.run()


if __name__ == "__main__":
    main()
