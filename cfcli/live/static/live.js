// cf live page: a WebSocket client of the documented local API (docs/live.md) and a real-time player.
// Frames (binary: 16-byte header + JPEG) are decoded in arrival order and played at the preset's fps; if
// generation is slower than real time the player waits to buffer ahead and says so; if the page falls behind
// it skips frames to stay current (the server keeps the recording complete either way).
// The controls follow the state the server reports (`render`): a button is enabled only when it acts.
"use strict";

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
const withToken = (url) => token ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : url;
const QUEUE_KEY = "cf-live-queue";  // the prepared prompts outlive a reload
const ERROR_SHOWN_MS = 8000;

const live = window.cfLive = {   // state, also read by the browser tests
  role: "viewer", state: "idle", fps: 16, session: 0, framesReceived: 0, framesDrawn: 0, framesSkipped: 0,
  lastFrame: -1, prompts: {}, recordings: [], errors: [], acks: [], buffering: false,
  loras: [], loraChanges: {}, loraSwaps: true,
  connection: "connecting", controlled: false, recording: false, lastStatus: null, queue: loadQueue(), prepared: {},
  maxPrepare: 1,  // prompts a `prepare` message may name: the welcome says
};
const canvas = $("screen"), ctx = canvas.getContext("2d");
let ws = null, queue = [], decoding = Promise.resolve(), clock = null, needBuffer = 0.25, submits = [];
let context = { image: null, clip: null }, problem = null;

function log(text, cls) {
  const li = document.createElement("li");
  li.textContent = text;
  if (cls) li.className = cls;
  $("log").prepend(li);
  while ($("log").children.length > 20) $("log").lastChild.remove();
}

function send(msg) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
}

function connect() {
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  ws = new WebSocket(withToken(url));
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { live.connection = "open"; render(); };
  ws.onmessage = (ev) => (typeof ev.data === "string" ? onMessage(JSON.parse(ev.data)) : onFrame(ev.data));
  ws.onclose = (ev) => {
    Object.assign(live, { connection: "closed", role: "viewer" });
    $("role").textContent = `disconnected (${ev.code})`;
    render();
    setTimeout(connect, 2000);
  };
}

function onFrame(buf) {
  const view = new DataView(buf);
  const session = view.getUint32(4, true), frame = view.getUint32(8, true);
  live.framesReceived++;
  const blob = new Blob([new Uint8Array(buf, 16)], { type: "image/jpeg" });
  decoding = decoding.then(() => createImageBitmap(blob)).then((bitmap) => {
    if (session !== live.session) { bitmap.close(); return; }
    queue.push({ frame, bitmap });
  }).catch((e) => log(`bad frame: ${e}`, "error"));
}

const handlers = {
  welcome(m) {
    live.fps = m.fps;
    live.maxPrepare = m.max_prepare || live.maxPrepare;
    canvas.width = m.width; canvas.height = m.height;
    $("model").textContent = `${m.preset} · ${m.width}×${m.height} @ ${m.fps} fps · ${m.device}, umT5 on ${m.text_device}`;
    if (m.seed !== null && m.seed !== undefined) $("seed").value = m.seed;
    $("record").checked = m.record !== false;
    live.loraSwaps = m.lora_swaps !== false;
    if (!live.loraSwaps) $("lora-state").textContent = m.lora_note || "LoRAs cannot change here";
    live.controlled = m.controlled;
    if (!m.controlled) send({ type: "claim" });  // take control only when nobody has it
    render();
  },
  role(m) {
    live.role = m.role;
    if (m.role === "controller") { live.controlled = false; prepare(live.queue); }
    $("role").textContent = m.role === "controller" ? "you control" : "watching";
    render();
  },
  status(m) {
    live.state = m.state;
    if (m.session && m.session > live.session) live.session = m.session;  // joined while it plays
    if (m.state === "running" && m.recording !== live.recording) $("record").checked = m.recording;
    live.recording = m.recording;
    live.lastStatus = m;
    showStats(m);
    if (m.loras && !lorasInFlight()) showLoras(m.loras);
    render();
  },
  loras(m) {
    live.loraChanges[m.id] = m;
    const where = m.frame !== null ? ` at frame ${m.frame} (${m.seconds}s)` : "";
    const swap = m.swap_s !== null ? `, swapped in ${m.swap_s.toFixed(2)}s` : "";
    const made = m.made_s ? `, made ${m.made_s.toFixed(2)}s after asking` : "";
    $("lora-state").textContent = `LoRA change ${m.id}: ${m.state}${where}${swap}${made}`;
    if (m.state === "refused") {
      log(`LoRAs refused: ${m.message}${m.hint ? " → " + m.hint : ""}`, "error");
      say(`LoRAs refused: ${m.message}`);
      live.loraList = null;  // show what is merged again at the next status
    }
  },
  started(m) {
    live.session = m.session; live.lastFrame = -1; live.prompts = {};
    queue.forEach((f) => f.bitmap.close()); queue = []; clock = null; needBuffer = 0.25;
    $("timeline").innerHTML = "";
    log(`started session ${m.session}, seed ${m.seed}`);
    addPrompt({ id: `open-${m.session}`, prompt: m.prompt, block: m.block, frame: 0, seconds: 0, state: "opening" });
  },
  ack(m) {  // start / restart / stop / record: received at once; applied as `started`, `ended` or a record ack
    live.acks.push(m);
    if (m.for === "prepare") {  // a queued prompt encoded ahead: firing it runs no text encoder
      if (m.state === "applied") { live.prepared[m.prompt] = m.cached ? "ready" : "encoded"; renderQueue(); }
      return;
    }
    if (m.state === "applied") log(`recording ${m.on ? "kept" : "dropped"} (at frame ${m.frame})`);
    else log(`${m.for} received`);
  },
  prompt(m) {
    if (m.state === "submitted" && submits.length) live.prompts[m.id] = { submittedAt: submits.shift() };
    addPrompt(m);
  },
  ended(m) { log(`session ${m.session} ended (${m.reason}) after ${m.frames} frames, block ${m.block}`); },
  recording(m) {
    live.recordings.push(m);
    showRecording(m);
  },
  error(m) {
    live.errors.push(m);
    log(`error: ${m.message}${m.hint ? " → " + m.hint : ""}`, "error");
    say(m.hint ? `${m.message} → ${m.hint}` : m.message);
  },
};

