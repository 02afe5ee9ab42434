// ETCHR playground: a plain script (no framework, no network beyond this verifier) over POST /answer.
// URLs are relative so the page also works behind a reverse proxy that mounts the verifier under a prefix.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "etchr-playground-token";
  const STAGES = ["route", "edit", "verify", "reason_edit", "reason_direct", "total"];
  const state = { image: null, authRequired: false, busy: false };
  const MODE_HELP = {
    evr: "evr: edit, verify the edit, then reason (falls back to the original image when the judge rejects the edit).",
    edit: "edit: edit, then reason on the edit without verifying it.",
    direct: "direct: the model answers from the original image alone (the baseline).",
  };

  function show(el, visible) {
    el.hidden = !visible;
  }

  function setStatus(text, kind) {
    const el = $("service-status");
    el.textContent = text;
    el.dataset.kind = kind;
  }

  // ---------------------------------------------------------------- configuration and readiness

  async function loadConfig() {
    try {
      const response = await fetch("playground/config.json", { cache: "no-store" });
      if (!response.ok) return;
      const config = await response.json();
      state.authRequired = Boolean(config.auth_required);
      if (Array.isArray(config.tasks)) fillTasks(config.tasks);
    } catch (err) {
      // The static defaults in the page still work.
    }
    if (state.authRequired) {
      show($("token-row"), true);
      $("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
    }
  }

  function fillTasks(tasks) {
    const select = $("task");
    const labels = { auto: "auto (routed)", none: "none (no edit)" };
    const current = select.value;
    select.replaceChildren(
      ...tasks.map((task) => new Option(labels[task] || task, task, false, task === current)),
    );
  }

  async function checkReady() {
    try {
      const response = await fetch("readyz", { cache: "no-store" });
      if (response.ok) {
        setStatus("Verifier ready.", "ok");
        return;
      }
      const body = await response.json().catch(() => null);
      const why = body && body.error ? body.error.message : `HTTP ${response.status}`;
      setStatus(`Verifier not ready: ${why}`, "bad");
    } catch (err) {
      setStatus("Cannot reach the verifier.", "bad");
    }
  }

  // ---------------------------------------------------------------- choosing an image

  function useImage(dataUrl, name) {
    state.image = dataUrl;
    const img = $("original-image");
    img.src = dataUrl;
    show(img, true);
    show($("original-empty"), false);
    clearEdited();
    $("drop-text").textContent = `${name} (choose another, drop or paste to replace)`;
    $("drop-zone").classList.add("has-image");
  }

  function readFile(file) {
    if (!file) return;
    if (!/^image\/(png|jpeg|webp)$/.test(file.type)) {
      showError("Unsupported file", `${file.name || "that file"} is ${file.type || "not an image"}; use PNG, JPEG or WebP.`);
      return;
    }
    const reader = new FileReader();
    reader.onload = () => useImage(reader.result, file.name || "pasted image");
    reader.onerror = () => showError("Could not read the file", String(reader.error));
    reader.readAsDataURL(file);
  }

  // A small maze drawn on a canvas, so a newcomer can try the page without an image at hand.
  function sampleMaze() {
    const cells = [
      "#########",
      "#S..#.#.#",
      "###.#.#.#",
      "#...#.#.#",
      "#.###.#.#",
      "#.....#.#",
      "#####.#.#",
      "A.....#.B",
      "#########",
    ];
    const size = 28;
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = cells.length * size;
    const ctx = canvas.getContext("2d");
    cells.forEach((row, y) => {
      [...row].forEach((cell, x) => {
        ctx.fillStyle = { "#": "#1f2937", S: "#16a34a" }[cell] || "#f9fafb";
        ctx.fillRect(x * size, y * size, size, size);
        if (cell === "A" || cell === "B") {
          ctx.fillStyle = "#2563eb";
          ctx.font = `bold ${size - 8}px sans-serif`;
          ctx.textAlign = "center";
          ctx.textBaseline = "middle";
          ctx.fillText(cell, x * size + size / 2, y * size + size / 2);
        }
      });
    });
    useImage(canvas.toDataURL("image/png"), "sample maze");
    $("question").value = "Which exit does the path from the green start reach? (A) left (B) right";
    $("task").value = "logic";
    $("question").focus();
  }

  // ---------------------------------------------------------------- asking

  function clearEdited() {
    const img = $("edited-image");
    img.removeAttribute("src");
    show(img, false);
    show($("edited-empty"), true);
    $("edited-caption").textContent = "Edited";
  }

  function hideError() {
    show($("error"), false);
  }

  function showError(title, message) {
    $("error-title").textContent = title;
    $("error-message").textContent = message;
    show($("error"), true);
  }

  function setBusy(busy, text) {
    state.busy = busy;
    $("submit").disabled = busy;
    $("submit").textContent = busy ? "Asking…" : "Ask";
    $("progress").textContent = text || "";
    document.body.classList.toggle("busy", busy);
  }

  async function ask(event) {
    if (event) event.preventDefault();
    if (state.busy) return;
    hideError();
    const question = $("question").value.trim();
    if (!state.image) {
      showError("No image", "Choose, drop or paste an image first (or use the sample maze).");
      $("image-input").focus();
      return;
    }
    if (!question) {
      showError("No question", "Type a question about the image.");
      $("question").focus();
      return;
    }
    const headers = { "Content-Type": "application/json" };
    const token = $("token").value.trim();
    if (token) {
      headers.Authorization = `Bearer ${token}`;
      sessionStorage.setItem(TOKEN_KEY, token);
    }
    const body = {
      image: state.image,
      question,
      task: $("task").value,
      mode: $("mode").value,
      return_images: true,
      stream: true,
    };
    setBusy(true, "Editing, verifying and reasoning… (the first edit may take a while)");
    show($("outcome"), false);
    resetEditProgress();
    clearEdited();
    const started = performance.now();
    let response;
    try {
      response = await fetch("answer", { method: "POST", headers, body: JSON.stringify(body) });
    } catch (err) {
      setBusy(false);
      showError("Cannot reach the verifier", `The request did not get through: ${err.message || err}`);
      return;
    }
    if (!response.ok) {  // refused before the answer started: a plain JSON error body
      const text = await response.text();
      let payload = null;
      try {
        payload = JSON.parse(text);
      } catch (err) {
        payload = null;
      }
      setBusy(false);
      renderError(response, payload, text);
      return;
    }
    let outcome = null;
    try {
      outcome = await readEvents(response, (name, data) => {
        if (name === "progress") showProgress(data);
      });
    } catch (err) {
      outcome = { name: "broken", data: String(err.message || err) };
    }
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    if (outcome && outcome.name === "answer") {
      setBusy(false, `Answered in ${seconds} s.`);
      render(outcome.data, response.headers.get("x-request-id"));
    } else if (outcome && outcome.name === "error") {
      setBusy(false);
      const error = outcome.data.error || {};
      showError(error.type || "error", error.message || "the answer failed");
    } else {
      setBusy(false);
      showError("The answer stream ended early", (outcome && outcome.data) || "no answer arrived");
    }
  }

  // POST /answer with stream: server-sent events ("progress" while EVR runs, then "answer" or "error").
  // EventSource cannot POST, so the body is read and split into events here.
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return null;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (!data.length) continue;  // a keep-alive comment
        const parsed = JSON.parse(data.join("\n"));
        if (name === "answer" || name === "error") return { name, data: parsed };
        onEvent(name, parsed);
      }
    }
  }

  function resetEditProgress() {
    show($("edit-progress"), false);
    const bar = $("edit-bar");
    bar.removeAttribute("value");
    bar.max = 1;
    $("edit-progress-text").textContent = "";
  }

  // The bar follows the edit: indeterminate while queued, step i of N while it denoises, full when done.
  function showProgress(event) {
    $("progress").textContent = event.message;
    if (event.stage !== "edit") return;
    const bar = $("edit-bar");
    show($("edit-progress"), true);
    if (event.state === "running" && event.steps) {
      bar.max = event.steps;
      bar.value = event.step;
      $("edit-progress-text").textContent = `step ${event.step} of ${event.steps}`;
    } else if (event.state === "running" && event.queue_position !== undefined) {
      bar.removeAttribute("value");
      $("edit-progress-text").textContent = `queued, ${event.queue_position} ahead`;
    } else if (event.state === "done") {
      bar.value = bar.max;
      $("edit-progress-text").textContent = event.message;
    } else {
      $("edit-progress-text").textContent = "waiting for the editor…";
    }
  }

  function renderError(response, payload, text) {
    const error = payload && payload.error ? payload.error : null;
    const type = error ? error.type : response.statusText || "error";
    const message = error ? error.message : text.slice(0, 500) || "(empty response)";
    showError(`${response.status} ${type}`, message);
    $("progress").textContent = "";
    if (response.status === 401) {
      show($("token-row"), true);
      sessionStorage.removeItem(TOKEN_KEY);
      $("token").focus();
    }
  }

  function render(result, requestId) {
    $("answer").textContent = result.answer || "(no final answer extracted)";
    const hasBaseline = result.baseline_answer !== null && result.baseline_answer !== undefined;
    show($("baseline-row"), hasBaseline);
    $("baseline-answer").textContent = hasBaseline ? result.baseline_answer : "";

    $("task-used").textContent = `${result.task}${result.routed ? " (chosen by automatic routing)" : ""}`;
    const verdict = $("verdict");
    if (result.verification) {
      verdict.textContent = result.verification.reliable ? "reliable" : "not reliable";
      verdict.dataset.kind = result.verification.reliable ? "ok" : "bad";
      $("verdict-raw").textContent = JSON.stringify(result.verification.raw);
    } else {
      verdict.textContent = "not verified";
      verdict.dataset.kind = "neutral";
      $("verdict-raw").textContent = "—";
    }
    $("used-edit").textContent = result.used_edit
      ? "yes"
      : `no${result.fallback_reason ? ` (${result.fallback_reason})` : ""}`;
    $("mllm-calls").textContent = String(result.mllm_calls);
    $("request-id").textContent = requestId || "—";
    $("raw-answer").textContent = result.raw_answer || "";

    if (result.edited_image) {
      const img = $("edited-image");
      img.src = `data:image/png;base64,${result.edited_image}`;
      show(img, true);
      show($("edited-empty"), false);
      $("edited-caption").textContent = result.used_edit ? "Edited (used)" : "Edited (not used)";
    } else {
      $("edited-empty").textContent = result.task === "none" ? "no edit for this question" : "no edit";
    }
    renderTimings(result.timings || {});
    show($("outcome"), true);
  }

  function renderTimings(timings) {
    const rows = [];
    const total = timings.total_ms || Math.max(1, ...Object.values(timings));
    const known = STAGES.map((stage) => `${stage}_ms`).filter((key) => key in timings);
    const others = Object.keys(timings).filter((key) => !known.includes(key));
    for (const key of [...known, ...others]) {
      const ms = timings[key];
      const row = document.createElement("tr");
      row.dataset.stage = key.replace(/_ms$/, "");
      const name = document.createElement("th");
      name.scope = "row";
      name.textContent = key.replace(/_ms$/, "").replace("_", " ");
      const value = document.createElement("td");
      value.className = "num";
      value.textContent = ms.toFixed(1);
      const barCell = document.createElement("td");
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${Math.min(100, (100 * ms) / total).toFixed(1)}%`;
      barCell.append(bar);
      row.append(name, value, barCell);
      rows.push(row);
    }
    $("timings").replaceChildren(...rows);
  }

  // ---------------------------------------------------------------- wiring

  function init() {
    const zone = $("drop-zone");
    $("image-input").addEventListener("change", (e) => readFile(e.target.files[0]));
    zone.addEventListener("dragover", (e) => {
      e.preventDefault();
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("dragging");
      readFile(e.dataTransfer.files[0]);
    });
    document.addEventListener("paste", (e) => {
      const item = [...(e.clipboardData ? e.clipboardData.items : [])].find((i) => i.type.startsWith("image/"));
      if (item) readFile(item.getAsFile());
    });
    $("sample-button").addEventListener("click", sampleMaze);
    $("mode").addEventListener("change", () => {
      $("mode-help").textContent = MODE_HELP[$("mode").value] || "";
    });
    $("ask-form").addEventListener("submit", ask);
    $("question").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) ask(e);
    });
    loadConfig();
    checkReady();
  }

  init();
})();
