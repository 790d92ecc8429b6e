// cf live page: a WebSocket client of the documented local API (docs/live.md) and a real-time player.
// Frames (binary: 16-byte header + JPEG) are decoded in arrival order and played at the preset's fps; if
// generation is slower than real time the player waits to buffer ahead and says so; if the page falls behind
// it skips frames to stay current (the server keeps the recording complete either way).
"use strict";

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
const withToken = (url) => token ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : url;

const live = window.cfLive = {   // state, also read by the browser test
  role: "viewer", state: "idle", fps: 16, session: 0, framesReceived: 0, framesDrawn: 0, framesSkipped: 0,
  lastFrame: -1, prompts: {}, recordings: [], errors: [], buffering: false,
  loras: [], loraChanges: {}, loraSwaps: true,
};
const canvas = $("screen"), ctx = canvas.getContext("2d");
let ws = null, queue = [], decoding = Promise.resolve(), clock = null, needBuffer = 0.25, submits = [];
let context = { image: null, clip: null };

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
  ws.onopen = () => send({ type: "claim" });
  ws.onmessage = (ev) => (typeof ev.data === "string" ? onMessage(JSON.parse(ev.data)) : onFrame(ev.data));
  ws.onclose = (ev) => {
    $("role").textContent = `disconnected (${ev.code})`;
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
    canvas.width = m.width; canvas.height = m.height;
    $("model").textContent = `${m.preset} · ${m.width}×${m.height} @ ${m.fps} fps · ${m.device}, umT5 on ${m.text_device}`;
    if (m.seed !== null && m.seed !== undefined) $("seed").value = m.seed;
    $("record").checked = m.record !== false;
    live.loraSwaps = m.lora_swaps !== false;
    $("lora-form").querySelectorAll("input, button").forEach((el) => { el.disabled = !live.loraSwaps; });
    if (!live.loraSwaps) $("lora-state").textContent = m.lora_note || "LoRAs cannot change here";
  },
  role(m) {
    live.role = m.role;
    $("role").textContent = m.role === "controller" ? "you control" : "watching";
  },
  status(m) {
    live.state = m.state;
    if (m.session && m.session > live.session) live.session = m.session;  // joined while it plays
    showStatus(m);
    if (m.loras && !lorasInFlight()) showLoras(m.loras);
  },
  loras(m) {
    live.loraChanges[m.id] = m;
    const where = m.frame !== null ? ` at frame ${m.frame} (${m.seconds}s)` : "";
    const swap = m.swap_s !== null ? `, swapped in ${m.swap_s.toFixed(2)}s` : "";
    const made = m.made_s ? `, made ${m.made_s.toFixed(2)}s after asking` : "";
    $("lora-state").textContent = `LoRA change ${m.id}: ${m.state}${where}${swap}${made}`;
    if (m.state === "refused") {
      log(`LoRAs refused: ${m.message}${m.hint ? " → " + m.hint : ""}`, "error");
      live.loraList = null;  // show what is merged again at the next status
    }
  },
  started(m) {
    live.session = m.session; live.lastFrame = -1; live.prompts = {};
    queue.forEach((f) => f.bitmap.close()); queue = []; clock = null; needBuffer = 0.25;
    $("timeline").innerHTML = "";
    log(`started session ${m.session}, seed ${m.seed}`);
    addPrompt({ id: `open-${m.session}`, prompt: m.prompt, frame: 0, seconds: 0, state: "landed" });
  },
  prompt(m) {
    if (m.state === "submitted" && submits.length) live.prompts[m.id] = { submittedAt: submits.shift() };
    addPrompt(m);
  },
  ended(m) { log(`session ${m.session} ended (${m.reason}) after ${m.frames} frames`); },
  recording(m) {
    live.recordings.push(m);
    const li = document.createElement("li"), a = document.createElement("a");
    a.href = withToken(m.url); a.download = m.name; a.textContent = `${m.name}`;
    li.append(a, ` · ${m.frames} frames, ${m.seconds}s`);
    $("recordings").prepend(li);
  },
  error(m) {
    live.errors.push(m);
    log(`error: ${m.message}${m.hint ? " → " + m.hint : ""}`, "error");
  },
};

