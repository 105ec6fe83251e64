"""Reconstructions: the fixed test batch beside what the model makes of it, epoch by epoch."""

import streamlit as st

from cvae.figures import Export
from ui import slides
from ui.models import png_file
from ui.runs import open_run, run_ids, runs_root
from ui.sidebar import current_run, require_config

st.title(":material/compare: Reconstructions")
st.caption("Each epoch the model encodes the same 64 test images and decodes them again. "
           "**Mean**: the decoder's average image for the posterior mean code. **Sampled**: a code drawn "
           "from q(z | x, y), then pixels drawn from p(x | z, y).")  # fmt: skip
run = current_run()
if run is None or not require_config(run):
    st.stop()
epochs = run.dir.epochs_with("recon_mean.png")
if not epochs:
    st.info("No reconstructions yet: they appear when the first epoch ends." if run.active else
            "This run has no reconstructions (it ended before its first epoch finished).")  # fmt: skip
    st.stop()

c1, c2 = st.columns([1, 2])
kind = c1.segmented_control("Decoder output", ["mean", "sample"], default="mean", key="recon_kind",
                            format_func=lambda k: {"mean": "Mean", "sample": "Sampled"}[k]) or "mean"  # fmt: skip
epoch = c2.select_slider("Epoch", epochs, value=epochs[-1], key="recon_epoch")
left, right, side = st.columns([2, 2, 1])  # at 1280x720 the pair and its captions fit the first screen
truth = png_file(run.dir.artifacts / "truth.png", 3)
recon = png_file(run.dir.artifact(epoch, f"recon_{kind}.png"), 3)
if truth is not None:
    left.image(truth, caption="Test images", width="stretch", output_format="PNG")
if recon is None:
    right.warning(f"The {kind} reconstruction of epoch {epoch} cannot be read (still being written?).")
else:
    right.image(recon, caption=f"Reconstructions after epoch {epoch} ({kind})", width="stretch", output_format="PNG")
with side:
    slides.download(run, [(f"Epoch {epoch}, {kind}", Export("recon", epoch, kind=kind))], "recon_slides")

st.subheader("Over the epochs")
wanted = [e for e in (1, 2, 5, 10, 20, 30, 40, 50, 75, 100) if e in epochs] or epochs[:: max(1, len(epochs) // 6)]
picked = st.multiselect("Epochs to compare", epochs, default=sorted(set(wanted + [epochs[-1]]))[:8], key="recon_epochs")
for start in range(0, len(picked), 4):
    cols = st.columns(4)
    for col, e in zip(cols, sorted(picked)[start : start + 4], strict=False):
        image = png_file(run.dir.artifact(e, f"recon_{kind}.png"), 2)
        if image is not None:
            col.image(image, caption=f"epoch {e}", width="stretch", output_format="PNG")

st.subheader("Two runs side by side")
others = [i for i in run_ids(runs_root()) if i != run.id]
other_id = st.selectbox("Compare with", others, index=None, key="recon_other", placeholder="pick another run")
if other_id:
    other = open_run(runs_root(), other_id)
    other_epochs = other.dir.epochs_with(f"recon_{kind}.png")
    a, b = st.columns(2)
    a.image(recon, caption=f"{run.id} · epoch {epoch}", width="stretch", output_format="PNG") if recon else a.info("–")
    if not other_epochs:
        b.info(f"{other_id} has no reconstructions yet.")
    else:
        e = max([x for x in other_epochs if x <= epoch] or other_epochs[:1])
        image = png_file(other.dir.artifact(e, f"recon_{kind}.png"), 3)
        if image:
            b.image(image, caption=f"{other_id} · epoch {e}", width="stretch", output_format="PNG")
        else:
            b.warning("unreadable")
        b.caption(other.label)