function onMessage(m) {
  (handlers[m.type] || ((x) => log(JSON.stringify(x))))(m);
}

// --- what the page shows: the status line and the controls, from the state the server reports --------------------

function render() {
  renderStatus();
  renderControls();
}

function renderStatus() {
  $("status-text").textContent = statusText();
  $("status-error").textContent = problem && performance.now() < problem.until ? ` — ${problem.text}` : "";
}

function statusText() {
  if (live.connection === "connecting") return "Connecting…";
  if (live.connection === "closed") return "Disconnected — reconnecting…";
  const state = { idle: live.session ? "Stopped" : "Stopped — type a prompt and press Enter to start",
                  loading: "Starting…", running: playingText(live.lastStatus), stopping: "Stopping…" }[live.state];
  if (live.role === "controller") return state || live.state;
  const who = live.controlled ? "another page is in control" : "press Take control to steer";
  return `Watching (${who}) — ${state || live.state}`;
}

function playingText(s) {
  if (!s || s.state !== "running") return "Playing";
  const parts = [`${(s.frames / s.fps).toFixed(1)} s made`];
  if (s.realtime) parts.push(`${s.realtime.toFixed(1)}× real time`);
  if (live.buffering) parts.push("buffering");
  if (s.recording) parts.push("recording");
  return `Playing — ${parts.join(", ")}`;
}

// An error or a refusal in plain words on the status line, for a few seconds.
function say(text) {
  problem = { text, until: performance.now() + ERROR_SHOWN_MS };
  renderStatus();
  setTimeout(renderStatus, ERROR_SHOWN_MS + 50);
}

function renderControls() {
  const control = live.role === "controller", state = live.state;
  const playing = state === "running" || state === "loading";
  $("claim").hidden = control || live.connection !== "open";
  $("prompt").disabled = !control;
  $("start").disabled = !control || state !== "idle" || !$("prompt").value.trim();
  $("stop").disabled = !control || !playing;
  $("restart").disabled = !control || !live.session || state === "stopping";
  $("record").disabled = !control || state === "loading" || state === "stopping";
  $("fire").disabled = !control || !live.queue.length || !(state === "running" || state === "idle");
  const loras = control && live.loraSwaps;
  $("lora-form").querySelectorAll("input, button").forEach((el) => { el.disabled = !loras; });
  $("loras").querySelectorAll("input, button").forEach((el) => { el.disabled = !loras; });
}

