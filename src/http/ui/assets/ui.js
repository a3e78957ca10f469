// ironboot dashboard: the only script. Pages work without it; with it,
// the parts marked data-stream follow the server's live event stream.
//
// - [data-fragment][data-stream]: when an event arrives, fetch the
//   fragment again (at most every 250 ms) and put it in place.
// - [data-append]: prepend each event as a table row (newest first).
"use strict";

(function () {
  const MAX_ROWS = 500;

  function follow(url, onEvent) {
    const source = new EventSource(url);
    source.onmessage = (msg) => onEvent(msg.data);
    source.addEventListener("lagged", () => onEvent(null));
    return source;
  }

  function liveFragment(el) {
    let timer = null;
    let busy = false;
    const refresh = async () => {
      timer = null;
      if (busy) { schedule(); return; }
      busy = true;
      try {
        const res = await fetch(el.dataset.fragment, { credentials: "same-origin" });
        if (res.status === 401) { location.href = "/ui/login"; return; }
        if (res.ok) {
          el.innerHTML = await res.text();
          el.dataset.refreshed = String(Date.now());
        }
      } finally {
        busy = false;
      }
    };
    const schedule = () => { if (timer === null) timer = setTimeout(refresh, 250); };
    follow(el.dataset.stream, schedule);
    // Gates also close on a deadline, with no event: look again now and then.
    setInterval(schedule, 5000);
  }

  function cell(row, text) {
    const td = document.createElement("td");
    td.textContent = text == null ? "" : String(text);
    row.appendChild(td);
    return td;
  }

  function utc(ms) {
    return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "");
  }

  function liveRows(body) {
    follow(body.dataset.append, (data) => {
      if (data === null) return;
      let e;
      try { e = JSON.parse(data); } catch (_) { return; }
      const row = document.createElement("tr");
      cell(row, utc(e.at_ms));
      const who = cell(row, "");
      if (e.mac) {
        const a = document.createElement("a");
        a.href = "/ui/machines/" + encodeURIComponent(e.mac);
        a.textContent = e.mac;
        who.appendChild(a);
      }
      cell(row, e.ip);
      cell(row, e.step);
      const code = document.createElement("code");
      code.textContent = e.detail == null ? "" : JSON.stringify(e.detail);
      cell(row, "").appendChild(code);
      body.insertBefore(row, body.firstChild);
      while (body.rows.length > MAX_ROWS) body.deleteRow(-1);
    });
  }

  document.querySelectorAll("[data-fragment][data-stream]").forEach(liveFragment);
  document.querySelectorAll("[data-append]").forEach(liveRows);
})();
