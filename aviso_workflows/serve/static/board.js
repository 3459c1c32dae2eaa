// The availability board: draws the grid from /board/events (a snapshot, then changes) and keeps it live.
"use strict";
(function () {
  const STATES = {
    "arrived": ["✓", "arrived"], "arrived-late": ["✓!", "arrived late"], "late": ["⚠", "late"],
    "waited": ["⚑", "waited for"], "expected": ["◷", "expected"], "none": ["·", "nothing yet"],
  };
  const board = { rows: [], columns: [], cells: {}, query: null, selected: null, waiters: [] };
  const table = document.getElementById("board");
  const statusLine = document.getElementById("status");
  const outage = document.getElementById("outage");
  //: Seconds the banner keeps saying that etcd is back (the outage list keeps it longer).
  const RECOVERY_SHOWN = 120;
  const store = { down: null, recoveredAt: 0 };

  function el(tag, attributes, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function cellId(row, column) { return "c-" + row.join("_") + (column ? "-" + column : ""); }
  function clock(text) { return text ? text.slice(11, 16) + "Z" : "?"; }
  function day(text) { return text ? text.slice(0, 10) : ""; }
  function minutes(ms) {
    const m = Math.max(0, Math.round(ms / 60000));
    return m >= 120 ? Math.floor(m / 60) + " h " + (m % 60) + " min" : m + " min";
  }
  function rowLabel(row) {
    const date = row[0];
    const text = date.slice(0, 4) + "-" + date.slice(4, 6) + "-" + date.slice(6, 8);
    return row.length > 1 ? text + " " + row[1] + "Z" : text;
  }
  function columnLabel(column) {
    return board.query && board.query.column_field ? board.query.column_field + " " + column : "key";
  }
  function whoText(w) { return w.label + " (" + w.where + ")"; }

  // What a cell says: [detail line, full description for the title and the details panel].
  function describe(cell) {
    const now = Date.now();
    const parts = [];
    let detail = "";
    if (cell.state === "arrived" || cell.state === "arrived-late") {
      detail = clock(cell.arrived_at);
      parts.push("arrived " + (cell.arrived_at || "(time unknown)"));
      if (cell.state === "arrived-late" && cell.expected_by && cell.arrived_at) {
        const late = minutes(Date.parse(cell.arrived_at) - Date.parse(cell.expected_by));
        detail += " +" + late;
        parts.push("late by " + late + " (expected by " + cell.expected_by + ")");
      }
      if (cell.location) parts.push("location " + cell.location);
    } else if (cell.state === "late") {
      const late = minutes(now - Date.parse(cell.expected_by));
      detail = "+" + late;
      parts.push("late by " + late + ": expected by " + cell.expected_by);
    } else if (cell.expected_by) {
      detail = "by " + clock(cell.expected_by);
      parts.push("expected by " + cell.expected_by);
    }
    const waiters = cell.waiters || [];
    if (waiters.length) {
      if (cell.state === "waited") detail = waiters.length === 1 ? waiters[0].label : waiters.length + " waiting";
      parts.push("waited for by " + waiters.map(whoText).join("; "));
    }
    if (cell.arrived > 1) parts.push(cell.arrived + " keys arrived");
    return [detail, parts.join("; ") || "nothing known yet"];
  }

  function fillCell(td, cell) {
    const [icon, word] = STATES[cell.state] || STATES.none;
    const [detail, full] = describe(cell);
    td.className = "state-" + cell.state;
    td.dataset.state = cell.state;
    const where = rowLabel(cell.row) + ", " + columnLabel(cell.column);
    td.title = where + ": " + word + "; " + full;
    td.setAttribute("aria-label", where + ": " + word + (detail ? " " + detail : ""));
    td.replaceChildren(el("span", { class: "icon", "aria-hidden": "true" }, icon), el("span", { class: "word" }, word),
      el("span", { class: "detail" }, detail));
  }

  function drawTable() {
    const focused = document.activeElement && document.activeElement.id;
    const rowsAre = board.query && board.query.row_fields.length > 1 ? "cycles (date and time)" : "data dates";
    const caption = el("caption", {}, "Rows: " + rowsAre + ", newest first; columns: " +
      (board.query && board.query.column_field ? board.query.column_field + "s" : "keys") + "; times in UTC.");
    const head = el("thead");
    const headRow = el("tr");
    headRow.append(el("th", { scope: "col" }, board.query && board.query.row_fields.length > 1 ? "cycle" : "date"));
    for (const column of board.columns) headRow.append(el("th", { scope: "col" }, columnLabel(column)));
    head.append(headRow);
    const body = el("tbody");
    board.rows.forEach((row, r) => {
      const tr = el("tr");
      tr.append(el("th", { scope: "row" }, rowLabel(row)));
      board.columns.forEach((column, c) => {
        const td = el("td", { id: cellId(row, column), tabindex: "0", "data-r": r, "data-c": c });
        fillCell(td, board.cells[td.id] || { row: row, column: column, state: "none" });
        tr.append(td);
      });
      body.append(tr);
    });
    table.replaceChildren(caption, head, body);
    if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
  }

  function showDetails(id) {
    const cell = board.cells[id];
    const panel = document.getElementById("details");
    if (!cell) return;
    board.selected = id;
    const [icon, word] = STATES[cell.state] || STATES.none;
    const list = el("dl");
    const add = (name, value) => { if (value) list.append(el("dt", {}, name), el("dd", {}, value)); };
    add("Cell", rowLabel(cell.row) + ", " + columnLabel(cell.column));
    add("State", icon + " " + word);
    add("Arrived", cell.arrived_at);
    add("Location", cell.location);
    add("Expected by", cell.expected_by);
    if (cell.state === "late") add("Late by", minutes(Date.now() - Date.parse(cell.expected_by)));
    for (const w of cell.waiters || []) add("Waited for by", whoText(w) + ", since " + w.since + ", " + w.progress);
    add("Key", cell.key);
    panel.replaceChildren(el("h3", { id: "details-title" }, "Details"), list);
  }

  // A waiter writes its progress only when it changes, so its silence is no sign of trouble and is never
  // marked late; while etcd is unreachable it cannot write at all, and each waiter says what was heard last.
  function drawWaiters(waiters) {
    board.waiters = waiters;
    const list = document.getElementById("waiters");
    if (!waiters.length) { list.replaceChildren(el("li", { class: "empty" }, "nobody")); return; }
    list.replaceChildren(...waiters.map((w) => {
      const item = el("li", { class: "waiter" });
      const heard = w.updated || w.since;
      item.append(el("span", { class: "who" }, "⚑ " + w.label), el("br"),
        el("span", { class: "small" }, w.where + (w.kind ? " · " + w.kind : "") + " · " + w.progress + " · since " +
          clock(w.since) + (w.updated ? " · progress at " + clock(w.updated) : "") +
          (w.deadline ? " · times out " + clock(w.deadline) : "")));
      if (store.down) {
        item.append(el("br"), el("span", { class: "small stale-note" }, "not heard since " + clock(heard) +
          ": etcd unreachable, the wait goes on" + (w.deadline ? " until " + clock(w.deadline) : "")));
      }
      item.append(el("br"), el("code", { class: "small" }, w.request));
      return item;
    }));
  }

  function drawLateness(items) {
    const list = document.getElementById("lateness");
    if (!items.length) { list.replaceChildren(el("li", { class: "empty" }, "none")); return; }
    list.replaceChildren(...items.map((l) => {
      const arrived = l.arrived_at;
      const late = minutes((arrived ? Date.parse(arrived) : Date.now()) - Date.parse(l.expected_by));
      const text = arrived ? "✓! arrived late by " + late : "⚠ late by " + late;
      const item = el("li", { class: arrived ? "arrived-late" : "late" });
      const step = l.request.step !== undefined ? " step " + l.request.step : "";
      item.append(el("span", { class: "who" }, text), el("br"),
        el("span", { class: "small" }, l.name + ": " + rowLabel([l.request.date || ""]) + step + " · expected by " +
          clock(l.expected_by) + " " + day(l.expected_by)));
      return item;
    }));
  }

  function applyCells(data) {
    for (const cell of data.cells) board.cells[cell.id] = cell;
    const reshaped = JSON.stringify(data.rows) !== JSON.stringify(board.rows) ||
      JSON.stringify(data.columns) !== JSON.stringify(board.columns);
    board.rows = data.rows; board.columns = data.columns;
    if (reshaped) { drawTable(); return; }
    for (const cell of data.cells) {
      const td = document.getElementById(cell.id);
      if (!td) continue;
      const before = td.dataset.state;
      fillCell(td, cell);
      if (before !== cell.state && cell.state.startsWith("arrived")) {
        td.classList.remove("flash"); void td.offsetWidth; td.classList.add("flash");
      }
    }
    if (board.selected) showDetails(board.selected);
  }

  // etcd's health, as the server's watch sees it: a banner while it is unreachable (the grid stays, greyed),
  // then "reachable again after N s" for a while; every outage and recovery in the side list.
  function drawStore(health, live) {
    const wasDown = !!store.down;
    store.down = health.reachable ? null : health;
    document.body.classList.toggle("stale", !health.reachable);
    if (wasDown !== !!store.down) drawWaiters(board.waiters);
    if (!health.reachable) {
      showOutage();
    } else if (live && health.message) {
      store.recoveredAt = Date.now();
      outage.textContent = health.message + " — live again";
      outage.classList.add("recovered"); outage.hidden = false;
    } else if (Date.now() - store.recoveredAt > RECOVERY_SHOWN * 1000) {
      outage.hidden = true;
    }
    const list = document.getElementById("store-events");
    const items = health.events || [];
    if (!items.length) { list.replaceChildren(el("li", { class: "empty" }, "none seen")); return; }
    list.replaceChildren(...items.map((e) => el("li", { class: e.kind }, e.kind === "unreachable"
      ? "✗ unreachable at " + e.at.slice(11, 19) + "Z " + day(e.at) + (e.error ? " (" + e.error + ")" : "")
      : "✓ reachable again at " + e.at.slice(11, 19) + "Z after " + e.after_s + " s")));
  }
  function showOutage() {
    const since = store.down.since;
    const seconds = Math.max(0, Math.round((Date.now() - Date.parse(since)) / 1000));
    outage.textContent = "etcd unreachable since " + since.slice(11, 19) + " UTC (" + seconds + " s) — waits ride it" +
      " out until their timeout; the board shows the last known state";
    outage.classList.remove("recovered"); outage.hidden = false;
  }
  setInterval(() => {
    if (store.down) showOutage();
    else if (!outage.hidden && Date.now() - store.recoveredAt > RECOVERY_SHOWN * 1000) outage.hidden = true;
  }, 1000);

  function setStatus(text, down) {
    statusLine.textContent = text;
    statusLine.classList.toggle("down", !!down);
  }

  function connect() {
    const source = new EventSource("/board/events" + window.location.search);
    source.addEventListener("snapshot", (e) => {
      const data = JSON.parse(e.data);
      board.query = data.query; board.rows = data.rows; board.columns = data.columns; board.cells = {};
      for (const cell of data.cells) board.cells[cell.id] = cell;
      drawTable(); drawWaiters(data.waiters); drawLateness(data.lateness);
      if (data.store) drawStore(data.store, !!store.down);
      if (board.selected) showDetails(board.selected);
      document.body.dataset.ready = "true";
      setStatus("live · updated " + new Date().toISOString().slice(11, 19) + "Z");
    });
    source.addEventListener("cells", (e) => { applyCells(JSON.parse(e.data)); setStatus("live · updated " +
      new Date().toISOString().slice(11, 19) + "Z"); });
    source.addEventListener("waiters", (e) => drawWaiters(JSON.parse(e.data).waiters));
    source.addEventListener("lateness", (e) => drawLateness(JSON.parse(e.data).lateness));
    source.addEventListener("store", (e) => drawStore(JSON.parse(e.data), true));
    source.addEventListener("connection-closing", () => setStatus("reconnecting…"));
    source.addEventListener("error", (e) => {
      if (e.data) setStatus("error: " + JSON.parse(e.data).message, true);
      else if (source.readyState !== EventSource.OPEN) setStatus("disconnected; reconnecting…", true);
    });
  }

  // Keyboard: arrows move between cells; Enter or focus shows a cell's details.
  table.addEventListener("focusin", (e) => { if (e.target.tagName === "TD") showDetails(e.target.id); });
  table.addEventListener("click", (e) => { const td = e.target.closest("td"); if (td) td.focus(); });
  table.addEventListener("keydown", (e) => {
    const td = e.target.closest("td");
    if (!td) return;
    const moves = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };
    const move = moves[e.key];
    if (!move) return;
    const r = Number(td.dataset.r) + move[0], c = Number(td.dataset.c) + move[1];
    const next = table.querySelector('td[data-r="' + r + '"][data-c="' + c + '"]');
    if (next) { next.focus(); e.preventDefault(); }
  });
  // Lateness grows while nobody posts: redraw the relative times now and then.
  setInterval(() => {
    if (!board.query) return;
    for (const td of table.querySelectorAll("td[data-state=late]")) fillCell(td, board.cells[td.id]);
  }, 30000);

  if (document.body.dataset.live === "true") connect(); else setStatus("");
})();
