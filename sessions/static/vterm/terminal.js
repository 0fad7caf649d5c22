// The browser terminal: xterm.js on the vterm WebSocket (API.md, "WebSocket terminal").
// Applies output frames in seq order (dropping repeats), acknowledges what xterm.js has
// processed (flow control, docs/websocket.md), reconnects with ?since= after a drop, and
// shows each command's exit code from the shell's OSC 133 "D" marks.
(function () {
  "use strict";
  const el = document.getElementById("terminal");
  const sessionId = el.dataset.session;
  const connPill = document.getElementById("conn");
  const statusPill = document.getElementById("status");
  const exitPill = document.getElementById("exit");
  const commandList = document.getElementById("commands");

  const term = new Terminal({ cursorBlink: true, scrollback: 10000, fontSize: 14,
                              fontFamily: "DejaVu Sans Mono, Menlo, Consolas, monospace" });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(el);
  fit.fit();

  const state = { ws: null, position: null, connects: 0, reconnects: 0, processed: 0, acked: 0,
                  retry: 0, closed: false, exitCodes: [], lastCommandLine: "" };
  window.vterm = { term, state, reconnectNow: () => state.ws && state.ws.close() };

  function pill(node, text, cls) {
    node.textContent = text;
    node.className = "pill" + (cls ? " " + cls : "");
  }

  function send(frame) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(frame));
  }

  // -- flow control: acknowledge what xterm.js has parsed, a few times a second at most --
  let ackTimer = null;
  function processed(seq) {
    state.processed = Math.max(state.processed, seq);
    if (ackTimer === null) {
      ackTimer = setTimeout(() => {
        ackTimer = null;
        if (state.processed > state.acked) { state.acked = state.processed; send({ type: "ack", seq: state.acked }); }
      }, 20);
    }
  }

  function applyOutput(frame) {
    if (state.position !== null && frame.seq <= state.position) return; // seen already (replay overlap)
    state.position = frame.seq;
    term.write(frame.data, () => processed(frame.seq));
  }

  function applySnapshot(frame) {
    if (frame.seq < state.acked) { state.acked = 0; state.processed = 0; } // the stream started over
    state.position = frame.seq;
    let text = "\x1b[0m\x1b[H\x1b[2J" + frame.lines.join("\r\n");
    if (frame.cursor) text += "\x1b[" + (frame.cursor.y + 1) + ";" + (frame.cursor.x + 1) + "H";
    term.write(text, () => processed(frame.seq));
  }

  // -- exit codes: the shell's marks (B: the prompt ends; C: a command starts;
  //    D;<exit>;<nonce>;<cwd>: it ended) --
  let running = false;
  let inputStart = null; // where the last prompt ended: the command line starts there
  term.parser.registerOscHandler(133, (data) => {
    const parts = data.split(";");
    const buf = term.buffer.active;
    if (parts[0] === "B") {
      inputStart = { y: buf.baseY + buf.cursorY, x: buf.cursorX };
    } else if (parts[0] === "C") {
      running = true;
      state.lastCommandLine = commandLine(buf);
      inputStart = null;
    } else if (parts[0] === "D" && running) {
      running = false;
      commandEnded(parseInt(parts[1], 10), state.lastCommandLine);
    }
    return true; // handled: nothing to draw
  });

  // The command line just entered: from the prompt's end (when the shell marked it) to the
  // line above the cursor, wrapped lines included; else that one line, prompt and all.
  function commandLine(buf) {
    const endY = buf.baseY + buf.cursorY - 1;
    const from = inputStart && inputStart.y <= endY && endY - inputStart.y < 50 ? inputStart : { y: endY, x: 0 };
    let text = "";
    for (let y = from.y; y <= endY; y++) {
      const line = buf.getLine(y);
      if (line) text += line.translateToString(y === endY, y === from.y ? from.x : 0);
    }
    return text;
  }

  function commandEnded(code, label) {
    state.exitCodes.push(code);
    pill(exitPill, "exit " + code, code === 0 ? "ok" : "bad");
    const li = document.createElement("li");
    li.className = code === 0 ? "ok" : "bad";
    const codeSpan = document.createElement("span");
    codeSpan.className = "code";
    codeSpan.textContent = "[" + code + "] ";
    li.append(codeSpan, document.createTextNode(label.trim().slice(-80)));
    commandList.append(li);
    while (commandList.children.length > 200) commandList.firstChild.remove();
    li.scrollIntoView({ block: "nearest" });
  }

  // -- the connection ------------------------------------------------------------------
  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const since = state.position !== null ? "?since=" + state.position : "";
    const ws = new WebSocket(proto + "//" + location.host + "/ws/v1/sessions/" + sessionId + "/" + since);
    state.ws = ws;
    ws.onmessage = (ev) => {
      const frame = JSON.parse(ev.data);
      switch (frame.type) {
        case "hello":
          state.connects += 1;
          state.retry = 0;
          if (state.connects > 1) {
            state.reconnects += 1;
            pill(connPill, "reconnected (resumed after #" + state.position + ")", "warn");
          } else {
            pill(connPill, "connected", "ok");
          }
          pill(statusPill, frame.session.status, frame.session.status === "active" ? "ok" : "");
          sendSize(true);
          break;
        case "output": applyOutput(frame); break;
        case "snapshot": applySnapshot(frame); break;
        case "status": pill(statusPill, frame.status, frame.status === "active" ? "ok" : "warn"); break;
        case "command":
          if (!["queued", "running"].includes(frame.command.status) && frame.command.exit_code !== null) {
            pill(exitPill, "exit " + frame.command.exit_code, frame.command.exit_code === 0 ? "ok" : "bad");
          }
          break;
        case "error": console.warn("vterm:", frame.code, frame.message); break;
      }
    };
    ws.onclose = (ev) => {
      if (state.ws !== ws) return;
      if (ev.code === 4401) { location.href = "/login/?next=" + encodeURIComponent(location.pathname); return; }
      if (ev.code === 4404) { pill(connPill, "no such session", "bad"); return; }
      const wait = Math.min(10000, 250 * 2 ** state.retry);
      state.retry += 1;
      pill(connPill, "disconnected; reconnecting…", "bad");
      setTimeout(connect, wait);
    };
  }

  // -- size: the terminal follows the window; the shell follows the terminal --
  let sentSize = "";
  function sendSize(force) {
    const cols = Math.max(10, Math.min(1000, term.cols));
    const rows = Math.max(2, Math.min(500, term.rows));
    const key = cols + "x" + rows;
    if (force || key !== sentSize) { sentSize = key; send({ type: "resize", cols, rows }); }
  }
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => fit.fit(), 80);
  });
  term.onResize(() => sendSize(false));
  term.onData((data) => send({ type: "input", data }));
  setInterval(() => send({ type: "ping" }), 25000);

  connect();
  term.focus();
})();
