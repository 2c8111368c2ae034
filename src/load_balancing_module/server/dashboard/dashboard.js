// OMNIXAN LB dashboard: polls GET /distribution and GET /routes every second and renders them.
// The cards, chart, backend table and algorithm are those of the pool picked (default first);
// every change names it (?pool=). No framework, no build step. Every value from the server is put
// in the page with textContent, never as HTML.
"use strict";
(() => {
  const TOKEN_KEY = "omnixan-lb-token";
  const REMOVED_KEY = "omnixan-lb-removed";
  const POOL_KEY = "omnixan-lb-pool";
  const DEFAULT_POOL = "default";
  const REFRESH_MS = 1000;
  const HISTORY = 120; // sparkline points (seconds)
  const CONFIG_FIELDS = ["host", "port", "weight", "priority", "quantum_capable", "max_connections", "metadata"];

  const $ = (id) => document.getElementById(id);
  const rates = [];
  const lastConfig = new Map(); // backend id -> the fields needed to add it again
  let tokenWait = null;
  let pool = sessionStorage.getItem(POOL_KEY) || DEFAULT_POOL; // the pool shown and changed

  // A path with the pool picked, for the routes that act on one pool.
  const inPool = (path, name = pool) => (name === DEFAULT_POOL ? path : `${path}?pool=${encodeURIComponent(name)}`);

  // -- the API, with the bearer token asked once and kept in session storage ------------

  function askToken() {
    if (tokenWait) return tokenWait;
    tokenWait = new Promise((resolve) => {
      const dialog = $("token-dialog");
      const form = $("token-form");
      const input = $("token");
      input.value = "";
      form.addEventListener("submit", function onSubmit(event) {
        event.preventDefault();
        const value = input.value.trim();
        if (!value) return;
        sessionStorage.setItem(TOKEN_KEY, value);
        form.removeEventListener("submit", onSubmit);
        dialog.close();
        $("forget-token").hidden = false;
        tokenWait = null;
        resolve();
      });
      dialog.showModal();
      input.focus();
    });
    return tokenWait;
  }

  // The admin API takes a change only as application/json, even with no body: the type no other
  // site's page can send without a CORS preflight (which it never grants).
  const CHANGES = ["POST", "PUT", "PATCH"];

  async function api(method, path, body) {
    for (;;) {
      const headers = {};
      const token = sessionStorage.getItem(TOKEN_KEY);
      if (token) headers.Authorization = "Bearer " + token;
      if (body !== undefined || CHANGES.includes(method)) headers["Content-Type"] = "application/json";
      const response = await fetch(path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store",
      });
      if (response.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        await askToken();
        continue;
      }
      const data = await response.json().catch(() => null);
      if (!response.ok) {
        throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
      }
      return data;
    }
  }

  function say(text, isError = true) {
    const message = $("message");
    message.textContent = text;
    message.style.color = isError ? "" : "var(--ok)";
  }

  // -- formatting ---------------------------------------------------------------------------

  const fixed = (value, digits) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));
  const percent = (value) => (value === null || value === undefined ? "–" : (100 * value).toFixed(1) + " %");
  const ms = (value) => (value === null || value === undefined ? "–" : Number(value).toFixed(1) + " ms");
  const badge = (text, cls) => {
    const span = document.createElement("span");
    span.className = "badge " + cls;
    span.textContent = text.replace("_", "-");
    return span;
  };

  // -- rendering ----------------------------------------------------------------------------

  function renderSparkline() {
    const max = Math.max(1, ...rates);
    const step = 240 / Math.max(rates.length - 1, 1); // the line spans the card from the first sample on
    const points = rates.map((r, i) => `${(i * step).toFixed(1)},${(46 - (r / max) * 44).toFixed(1)}`);
    $("sparkline-line").setAttribute("points", points.join(" "));
  }

  function renderChart(backends, totalRps) {
    const chart = $("distribution-chart");
    chart.replaceChildren();
    const totalRouted = backends.reduce((sum, b) => sum + b.total_requests, 0);
    for (const b of backends) {
      const share = totalRps > 0 ? b.requests_per_second / totalRps : totalRouted > 0 ? b.total_requests / totalRouted : 0;
      const row = document.createElement("div");
      row.className = "bar-row";
      row.dataset.backendId = b.backend_id;
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = b.backend_id;
      const track = document.createElement("div");
      track.className = "bar-track";
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.width = (100 * share).toFixed(1) + "%";
      track.append(bar);
      const label = document.createElement("span");
      label.className = "share";
      label.textContent = (100 * share).toFixed(1) + " %";
      row.append(name, track, label);
      chart.append(row);
    }
    if (!backends.length) chart.textContent = "no backends";
  }

  function backendRow(id) {
    const row = document.createElement("tr");
    row.dataset.backendId = id;
    for (const key of ["id", "weight", "priority", "health", "circuit", "active", "rps", "errors", "p99"]) {
      const cell = document.createElement("td");
      cell.dataset.field = key;
      if (["active", "rps", "errors", "p99"].includes(key)) cell.className = "num";
      row.append(cell);
    }
    row.append(actionCell("Drain", "drain danger", (button) => drainBackend(id, button)));
    return row;
  }

  // A table cell holding one button; onClick gets the button (to disable it while busy).
  function actionCell(label, className, onClick) {
    const cell = document.createElement("td");
    cell.className = "actions";
    const button = document.createElement("button");
    button.type = "button";
    button.className = className;
    button.textContent = label;
    button.addEventListener("click", () => onClick(button));
    cell.append(button);
    return cell;
  }

  function renderTable(backends) {
    const tbody = $("backends").tBodies[0];
    const rows = new Map([...tbody.rows].map((row) => [row.dataset.backendId, row]));
    backends.forEach((b, index) => {
      let row = rows.get(b.backend_id);
      if (!row) row = backendRow(b.backend_id);
      rows.delete(b.backend_id);
      if (tbody.rows[index] !== row) tbody.insertBefore(row, tbody.rows[index] || null);
      const cell = (field) => row.querySelector(`td[data-field="${field}"]`);
      cell("id").textContent = b.backend_id + (b.quantum_capable ? " ⚛" : "");
      cell("weight").textContent = fixed(b.weight, b.weight % 1 ? 2 : 0);
      cell("priority").textContent = String(b.priority);
      cell("health").replaceChildren(b.draining ? badge("draining", "draining") : badge(b.health_status, b.health_status));
      cell("circuit").replaceChildren(badge(b.circuit_state, b.circuit_state));
      cell("active").textContent = String(b.active_connections);
      cell("rps").textContent = fixed(b.requests_per_second, 1);
      cell("errors").textContent = percent(b.error_rate);
      cell("p99").textContent = ms(b.p99_latency_ms);
      lastConfig.set(b.backend_id, Object.fromEntries(CONFIG_FIELDS.map((f) => [f, b[f]])));
    });
    for (const row of rows.values()) row.remove();
  }

  function removedList() {
    try {
      return JSON.parse(sessionStorage.getItem(REMOVED_KEY) || "[]");
    } catch {
      return [];
    }
  }

  function renderRemoved() {
    const list = removedList();
    $("removed-section").hidden = list.length === 0;
    const tbody = $("removed").tBodies[0];
    tbody.replaceChildren();
    for (const item of list) {
      const row = document.createElement("tr");
      row.dataset.backendId = item.backend_id;
      const name = document.createElement("td");
      name.textContent = item.backend_id;
      const how = document.createElement("td");
      how.textContent = item.note;
      row.append(name, how, actionCell("Re-add", "readd", (button) => readdBackend(item, button)));
      tbody.append(row);
    }
  }

  // With workers: N, one row per worker process (summed figures are in the cards and the table).
  function renderWorkers(workers) {
    $("workers-section").hidden = workers.length === 0;
    const tbody = $("workers").tBodies[0];
    tbody.replaceChildren();
    for (const w of workers) {
      const row = document.createElement("tr");
      row.dataset.worker = String(w.index);
      const cells = [
        String(w.index),
        w.pid === null ? "–" : String(w.pid),
        w.up ? "up" : "restarting",
        String(w.restarts),
        String(w.total_requests),
        fixed(w.requests_per_second, 1),
        String(w.in_flight),
        String(w.connections),
      ];
      cells.forEach((text, i) => {
        const cell = document.createElement("td");
        cell.textContent = text;
        if (i >= 4) cell.className = "num";
        row.append(cell);
      });
      tbody.append(row);
    }
  }

  // Every pool (several only when the config names pools): a picker in the header, and a table.
  function renderPools(pools) {
    const names = Object.keys(pools);
    const several = names.length > 1;
    $("pool-picker").hidden = !several;
    $("pools-section").hidden = !several;
    $("pool-note").textContent = several ? `, pool ${pool}` : "";
    const select = $("pool");
    if ([...select.options].map((o) => o.value).join() !== names.join()) {
      select.replaceChildren(...names.map((name) => new Option(name, name)));
    }
    if (select.value !== pool) select.value = pool;
    const tbody = $("pools").tBodies[0];
    tbody.replaceChildren();
    for (const name of names) {
      const view = pools[name];
      const backends = Object.values(view.backends);
      const row = document.createElement("tr");
      row.dataset.pool = name;
      if (name === pool) row.className = "selected";
      const cells = [
        name,
        view.algorithm.replace("_", " "),
        String(backends.length),
        String(backends.filter((b) => b.health_status === "healthy").length),
        fixed(view.requests_per_second, 1),
        String(view.total_requests),
        String(backends.reduce((sum, b) => sum + b.active_connections, 0)),
      ];
      cells.forEach((text, i) => {
        const cell = document.createElement("td");
        cell.textContent = text;
        if (i >= 2) cell.className = "num";
        row.append(cell);
      });
      row.addEventListener("click", () => pickPool(name));
      tbody.append(row);
    }
  }

  function describeMatch(match) {
    const parts = [];
    if (match.host) parts.push(`host ${match.host}`);
    if (match.path_prefix) parts.push(`path ${match.path_prefix}…`);
    if (match.path_regex) parts.push(`path ~ ${match.path_regex}`);
    if (match.methods) parts.push(match.methods.join(" "));
    for (const [name, value] of Object.entries(match.headers || {})) parts.push(`${name}: ${value}`);
    return parts.length ? parts.join(", ") : "every request";
  }

  function describeRewrites(route) {
    const parts = [];
    if (route.strip_prefix) parts.push(`strip ${route.strip_prefix}`);
    for (const [side, rules] of [["request", route.request_headers], ["response", route.response_headers]]) {
      const count = Object.keys(rules.set).length + Object.keys(rules.add).length + rules.remove.length;
      if (count) parts.push(`${side} headers: ${count} rule${count > 1 ? "s" : ""}`);
    }
    return parts.join(", ") || "–";
  }

  function renderRoutes(table) {
    const routes = table ? table.routes : [];
    $("routes-section").hidden = routes.length === 0;
    const tbody = $("routes").tBodies[0];
    tbody.replaceChildren();
    for (const route of routes) {
      const row = document.createElement("tr");
      row.dataset.route = route.name;
      const to = route.redirect
        ? `redirect ${route.redirect.status} → ${route.redirect.to}`
        : `pool ${route.pool}`;
      const cells = [String(route.index), route.name, describeMatch(route.match), to, describeRewrites(route),
        route.filters.join(", ") || "–"];
      cells.forEach((text, i) => {
        const cell = document.createElement("td");
        cell.textContent = text;
        if (i === 0) cell.className = "num";
        row.append(cell);
      });
      tbody.append(row);
    }
    const errors = Object.entries(table ? table.filter_errors : {});
    $("filter-errors").hidden = errors.length === 0;
    $("filter-errors").textContent = "Filter errors (answered 500): " +
      errors.map(([name, count]) => `${name} ${count}`).join(", ");
  }

  function render(distribution, routes) {
    const pools = distribution.pools || { [DEFAULT_POOL]: distribution };
    if (!Object.hasOwn(pools, pool)) pool = DEFAULT_POOL; // a reload removed it
    renderPools(pools);
    renderRoutes(routes);
    const workers = distribution.workers || [];
    distribution = pools[pool];
    const backends = Object.values(distribution.backends).sort((a, b) => a.backend_id.localeCompare(b.backend_id));
    rates.push(distribution.requests_per_second || 0);
    if (rates.length > HISTORY) rates.shift();
    $("total-rps").textContent = fixed(distribution.requests_per_second, 1);
    $("total-requests").textContent = String(distribution.total_requests);
    $("backend-count").textContent = String(backends.length);
    $("queued").textContent = String(distribution.queued_requests);
    const select = $("algorithm");
    if (document.activeElement !== select && select.dataset.current !== distribution.algorithm) {
      select.value = distribution.algorithm;
      select.dataset.current = distribution.algorithm;
    }
    renderSparkline();
    renderChart(backends, distribution.requests_per_second);
    renderTable(backends);
    renderWorkers(workers);
    const status = $("status");
    status.className = "status live";
    status.textContent = "live · " + new Date(distribution.timestamp * 1000).toLocaleTimeString();
  }

  // -- actions --------------------------------------------------------------------------------

  async function drainBackend(id, button) {
    button.disabled = true;
    button.textContent = "Draining…";
    const config = lastConfig.get(id);
    try {
      const from = pool;
      const result = await api("POST", inPool(`/backends/${encodeURIComponent(id)}/drain`, from), {});
      const finished = new Date(result.finished_at * 1000).toLocaleTimeString();
      const note = `${result.in_flight} in flight, ` +
        (result.completed ? "all finished" : `${result.in_flight_left} left at the timeout`) + `, removed ${finished}` +
        (from === DEFAULT_POOL ? "" : ` from pool ${from}`);
      sessionStorage.setItem(REMOVED_KEY, JSON.stringify([...removedList().filter((r) => r.backend_id !== id),
        { backend_id: id, config, note, pool: from }]));
      renderRemoved();
      say(`Drained ${id}: ${note}.`, false);
    } catch (error) {
      say(`Drain of ${id} failed: ${error.message}`);
      button.disabled = false;
      button.textContent = "Drain";
    }
  }

  async function readdBackend(item, button) {
    button.disabled = true;
    try {
      const added = await api("POST", inPool("/backends", item.pool || DEFAULT_POOL), item.config);
      sessionStorage.setItem(REMOVED_KEY, JSON.stringify(removedList().filter((r) => r.backend_id !== item.backend_id)));
      renderRemoved();
      say(`Added ${added.backend_id} again.`, false);
    } catch (error) {
      say(`Adding ${item.backend_id} failed: ${error.message}`);
      button.disabled = false;
    }
  }

  async function switchAlgorithm(event) {
    event.preventDefault();
    const select = $("algorithm");
    try {
      const result = await api("PUT", inPool("/algorithm"), { algorithm_type: select.value });
      select.dataset.current = result.algorithm;
      say(`Algorithm of pool ${pool} switched to ${result.algorithm}.`, false);
    } catch (error) {
      say(`Switching algorithm failed: ${error.message}`);
    }
  }

  // -- start ------------------------------------------------------------------------------------

  function pickPool(name) {
    pool = name;
    sessionStorage.setItem(POOL_KEY, name);
    rates.length = 0; // the sparkline is the pool's
    $("algorithm").dataset.current = ""; // show the new pool's algorithm at the next render
    refresh(false);
  }

  async function refresh(again = true) {
    try {
      const [distribution, routes] = await Promise.all([api("GET", "/distribution"), api("GET", "/routes")]);
      render(distribution, routes);
    } catch (error) {
      const status = $("status");
      status.className = "status down";
      status.textContent = "unreachable: " + error.message;
    }
    if (again) setTimeout(refresh, REFRESH_MS);
  }

  async function start() {
    $("algorithm-form").addEventListener("submit", switchAlgorithm);
    $("pool").addEventListener("change", (event) => pickPool(event.target.value));
    $("forget-token").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      $("forget-token").hidden = true;
    });
    $("forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
    renderRemoved();
    try {
      const algorithm = await api("GET", "/algorithm");
      const select = $("algorithm");
      for (const name of algorithm.available) select.add(new Option(name.replace("_", " "), name));
      select.value = algorithm.algorithm;
    } catch (error) {
      say("Could not read the algorithms: " + error.message);
    }
    refresh();
  }

  start();
})();