function onMessage(m) {
  (handlers[m.type] || ((x) => log(JSON.stringify(x))))(m);
}

function addPrompt(m) {
  const entry = live.prompts[m.id] = Object.assign(live.prompts[m.id] || {}, m);
  let li = document.querySelector(`#timeline li[data-id="${m.id}"]`);
  if (!li) {
    li = document.createElement("li");
    li.dataset.id = m.id;
    $("timeline").append(li);
  }
  const where = entry.frame !== null && entry.frame !== undefined ? `frame ${entry.frame} (${entry.seconds}s)` : "next block";
  const made = entry.made_s ? ` · made ${entry.made_s.toFixed(2)}s after submit` : "";
  const shown = entry.onScreen ? ` · on screen ${entry.onScreen.toFixed(2)}s` : "";
  li.textContent = `${where} · ${entry.state}${made}${shown}: ${entry.prompt}`;
}

// The LoRA panel: the LoRAs merged now (from `status`), each given one with a scale and a remove button; an edit
// sends the whole list (`loras` message) and the panel keeps showing it until the change lands or is refused.
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
    [range, number, remove].forEach((el) => { el.disabled = !live.loraSwaps; });
    li.append(range, number, remove);
    ul.append(li);
  });
}

function sendLoras() {
  send({ type: "loras", loras: live.loraList });
}

function showStatus(m) {
  const parts = [m.state, `${m.frames}${m.max_frames ? "/" + m.max_frames : ""} frames`];
  if (m.gen_fps) parts.push(`gen ${m.gen_fps} fps vs ${m.fps} real time (${m.realtime}×)`);
  if (m.block_s) parts.push(`block ${(m.block_s * 1000).toFixed(0)} ms`);
  if (m.latency_s) parts.push(`latency ${m.latency_s.toFixed(2)}s made`);
  const onScreen = Object.values(live.prompts).map((p) => p.onScreen).filter(Boolean);
  if (onScreen.length) parts.push(`${onScreen[onScreen.length - 1].toFixed(2)}s on screen`);
  parts.push(`buffer ${bufferedSeconds().toFixed(1)}s`);
  if (m.gpu_mem_gib !== null) parts.push(`GPU ${m.gpu_mem_gib} GiB`);
  if (m.recording) parts.push("● rec");
  $("status").textContent = parts.join(" · ");
}

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

function start() {
  const prompt = $("prompt").value.trim();
  if (!prompt) { log("type a prompt first", "error"); return; }
  send({ type: "start", prompt, seed: seedValue(), image: context.image, clip: context.clip,
         record: $("record").checked });
}

$("prompt-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt) return;
  if (live.state === "running") {
    submits.push(performance.now());
    send({ type: "prompt", prompt, transition: transitionValue() });
  } else {
    start();
  }
});
$("start").onclick = start;
$("stop").onclick = () => send({ type: "stop" });
$("restart").onclick = () => {
  const seed = seedValue();
  send($("new-seed").checked || seed === null ? { type: "restart", new_seed: $("new-seed").checked }
                                               : { type: "restart", seed });
};
$("record").onchange = () => { if (live.state === "running") send({ type: "record", on: $("record").checked }); };
$("claim").onclick = () => send({ type: "claim" });
$("image").onchange = async (ev) => {
  if (!ev.target.files.length) return;
  context = { image: await upload("image", ev.target.files[0]), clip: null };
  $("context").textContent = context.image ? `next start: from picture ${context.image}` : "";
};
$("clip").onchange = async (ev) => {
  if (!ev.target.files.length) return;
  context = { image: null, clip: await upload("clip", ev.target.files[0]) };
  $("context").textContent = context.clip ? `next start: continue clip ${context.clip}` : "";
};
$("lora-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const file = $("lora-file").value.trim(), scale = Number($("lora-scale").value || 1);
  if (!file) return;
  live.loraList = (live.loraList || []).concat([{ file, scale }]);
  sendLoras();
  $("lora-file").value = "";
});
$("clear-context").onclick = () => { context = { image: null, clip: null }; $("context").textContent = ""; };

connect();
requestAnimationFrame(tick);
