// anirank's page: title autocomplete (from /search), the built list, nothing else.
"use strict";

// Autocomplete on every .title-search box; its .search parent's data-mode says what a
// pick does: "add" puts the title on the built list, "go" opens its similar titles.
function autocomplete(input) {
  const box = input.closest(".search");
  const list = box.querySelector(".suggestions");
  let items = [], active = -1, timer = null, asked = "";

  function close() { list.hidden = true; list.innerHTML = ""; items = []; active = -1; }

  function show(results) {
    list.innerHTML = "";
    items = results;
    active = results.length ? 0 : -1;
    results.forEach((r, i) => {
      const li = document.createElement("li");
      li.setAttribute("role", "option");
      li.setAttribute("aria-selected", i === active ? "true" : "false");
      li.dataset.id = r.anime_id;
      const name = document.createElement("span");
      name.textContent = r.title;
      const meta = document.createElement("small");
      meta.textContent = [r.year, r.format_label].filter(Boolean).join(" · ");
      li.append(name, meta);
      li.addEventListener("mousedown", (e) => { e.preventDefault(); pick(i); });
      list.appendChild(li);
    });
    if (!results.length) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = "No title matches";
      list.appendChild(li);
    }
    list.hidden = false;
  }

  function highlight(i) {
    active = i;
    list.querySelectorAll("li[role=option]").forEach((li, j) =>
      li.setAttribute("aria-selected", j === i ? "true" : "false"));
  }

  function pick(i) {
    const r = items[i];
    if (!r) return;
    close();
    if (box.dataset.mode === "add") {
      addToList(r.anime_id, r.title);
      input.value = "";
    } else {
      window.location.href = "/title?id=" + encodeURIComponent(r.anime_id);
    }
  }

  input.addEventListener("input", () => {
    clearTimeout(timer);
    const q = input.value.trim();
    if (!q) { close(); return; }
    timer = setTimeout(async () => {
      asked = q;
      try {
        const response = await fetch("/search?limit=8&q=" + encodeURIComponent(q));
        const body = await response.json();
        if (asked === q && input.value.trim() === q) show(response.ok ? body.results : []);
      } catch (err) { close(); }
    }, 120);
  });
  input.addEventListener("keydown", (e) => {
    if (list.hidden || !items.length) return;
    if (e.key === "ArrowDown") { e.preventDefault(); highlight((active + 1) % items.length); }
    else if (e.key === "ArrowUp") { e.preventDefault(); highlight((active - 1 + items.length) % items.length); }
    else if (e.key === "Enter") { e.preventDefault(); pick(active); }
    else if (e.key === "Escape") { close(); }
  });
  input.addEventListener("blur", () => setTimeout(close, 150));
}

// The built list: rows of (title, optional score), written into the hidden `history`
// field (id:score,id:score) when the form is sent.
function builtList() { return document.getElementById("built-list"); }

function addToList(id, title) {
  const table = builtList();
  if (table.querySelector(`tr[data-id="${id}"]`)) return;
  const row = document.createElement("tr");
  row.dataset.id = id;
  const name = document.createElement("td");
  name.textContent = title;
  const scoreCell = document.createElement("td");
  const score = document.createElement("input");
  Object.assign(score, { type: "number", min: 0, max: 100, placeholder: "score", className: "score" });
  score.setAttribute("aria-label", "score");
  scoreCell.appendChild(score);
  const removeCell = document.createElement("td");
  removeCell.innerHTML = '<button type="button" class="remove" aria-label="remove">×</button>';
  row.append(name, scoreCell, removeCell);
  table.tBodies[0].appendChild(row);
  table.hidden = false;
}

function writeHistory() {
  const table = builtList(), field = document.getElementById("history");
  if (!table || !field) return;
  field.value = [...table.querySelectorAll("tr[data-id]")]
    .map((tr) => tr.dataset.id + ":" + tr.querySelector("input.score").value.trim()).join(",");
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll(".title-search").forEach(autocomplete);
  const table = builtList();
  if (table) {
    table.addEventListener("click", (e) => {
      if (!e.target.classList.contains("remove")) return;
      e.target.closest("tr").remove();
      table.hidden = !table.querySelector("tr[data-id]");
    });
  }
  const form = document.getElementById("rec-form");
  if (form) form.addEventListener("submit", writeHistory);
});