function showStats(m) {
  const parts = [m.state, `${m.frames}${m.max_frames ? "/" + m.max_frames : ""} frames`];
  if (m.gen_fps) parts.push(`gen ${m.gen_fps} fps vs ${m.fps} real time (${m.realtime}×)`);
  if (m.block_s) parts.push(`block ${(m.block_s * 1000).toFixed(0)} ms`);
  if (m.latency_s) parts.push(`latency ${m.latency_s.toFixed(2)}s made`);
  const onScreen = Object.values(live.prompts).map((p) => p.onScreen).filter(Boolean);
  if (onScreen.length) parts.push(`${onScreen[onScreen.length - 1].toFixed(2)}s on screen`);
  parts.push(`buffer ${bufferedSeconds().toFixed(1)}s`);
  if (m.gpu_mem_gib !== null) parts.push(`GPU ${m.gpu_mem_gib} GiB`);
  if (m.recording) parts.push("● rec");
  $("stats").textContent = parts.join(" · ");
}

// --- the prompt timeline: each prompt's receipts (received, then landed at block B / frame F, then made) ------------

function addPrompt(m) {
  const entry = live.prompts[m.id] = Object.assign(live.prompts[m.id] || {}, m);
  let li = document.querySelector(`#timeline li[data-id="${m.id}"]`);
  if (!li) {
    li = document.createElement("li");
    li.dataset.id = m.id;
    li.append(document.createElement("q"), document.createElement("span"));
    li.lastChild.className = "receipt";
    $("timeline").append(li);
  }
  li.dataset.state = entry.state;
  li.firstChild.textContent = entry.prompt;
  li.lastChild.textContent = receipt(entry);
}

function receipt(p) {
  const landed = `block ${p.block} / frame ${p.frame} (${p.seconds}s)${p.step ? `, from step ${p.step}` : ""}`;
  if (p.state === "opening") return ` opening prompt · ${landed}`;
  const t = p.transition, blend = t ? ` · blends over ${t.blocks} block${t.blocks > 1 ? "s" : ""} (${t.kind})` : "";
  const steps = {
    submitted: "waiting for the text encoder",
    queued: "encoded, waits for the next step or block",
    landed: `landed at ${landed}`,
    shown: `landed at ${landed} · made ${p.made_s ? p.made_s.toFixed(2) : "?"}s after sending`,
    superseded: "replaced by a later prompt before it landed",
    dropped: "dropped: the video ended before it landed",
  };
  const shown = p.onScreen ? ` · on screen ${p.onScreen.toFixed(2)}s after sending` : "";
  return ` received ✓${blend} · ${steps[p.state] || p.state}${shown}`;
}

// --- the queue of prepared prompts ------------------------------------------------------------------------------

function loadQueue() {
  try {
    const saved = JSON.parse(localStorage.getItem(QUEUE_KEY) || "[]");
    return Array.isArray(saved) ? saved.filter((p) => typeof p === "string") : [];
  } catch (e) {
    return [];  // storage off (a private window, a file:// page): the queue lives as long as the page
  }
}

function queueChanged() {
  try { localStorage.setItem(QUEUE_KEY, JSON.stringify(live.queue)); } catch (e) { /* kept in the page only */ }
  renderQueue();
  renderControls();
}

function renderQueue() {
  const ol = $("queue");
  ol.innerHTML = "";
  if (!live.queue.length) { ol.innerHTML = "<li class=\"small\">empty: type prompts above, Enter adds each</li>"; return; }
  live.queue.forEach((text, i) => {
    const li = document.createElement("li"), span = document.createElement("span");
    span.className = "name"; span.textContent = text;
    const ready = live.prepared[text];
    if (ready) {
      span.dataset.prepared = ready;
      span.title = ready === "ready" ? "encoded ahead: firing it runs no text encoder"
        : "encoded, but the prompt cache is not writable: firing it encodes again";
    }
    const up = smallButton("↑", "Move up", () => live.queue.splice(i - 1, 2, live.queue[i], live.queue[i - 1]));
    up.disabled = i === 0;
    li.append(span, up, smallButton("✕", "Remove", () => live.queue.splice(i, 1)));
    ol.append(li);
  });
}

function smallButton(text, title, edit) {
  const b = document.createElement("button");
  b.type = "button"; b.textContent = text; b.title = title;
  b.onclick = () => { edit(); queueChanged(); };
  return b;
}

// Queued prompts are encoded ahead on the server (into its prompt cache), one at a time behind any switch; a message
// names at most `max_prepare` (the welcome's).
function prepare(prompts) {
  const fresh = [...new Set(prompts)].filter((p) => !live.prepared[p]);
  if (live.role !== "controller") return;
  const most = live.maxPrepare;
  for (let i = 0; i < fresh.length; i += most) send({ type: "prepare", prompts: fresh.slice(i, i + most) });
}

