/* Admin web chat client: one WebSocket to /ws/webchat/<agent id>/, events from apps/webchat/events.py.
   Everything from the server is inserted with textContent, or through WebchatMarkdown.render, which
   escapes HTML before adding its own tags. */
(function () {
  "use strict";
  var root = document.querySelector(".webchat-main");
  if (!root) return;
  var md = window.WebchatMarkdown;
  var agentId = root.dataset.agentId;
  var log = document.getElementById("webchat-log");
  var statusEl = document.getElementById("webchat-status");
  var input = document.getElementById("webchat-input");
  var sendBtn = document.getElementById("webchat-send");
  var stopBtn = document.getElementById("webchat-stop");
  var resetBtn = document.getElementById("webchat-reset");
  var form = document.getElementById("webchat-compose");

  var ws = null;
  var connected = false;
  var busy = false;
  var retryDelay = 1000;
  var gaveUp = false;
  var seenUserMessages = {};
  var turns = {}; // turn id -> {box, tools, bubble, text}

  function setStatus(text, isError) {
    statusEl.textContent = text;
    statusEl.classList.toggle("is-error", !!isError);
  }
  function updateButtons() {
    input.disabled = !connected;
    sendBtn.disabled = !connected || !input.value.trim();
    stopBtn.disabled = !connected || !busy;
    resetBtn.disabled = !connected;
  }
  function setBusy(value) {
    busy = value;
    if (connected) setStatus(busy ? "The agent is answering…" : "Connected");
    updateButtons();
  }
  function scrollDown() { log.scrollTop = log.scrollHeight; }
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text != null) node.textContent = text;
    return node;
  }
  function addUser(id, text) {
    if (id != null) {
      if (seenUserMessages[id]) return;
      seenUserMessages[id] = true;
    }
    log.appendChild(el("div", "webchat-msg user", text));
    scrollDown();
  }
  function addAssistant(text) {
    var bubble = el("div", "webchat-msg assistant");
    bubble.innerHTML = md.render(text);
    log.appendChild(bubble);
    return bubble;
  }
  function addError(message, code) {
    var node = el("div", "webchat-msg error", message);
    if (code) node.title = code;
    log.appendChild(node);
    scrollDown();
  }
  function addNotice(text) { log.appendChild(el("div", "webchat-msg notice", text)); scrollDown(); }

  function turnFor(id) {
    var key = id == null ? "none" : String(id);
    if (!turns[key]) {
      var box = el("div", "webchat-turn");
      var tools = el("div", "webchat-tools");
      var bubble = el("div", "webchat-msg assistant streaming");
      box.appendChild(tools);
      box.appendChild(bubble);
      log.appendChild(box);
      turns[key] = { box: box, tools: tools, bubble: bubble, text: "", done: false };
    }
    return turns[key];
  }
  function renderTurn(t) { t.bubble.innerHTML = md.render(t.text); scrollDown(); }
  function finishTurn(t) {
    t.done = true;
    t.bubble.classList.remove("streaming");
    if (!t.text) t.bubble.remove();
  }
  function toolStart(t, name, args) {
    var node = el("details", "webchat-tool running");
    var summary = el("summary");
    summary.appendChild(el("span", "tool-state", "⚙ running "));
    summary.appendChild(el("code", null, name));
    node.appendChild(summary);
    node.appendChild(el("div", null, "Arguments:"));
    node.appendChild(el("pre", null, JSON.stringify(args || {}, null, 2)));
    node.dataset.name = name;
    node.open = true;
    t.tools.appendChild(node);
    scrollDown();
  }
  function toolEnd(t, name, ok, text) {
    var nodes = t.tools.querySelectorAll("details.webchat-tool.running");
    var node = null;
    for (var i = 0; i < nodes.length; i++) if (nodes[i].dataset.name === name) { node = nodes[i]; break; }
    if (!node) { toolStart(t, name, {}); node = t.tools.lastChild; }
    node.classList.remove("running");
    node.classList.add(ok ? "ok" : "failed");
    node.querySelector(".tool-state").textContent = ok ? "✓ " : "✗ ";
    node.appendChild(el("div", null, ok ? "Result:" : "Error:"));
    node.appendChild(el("pre", null, text || ""));
    node.open = false;
    scrollDown();
  }

  function renderHistory(items) {
    log.innerHTML = "";
    turns = {};
    seenUserMessages = {};
    items.forEach(function (m) {
      if (m.role === "user") {
        addUser(m.id, m.text);
        if (m.status === "cancelled") log.lastChild.classList.add("cancelled-msg");
      } else if (m.role === "tool") {
        var t = { tools: log };
        toolStart(t, m.tool_name || "tool", {});
        toolEnd(t, m.tool_name || "tool", !m.error_code, m.text);
      } else if (m.role === "system") {
        addAssistant(m.text).classList.add("notice-reply");
      } else if (m.error_code) {
        if (m.text) addAssistant(m.text);
        addError(m.error_message || m.error_code, m.error_code);
      } else {
        addAssistant(m.text);
        if (m.status === "cancelled") addNotice("Stopped.");
      }
    });
    scrollDown();
  }

  var handlers = {
    "ready": function (e) {
      renderHistory(e.history);
      if (!e.history.length) addNotice("Session " + e.session + " with " + e.agent.name + (e.agent.demo ? " (demo model)" : "") + ". Say hello.");
      setBusy(e.busy);
    },
    "session": function (e) {
      log.innerHTML = ""; turns = {}; seenUserMessages = {};
      addNotice("New session " + e.session + " started: the agent has forgotten the previous conversation.");
      setBusy(false);
    },
    "user.message": function (e) { addUser(e.message_id, e.text); setBusy(true); },
    "turn.start": function (e) { turnFor(e.turn_id); setBusy(true); },
    "text.delta": function (e) { var t = turnFor(e.turn_id); t.text += e.delta; renderTurn(t); },
    "text.replace": function (e) { var t = turnFor(e.turn_id); t.text = e.text; renderTurn(t); },
    "tool.start": function (e) { toolStart(turnFor(e.turn_id), e.name, e.arguments); },
    "tool.end": function (e) { toolEnd(turnFor(e.turn_id), e.name, e.ok, e.summary); },
    "final": function (e) { var t = turnFor(e.turn_id); t.text = e.text; renderTurn(t); finishTurn(t); setBusy(false); },
    "error": function (e) {
      if (e.code === "BAD_REQUEST") { setStatus(e.message, true); return; }
      if (e.turn_id != null && turns[String(e.turn_id)]) finishTurn(turns[String(e.turn_id)]);
      addError(e.message, e.code);
      setBusy(false);
    },
    "notice": function (e) {
      var bubble = addAssistant(e.text);
      bubble.classList.add("notice-reply");
      scrollDown();
      setBusy(false);
    },
    "cancelled": function (e) {
      if (e.turn_id != null && turns[String(e.turn_id)]) finishTurn(turns[String(e.turn_id)]);
      if (busy) addNotice("Stopped.");
      setBusy(false);
    }
  };

  function connect() {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    ws = new WebSocket(scheme + window.location.host + "/ws/webchat/" + encodeURIComponent(agentId) + "/");
    ws.onopen = function () { retryDelay = 1000; };
    ws.onmessage = function (msg) {
      var event;
      try { event = JSON.parse(msg.data); } catch (err) { return; }
      if (event.type === "ready") { connected = true; }
      var handler = handlers[event.type];
      if (handler) handler(event);
      updateButtons();
    };
    ws.onclose = function (e) {
      connected = false;
      updateButtons();
      if (e.code === 4401) { gaveUp = true; setStatus("You are logged out: reload the page to log in again.", true); return; }
      if (e.code === 4403) { gaveUp = true; setStatus("This agent is not available to you.", true); return; }
      setStatus("Disconnected; reconnecting in " + Math.round(retryDelay / 1000) + " s…", true);
      setTimeout(function () { if (!gaveUp) connect(); }, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 15000);
    };
  }

  function send(payload) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(payload));
  }
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var text = input.value.trim();
    if (!text || !connected) return;
    send({ type: "message", text: text });
    input.value = "";
    updateButtons();
  });
  input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); form.requestSubmit(); }
  });
  input.addEventListener("input", updateButtons);
  stopBtn.addEventListener("click", function () { send({ type: "stop" }); });
  resetBtn.addEventListener("click", function () { send({ type: "reset" }); });

  connect();
})();
