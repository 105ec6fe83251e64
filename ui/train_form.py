"""The Train page's widgets: the new-run form, the empty state, run controls and the runs table."""

from __future__ import annotations

import streamlit as st

from cvae.errors import CVAEError
from ui import launcher
from ui.auth import current_user, mode
from ui.launcher import QUICK_DEMO, TrainOptions
from ui.runs import metrics, open_run, run_ids, runs_root
from ui.sidebar import select

DATASETS = {"MNIST": "MNIST (digits, 28×28, grey)", "CIFAR10": "CIFAR-10 (photos, 32×32, colour)",
            "folder": "My image folder (one sub-folder per class)"}  # fmt: skip


def _start(opts: TrainOptions) -> None:
    try:
        run = launcher.start(runs_root(), opts, owner=current_user())
    except CVAEError as err:
        st.error(f"Could not start the run: {err}")
        return
    except OSError as err:  # disk full, read-only runs folder: one sentence, no traceback
        st.error(f"Could not start the run: {launcher.explain(err)}")
        return
    select(run.id)
    st.rerun()


def empty_state() -> None:
    with st.container(border=True):
        st.markdown("## :material/waving_hand: No runs yet\nA **run** trains one conditional VAE and keeps everything it learns in a "
                    "folder: curves, reconstructions, the latent space and the model. Start with the quick demo: "
                    "a small network on MNIST digits with a 2-D latent space. Pictures appear within about a minute.")  # fmt: skip
        if st.button("Start the quick demo", icon=":material/rocket_launch:", type="primary", key="quick_demo"):
            _start(QUICK_DEMO)


def new_run_form() -> None:
    """Every option of the command line; checked before anything starts."""
    d = TrainOptions()
    c1, c2, c3 = st.columns(3)
    kind = c1.selectbox("Dataset", list(DATASETS), format_func=DATASETS.get, key="f_dataset")
    folder = c1.text_input("Image folder on the server", key="f_folder", disabled=kind != "folder",
                           placeholder="/path/to/images", help="ROOT/<class>/*.png, or ROOT/train/<class> and ROOT/test/<class>")  # fmt: skip
    image_size = c1.number_input(
        "Resize folder images to (px, 0 = keep)", 0, 512, 0, key="f_size", disabled=kind != "folder"
    )
    decoder = c2.radio("Decoder p(x | z, y)", ["Bernoulli", "Gaussian"], horizontal=True, key="f_decoder",
                       help="Bernoulli: black-and-white pixels (MNIST only). Gaussian: grey or colour levels.")  # fmt: skip
    gaussian = decoder == "Gaussian"
    sigma = c2.checkbox("Learn σ (a per-pixel standard deviation)", key="f_sigma", disabled=not gaussian)
    fixed = c2.number_input(
        "Fixed σ", 1e-3, 100.0, d.fixed_sigma, key="f_fixed", disabled=not gaussian or sigma, format="%.3f"
    )
    binarize = c2.radio("Binarize", ["static", "dynamic"], horizontal=True, key="f_bin", disabled=gaussian,
                        help="static: pixel ≥ 0.5 (the reference); dynamic: resampled every batch")  # fmt: skip
    arch = c3.radio("Architecture", ["mlp", "conv"], horizontal=True, key="f_arch",
                    help="mlp: fast, for class demos. conv: the reference's convolutional layers (slow on a CPU).")  # fmt: skip
    z = c3.number_input(
        "Latent size z", 1, 1024, d.latent_dim, key="f_z", help="2 gives a latent space you can see directly"
    )
    epochs = c3.number_input("Epochs", 1, 100_000, 5, key="f_epochs")
    lr = c3.number_input("Learning rate", 1e-6, 1.0, 1e-3, key="f_lr", format="%.0e", step=1e-4)
    with st.expander("More options"):
        m1, m2, m3, m4 = st.columns(4)
        batch = m1.number_input("Batch size", 1, 65_536, 128, key="f_batch")
        seed = m1.number_input("Seed", 0, 2**31 - 1, 0, key="f_seed")
        train_subset = m2.number_input("Train images (0 = all)", 0, 10**7, 0, key="f_train_subset")
        test_subset = m2.number_input("Test images (0 = all)", 0, 10**7, 0, key="f_test_subset")
        every = m3.number_input("Log the loss every N batches", 1, 10_000, 1, key="f_every")
        ckpt = m3.number_input("Keep a checkpoint every N epochs", 1, 100_000, 20, key="f_ckpt")
        latent_subset = m4.number_input("Test images in the latent plot", 0, 100_000, 2000, key="f_latent")
        threads = m4.number_input("CPU threads (0 = all)", 0, 256, 0, key="f_threads")
        device = m1.selectbox("Device", ["auto", "cpu", "cuda", "mps"], key="f_device")
        precision = m2.selectbox("Precision", ["auto", "fp32", "bf16"], key="f_precision")
        data_dir = m3.text_input("Data folder (empty = the project's data/)", key="f_data_dir")
        schedule = m4.selectbox(
            "Learning-rate schedule", ["exponential", "cosine"], key="f_schedule",
            format_func={"exponential": "constant (cut on plateaus)", "cosine": "cosine, after a warm-up"}.get,
            help="cosine: the rate climbs linearly over the warm-up epochs, then falls along half a cosine to 0 "
                 "at the last epoch. The quick demo uses it.",
        )  # fmt: skip
        warmup = m4.number_input(
            "Warm-up epochs", 0.0, 1000.0, 1.0, step=0.5, key="f_warmup", disabled=schedule != "cosine"
        )
        refine = m2.number_input(
            "Refine q at the end: steps", 0, 10_000, 0, key="f_refine",
            help="After the last epoch, also measure the test −ELBO with q(z | x, y) refined for each test image "
                 "by this many gradient steps, the model fixed: still a bound on log p(x | y), only tighter. "
                 "The difference is what the encoder misses (the amortization gap). 0 = off; the quick demo uses 10.",
        )  # fmt: skip
    opts = TrainOptions(
        dataset=folder if kind == "folder" else kind, decoder_type=decoder, model_sigma=sigma, latent_dim=int(z),
        epochs=int(epochs), batch_size=int(batch), learning_rate=float(lr), arch=arch, seed=int(seed),
        print_every=int(every), binarize=binarize, fixed_sigma=float(fixed), image_size=int(image_size),
        train_subset=int(train_subset), test_subset=int(test_subset), checkpoint_every=int(ckpt),
        latent_subset=int(latent_subset), precision=precision, device=device, threads=int(threads), data_dir=data_dir,
        lr_schedule=schedule, warmup_epochs=float(warmup) if schedule == "cosine" else 0.0, refine_steps=int(refine),
    )  # fmt: skip
    if st.button("Start training", icon=":material/play_arrow:", type="primary", key="start"):
        problems = launcher.validate(opts)
        for problem in problems:
            st.error(problem)
        if not problems:
            _start(opts)


def runs_table() -> None:
    root = runs_root()
    rows = []
    for run_id in run_ids(root):
        try:
            run = open_run(root, run_id)
        except CVAEError:
            continue
        last = (metrics(run.dir) or [{}])[-1]
        rows.append({"state": run.state_text, "run": run.id, "what": run.label,
                     "test −ELBO (nats)": last.get("test_nelbo")} | ({"owner": run.owner or "–"} if mode() else {}))  # fmt: skip
    if rows:
        st.dataframe(rows, hide_index=True, width="stretch",
                     column_config={"test −ELBO (nats)": st.column_config.NumberColumn(format="%.2f")})  # fmt: skip
