"""Compare runs: the per-epoch test curves of several runs overlaid, named by what differs between them."""

import math

import streamlit as st

from cvae.errors import CVAEError
from cvae.ledger import alarm, valid_dims
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

# A completion run (condition quadrants) scores the hidden pixels given the shown ones, not the whole image:
# another quantity in nats, so it gets its own charts rather than a line among whole-image ELBOs.
GROUPS = (  # (completion runs?, the main chart's title, the smaller charts, the table's extra columns)
    (False, "Test −ELBO per epoch (nats per image; lower is better)", (("recon", "Reconstruction"), ("kl", "KL")),
     {"reconstruction": "test_recon", "KL": "test_kl", "refined −ELBO": "test_nelbo_refined",
      "active units": "test_active_units"}),
    (True, "Completion runs: test −ELBO of the hidden pixels given the shown ones (nats per image)",
     (("baseline_nll", "The baseline network (no z) on the same pixels"),), {"baseline NLL": "test_baseline_nll"}),
)  # fmt: skip


def _number(value: object) -> float | int | None:
    """A figure from a run's metrics for the table: a finite number, or None (missing, or a crafted line)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return value if ok else None  # type: ignore[return-value]


present = [group for group in GROUPS if any(run.completion == group[0] for run, _ in runs)]
if len(present) > 1:
    st.caption("Whole-image and completion runs measure different things, so each kind has its own charts.")
nats = st.column_config.NumberColumn(format="%.2f")
for completion, title, smaller, columns in present:
    group = [(run, rows) for run, rows in runs if run.completion == completion]
    key = "completion" if completion else "whole"
    configs = [{k: run.raw_config.get(k) or {} for k in ("data", "model", "train")} for run, _ in group]
    differs = what_differs(configs, most=3) if len(group) > 1 else [""]  # the legend: the main differences
    in_full = what_differs(configs) if len(group) > 1 else [""]  # the table: all of them
    legend = []
    for (run, _), diff in zip(group, differs, strict=True):
        name = display_name(root, run.id)
        legend.append(f"{diff} ({name})" if diff and name != run.id else diff or name)
    series = [(name, rows) for name, (_, rows) in zip(legend, group, strict=True)]
    by_id = plots.run_colors([run.id for run, _ in group])
    colors = [by_id[run.id] for run, _ in group]
    st.plotly_chart(plots.compare_curves(series, "nelbo", title, colors=colors), key=f"compare_nelbo_{key}",
                    config={"displayModeBar": False})  # fmt: skip
    if len(group) > 1:
        st.caption("The legend names what differs between the chosen runs' settings; the rest is the same for all.")
    for column, (metric, name) in zip(st.columns(2), smaller, strict=False):
        column.plotly_chart(plots.compare_curves(series, metric, name, legend=False, colors=colors),
                            key=f"compare_{metric}_{key}", config={"displayModeBar": False})  # fmt: skip
    table = []
    for (run, rows), what in zip(group, in_full, strict=True):
        last = rows[-1]
        table.append({
            "run": display_name(root, run.id), "what differs": what,
            "epochs": _number(last.get("epoch")), "test −ELBO": _number(last.get("test_nelbo")),
            **{label: _number(last.get(field)) for label, field in columns.items()},
            "minutes": sum(r.get("seconds") or 0 for r in rows) / 60,
        })  # fmt: skip
    st.subheader("Final figures" + (" of the completion runs" if completion and len(present) > 1 else ""))
    # No sideways scroll at 1280 px: the differences in the one wide column, the numbers narrow.
    for column in [c for c in columns if all(row[c] is None for row in table)]:  # a column no run has: left out
        for row in table:
            row.pop(column)
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "run": st.column_config.TextColumn(width="small"), "what differs": st.column_config.TextColumn(width="large"),
        "epochs": st.column_config.NumberColumn(width="small"),
        "test −ELBO": nats, **dict.fromkeys(columns, nats),
        "active units": st.column_config.NumberColumn(format="%d", help="latent dimensions whose posterior mean "
                                                      "varies over the test images (cvae.ledger)"),
        "minutes": st.column_config.NumberColumn("training minutes", format="%.1f"),
    })  # fmt: skip
    ledgers = [(name, color, valid_dims(rows[-1].get("test_kl_dims")), rows[-1].get("test_active_units"))
               for name, color, (_, rows) in zip(legend, colors, group, strict=True)]  # fmt: skip
    for name, _, dims, active in ledgers:  # the alarm, where a run's posterior collapsed or leans on one dimension
        if warning := alarm(dims, active):
            st.warning(f"**{name}**: {warning}", icon=":material/warning:")
    if shown := [(name, color, dims) for name, color, dims, _ in ledgers if dims is not None]:
        st.plotly_chart(plots.compare_ledgers([(n, d) for n, _, d in shown], [c for _, c, _ in shown]),
                        key=f"compare_ledger_{key}", config={"displayModeBar": False})  # fmt: skip
