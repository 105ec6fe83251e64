"""Compare runs: the per-epoch test curves of several runs overlaid, named by what differs between them."""

import streamlit as st

from cvae.errors import CVAEError
from cvae.names import what_differs
from ui import plots
from ui.runs import metrics, open_run, run_ids, runs_root
from ui.sidebar import display_name

st.title(":material/stacked_line_chart: Compare runs")
root = runs_root()
ids = run_ids(root)
if len(ids) < 1:
    st.info("No runs yet. Start one on the **Train** page; two or more can be compared here.")
    st.page_link("app_pages/train.py", label="Go to Train", icon=":material/model_training:")
    st.stop()


def _to_url() -> None:
    """The choice is in the address (?runs=a,b,c), so a link or a reload shows the same comparison."""
    chosen = st.session_state.get("compare_runs") or []
    if chosen:
        st.query_params["runs"] = ",".join(chosen)
    else:
        st.query_params.pop("runs", None)


if "compare_runs" not in st.session_state:
    wanted = [i for i in st.query_params.get("runs", "").split(",") if i in ids]
    st.session_state["compare_runs"] = wanted or ids[:3]
if st.session_state.get("compare_runs"):
    _to_url()
picked = st.multiselect("Runs", ids, key="compare_runs", on_change=_to_url, format_func=lambda i: display_name(root, i),
                        placeholder="pick runs to compare", max_selections=10)  # fmt: skip

runs = []
for run_id in picked:
    try:
        run = open_run(root, run_id)
    except CVAEError as err:
        st.warning(f"{run_id}: {err}")
        continue
    rows = metrics(run.dir)
    if run.raw_config is None or not rows:
        st.caption(f"{display_name(root, run_id)}: no finished epoch yet, nothing to draw.")
        continue
    runs.append((run, rows))
if not runs:
    st.info("Pick runs with at least one finished epoch.")
    st.stop()

configs = [{k: run.raw_config.get(k) or {} for k in ("data", "model", "train")} for run, _ in runs]
differs = what_differs(configs) if len(runs) > 1 else [""]
legend = []
for (run, _), diff in zip(runs, differs, strict=True):
    name = display_name(root, run.id)
    legend.append(f"{diff} ({name})" if diff and name != run.id else diff or name)
series = [(name, rows) for name, (_, rows) in zip(legend, runs, strict=True)]
st.plotly_chart(plots.compare_curves(series, "nelbo", "Test −ELBO per epoch (nats per image; lower is better)"),
                key="compare_nelbo", config={"displayModeBar": False})  # fmt: skip
st.caption("The legend names what differs between the chosen runs' settings; the rest is the same for all.")
left, right = st.columns(2)
left.plotly_chart(plots.compare_curves(series, "recon", "Reconstruction", legend=False), key="compare_recon",
                  config={"displayModeBar": False})  # fmt: skip
right.plotly_chart(
    plots.compare_curves(series, "kl", "KL", legend=False), key="compare_kl", config={"displayModeBar": False}
)

table = []
for (run, rows), what in zip(runs, legend, strict=True):
    last = rows[-1]
    table.append({
        "run": display_name(root, run.id), "what differs": what, "state": run.state_text, "epochs": last.get("epoch"),
        "test −ELBO": last.get("test_nelbo"), "reconstruction": last.get("test_recon"), "KL": last.get("test_kl"),
        "refined −ELBO": last.get("test_nelbo_refined"),
        "minutes": sum(r.get("seconds") or 0 for r in rows) / 60,
    })  # fmt: skip
st.subheader("Final figures")
nats = st.column_config.NumberColumn(format="%.2f")
st.dataframe(table, hide_index=True, width="stretch", column_config={
    "test −ELBO": nats, "reconstruction": nats, "KL": nats, "refined −ELBO": nats,
    "minutes": st.column_config.NumberColumn("training minutes", format="%.1f"),
})  # fmt: skip