function fireNext() {
  if ($("fire").disabled) return;
  const prompt = live.queue.shift();
  queueChanged();
  firePrompt(prompt);
}

// A prompt fired while playing switches at the next block, with the blend set now; while stopped it starts a video.
function firePrompt(prompt) {
  if (live.state === "running") {
    submits.push(performance.now());
    send({ type: "prompt", prompt, transition: transitionValue() });
  } else if (live.state === "idle") {
    start(prompt);
  } else {
    say(`wait: the video is ${live.state === "loading" ? "starting" : "stopping"}`);
  }
}

// --- recordings, playable in the page ---------------------------------------------------------------------------

function showRecording(m) {
  const li = document.createElement("li"), a = document.createElement("a"), play = document.createElement("button");
  a.href = withToken(m.url); a.download = m.name; a.textContent = m.name;
  play.type = "button"; play.className = "play"; play.textContent = "Play"; play.onclick = () => playRecording(m);
  li.append(play, " ", a, ` · ${m.frames} frames, ${m.seconds}s`);
  $("recordings").prepend(li);
}

function playRecording(m) {
  const player = $("player");
  player.hidden = false;
  player.onerror = () => say(`this browser cannot play ${m.name} (its codec); download it instead`);
  player.src = withToken(m.url);
  $("player-title").textContent = m.name;
  player.play().catch(() => {});  // refused autoplay or an unplayable codec: `onerror` or the controls say so
}

// --- the LoRA panel -----------------------------------------------------------------------------------------------
// The LoRAs merged now (from `status`), each given one with a scale and a remove button; an edit sends the whole list
// (`loras` message) and the panel keeps showing it until the change lands or is refused.

function lorasInFlight() {
  return Object.values(live.loraChanges).some((c) => c.state === "submitted" || c.state === "queued");
}

function showLoras(merged) {
  if (JSON.stringify(merged) === JSON.stringify(live.loras) && live.loraList) return;
  live.loras = merged;
  live.loraList = merged.filter((l) => !l.preset).map((l) => ({ file: l.file, scale: l.scale }));
  const ul = $("loras");
  ul.innerHTML = "";
  if (!merged.length) { ul.innerHTML = "<li class=\"small\">none merged</li>"; return; }
  let given = 0;  // index in `loraList`: the given LoRAs, in order
  merged.forEach((l) => {
    const li = document.createElement("li"), name = document.createElement("span");
    name.className = "name"; name.textContent = l.name; name.title = l.file;
    li.append(name);
    if (l.preset) { li.append(`${l.scale} (the preset's)`); ul.append(li); return; }
    const i = given++;
    const range = document.createElement("input"), number = document.createElement("input");
    range.type = "range"; range.min = -2; range.max = 2; range.step = 0.05; range.value = l.scale;
    number.type = "number"; number.step = 0.05; number.value = l.scale;
    const set = (v) => {  // on "change": once per edit, and not again for the value already asked for
      if (Number.isFinite(v) && v !== live.loraList[i].scale) { live.loraList[i].scale = v; sendLoras(); }
    };
    range.oninput = () => { number.value = range.value; };
    range.onchange = () => set(Number(range.value));
    number.onchange = () => set(Number(number.value));
    const remove = document.createElement("button");
    remove.type = "button"; remove.textContent = "Remove";
    remove.onclick = () => { live.loraList.splice(i, 1); sendLoras(); };
    li.append(range, number, remove);
    ul.append(li);
  });
  renderControls();
}

function sendLoras() {
  send({ type: "loras", loras: live.loraList });
}

// --- the player ---------------------------------------------------------------------------------------------------

function bufferedSeconds() { return queue.length / live.fps; }

function draw(item, now) {
  ctx.drawImage(item.bitmap, 0, 0, canvas.width, canvas.height);
  item.bitmap.close();
  live.framesDrawn++;
  live.lastFrame = item.frame;
  for (const p of Object.values(live.prompts)) {
    if (p.submittedAt && !p.onScreen && p.frame !== null && p.frame !== undefined && p.frame <= item.frame) {
      p.onScreen = (now - p.submittedAt) / 1000;
      addPrompt(p);
    }
  }
}

