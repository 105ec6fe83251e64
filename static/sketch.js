// The drawing canvas of ui/sketch.py, an st.components.v2 component: a brush, an eraser, Clear and Reset.
// White ink on black, as MNIST's digits are. After each stroke the picture goes to Python as a PNG data URL
// (the state value "png"). Mouse, pen and touch alike (pointer events). Nothing is fetched from outside.
//
// data: {resolution, start (PNG data URL or null), token (a new one = start again), brush (canvas px),
//        hidden ([[x0, y0, x1, y1], ...] as shares of the side: grey, not drawn on)}
export default function ({ data, parentElement, setStateValue }) {
  const box = parentElement.querySelector(".sketch");
  const ink = box.querySelector("canvas.ink");
  const veil = box.querySelector("canvas.veil");
  const ctx = ink.getContext("2d");
  const n = data.resolution;
  const hidden = data.hidden || [];
  const events = new AbortController();
  const on = (target, name, handler) => target.addEventListener(name, handler, { signal: events.signal });

  // The area a stroke may paint: the whole square less the hidden rectangles.
  const visible = new Path2D();
  visible.rect(0, 0, n, n);
  hidden.forEach(([x0, y0, x1, y1]) => visible.rect(x0 * n, y0 * n, (x1 - x0) * n, (y1 - y0) * n));

  function send() {
    box.dataset.sent = String(Number(box.dataset.sent || 0) + 1); // how many drawings went out (for tests)
    setStateValue("png", ink.toDataURL("image/png"));
  }

  function paintStart(then) {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, n, n);
    if (!data.start) return then && then();
    const picture = new Image();
    picture.onload = () => {
      ctx.imageSmoothingEnabled = false; // the given pixels stay square, as the model sees them
      ctx.drawImage(picture, 0, 0, n, n);
      if (then) then();
    };
    picture.src = data.start;
  }

  if (box.dataset.token !== data.token) { // first shown, or a new start picture: begin from it
    ink.width = ink.height = veil.width = veil.height = n;
    box.dataset.token = data.token;
    box.dataset.tool = "brush";
    paintStart();
    const v = veil.getContext("2d");
    v.clearRect(0, 0, n, n);
    v.fillStyle = "#808080"; // hidden pixels: the model's 0.5 grey
    hidden.forEach(([x0, y0, x1, y1]) => v.fillRect(x0 * n, y0 * n, (x1 - x0) * n, (y1 - y0) * n));
  }
  box.querySelector('[data-act="reset"]').hidden = !data.start;

  const tools = box.querySelectorAll("[data-tool]");
  const showTool = () => tools.forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.tool === box.dataset.tool)));
  showTool();
  tools.forEach((b) => on(b, "click", () => { box.dataset.tool = b.dataset.tool; showTool(); }));
  on(box.querySelector('[data-act="clear"]'), "click", () => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, n, n); send(); });
  on(box.querySelector('[data-act="reset"]'), "click", () => paintStart(send));

  let last = null;
  const at = (e) => {
    const r = ink.getBoundingClientRect();
    return [((e.clientX - r.left) * n) / r.width, ((e.clientY - r.top) * n) / r.height];
  };
  function line(a, b) {
    const erase = box.dataset.tool === "eraser";
    ctx.save();
    ctx.clip(visible, "evenodd");
    ctx.strokeStyle = erase ? "#000" : "#fff";
    ctx.lineWidth = erase ? data.brush * 1.8 : data.brush;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(a[0], a[1]);
    ctx.lineTo(b[0], b[1]);
    ctx.stroke();
    ctx.restore();
  }
  on(ink, "pointerdown", (e) => {
    if (e.button !== 0) return;
    e.preventDefault();
    ink.setPointerCapture(e.pointerId);
    last = at(e);
    line(last, last); // a click alone leaves a dot
  });
  on(ink, "pointermove", (e) => {
    if (!last) return;
    const steps = e.getCoalescedEvents ? e.getCoalescedEvents() : [];
    for (const p of (steps.length ? steps : [e]).map(at)) {
      line(last, p);
      last = p;
    }
  });
  const end = () => {
    if (!last) return;
    last = null;
    send();
  };
  on(ink, "pointerup", end);
  on(ink, "pointercancel", end);
  on(ink, "lostpointercapture", end);
  return () => events.abort();
}