function tick(now) {
  if (clock === null && queue.length && (bufferedSeconds() >= needBuffer || live.state !== "running")) {
    clock = { t0: now, played: 0 };
    setNotice(null);
  }
  if (clock !== null) {
    const due = Math.floor(((now - clock.t0) / 1000) * live.fps) + 1;
    let item = null;
    while (clock.played < due && queue.length) {
      if (item) { item.bitmap.close(); live.framesSkipped++; }
      item = queue.shift();
      clock.played++;
    }
    if (item) draw(item, now);
    if (queue.length > live.fps * 3) {  // the page fell far behind: jump to the newest second
      const skip = queue.splice(0, queue.length - live.fps);
      skip.forEach((f) => f.bitmap.close());
      live.framesSkipped += skip.length;
    }
    if (clock.played < due && !queue.length && live.state === "running") {
      clock = null;  // underrun: generation is slower than real time
      needBuffer = Math.min(needBuffer + 0.5, 5);
      setNotice(`buffering ${needBuffer.toFixed(1)}s ahead: generation is slower than real time`);
    }
  }
  requestAnimationFrame(tick);
}

function setNotice(text) {
  live.buffering = Boolean(text);
  $("notice").hidden = !text;
  $("notice").textContent = text || "";
}

// --- what the controls send -------------------------------------------------------------------------------------

async function upload(kind, file) {
  const res = await fetch(withToken(`/api/uploads/${kind}`), { method: "POST", body: file });
  const body = await res.json();
  if (!res.ok) { handlers.error(body); return null; }
  return body.id;
}

function seedValue() {
  const v = $("seed").value.trim();
  return v === "" ? null : Number(v);
}

function transitionValue() {  // 0 blocks: the instant cut
  const blocks = Math.max(0, Math.min(64, Math.floor(Number($("blend-blocks").value) || 0)));
  return { blocks, kind: $("blend-kind").value };
}

function start(prompt) {
  if (!prompt) { say("type a prompt first"); return; }
  send({ type: "start", prompt, seed: seedValue(), image: context.image, clip: context.clip,
         record: $("record").checked });
}

function restart() {
  const seed = seedValue();
  send($("new-seed").checked || seed === null ? { type: "restart", new_seed: $("new-seed").checked }
                                               : { type: "restart", seed });
}

async function useContext(kind, input) {
  if (!input.files.length) return;
  const id = await upload(kind, input.files[0]);
  context = { image: kind === "image" ? id : null, clip: kind === "clip" ? id : null };
  $("context").textContent = id ? `next start: ${kind === "image" ? "from picture" : "continue clip"} ${id}` : "";
}

// --- keyboard shortcuts: never while typing in a text field (Esc leaves it) ---------------------------------------

const KEYS = { n: fireNext, r: () => pressIfEnabled("record"), s: () => pressIfEnabled("stop"),
               "/": () => $("prompt").focus() };

function pressIfEnabled(id) {
  if (!$(id).disabled) $(id).click();
}

function typing(el) {
  const tag = el.tagName;
  return el.isContentEditable || tag === "TEXTAREA" || tag === "SELECT" ||
    (tag === "INPUT" && !["checkbox", "radio", "button", "submit", "range", "file"].includes(el.type));
}

function onKey(ev) {
  if (typing(ev.target)) {
    if (ev.key === "Escape") ev.target.blur();
    return;
  }
  const act = KEYS[ev.key.toLowerCase()];
  if (!act || ev.ctrlKey || ev.metaKey || ev.altKey || ev.repeat) return;
  ev.preventDefault();
  act();
}

// --- wiring -------------------------------------------------------------------------------------------------------

$("prompt-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const prompt = $("prompt").value.trim();
  if (prompt) firePrompt(prompt);
});
$("queue-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const prompt = $("queue-input").value.trim();
  if (!prompt) return;
  live.queue.push(prompt);
  $("queue-input").value = "";
  queueChanged();
  prepare([prompt]);
});
$("prompt").addEventListener("input", renderControls);  // Start needs a prompt
$("start").onclick = () => start($("prompt").value.trim());
$("stop").onclick = () => send({ type: "stop" });
$("restart").onclick = restart;
$("fire").onclick = fireNext;
$("record").onchange = () => { if (live.state === "running") send({ type: "record", on: $("record").checked }); };
$("claim").onclick = () => send({ type: "claim" });
$("image").onchange = (ev) => useContext("image", ev.target);
$("clip").onchange = (ev) => useContext("clip", ev.target);
$("lora-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const file = $("lora-file").value.trim(), scale = Number($("lora-scale").value || 1);
  if (!file) return;
  live.loraList = (live.loraList || []).concat([{ file, scale }]);
  sendLoras();
  $("lora-file").value = "";
});
$("clear-context").onclick = () => { context = { image: null, clip: null }; $("context").textContent = ""; };
document.addEventListener("keydown", onKey);

renderQueue();
render();
connect();
requestAnimationFrame(tick);
