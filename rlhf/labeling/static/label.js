// Labeling page: keyboard shortcuts and a draft kept in localStorage across reloads. No inline scripts (CSP).
// Pairwise: 1 A better, 2 B better, 3 tie, 4 both bad, 5 skip (type a reason), space cycles the strength,
// enter submits. Ranking: 1-9 give the highlighted response that rank and move on, space moves on, enter submits;
// dragging a card by its handle (HTML5 drag and drop), its arrow buttons or shift+arrow keys reorder the cards, and
// a new order sets the ranks 1..k from top to bottom. Rank fields are named by shown position (rank_0 = the first
// shown), so the submitted ranks do not depend on where a card sits in the page. Without JS the rank menus work alone.
(function () {
  "use strict";
  var saved = document.body.dataset.savedDraft;
  if (saved) { try { localStorage.removeItem(saved); } catch (e) { /* storage disabled */ } }

  var form = document.getElementById("judge");
  if (!form) { return; }
  var key = form.dataset.draftKey;
  var kind = form.dataset.kind;
  var k = parseInt(form.dataset.k, 10);
  var status = document.getElementById("draft-status");
  var hint = document.getElementById("hint");
  var timeInput = document.getElementById("time-spent");
  var skipReason = document.getElementById("skip-reason");
  var strengths = ["slightly_better", "better", "much_better"];
  var choices = ["A", "B", "tie", "both_bad"];
  var list = document.getElementById("ranking");
  var cards = Array.prototype.slice.call(form.querySelectorAll(".rank-card"));  // by shown position
  var selects = cards.map(function (c) { return c.querySelector("select.rank"); });
  var started = Date.now();
  var focus = 0;
  var draft = null;
  try { draft = JSON.parse(localStorage.getItem(key) || "null"); } catch (e) { draft = null; }
  var baseElapsed = (draft && draft.elapsed) || 0;

  function elapsed() { return baseElapsed + (Date.now() - started); }
  function radio(name, value) { return form.querySelector('input[name="' + name + '"][value="' + value + '"]'); }
  function checked(name) { var r = form.querySelector('input[name="' + name + '"]:checked'); return r ? r.value : null; }
  function setRadio(name, value) { var r = radio(name, value); if (r) { r.checked = true; } }

  // The cards in page order (focus is an index into it).
  function visual() { return list ? Array.prototype.slice.call(list.querySelectorAll(".rank-card")) : []; }
  function order() { return visual().map(function (c) { return parseInt(c.dataset.pos, 10); }); }

  function showFocus() {
    visual().forEach(function (c, i) {
      c.classList.toggle("focused", i === focus);
      var place = c.querySelector(".place");
      if (place) { place.textContent = "#" + (i + 1); }
    });
  }

  // Put the card at page index `to`; the new order sets the ranks (1 = top).
  function moveTo(card, to) {
    var now = visual();
    var from = now.indexOf(card);
    if (from < 0 || to < 0 || to >= now.length) { return; }
    if (to !== from) { list.insertBefore(card, to > from ? now[to].nextSibling : now[to]); }
    visual().forEach(function (c, i) { c.querySelector("select.rank").value = String(i + 1); });
    focus = to;
    showFocus();
    hint.textContent = "";
    status.textContent = "";
    save();
  }

  function setOrder(positions) {
    if (!list || !positions || positions.length !== k) { return; }
    positions.forEach(function (p) { if (cards[p]) { list.appendChild(cards[p]); } });
  }

  function save() {
    var d = { elapsed: elapsed(), focus: focus, skip_reason: skipReason ? skipReason.value : "" };
    if (kind === "pairwise") { d.choice = checked("choice"); d.strength = checked("strength"); }
    else { d.ranks = selects.map(function (s) { return s.value; }); d.order = order(); }
    try { localStorage.setItem(key, JSON.stringify(d)); } catch (e) { /* storage full or disabled */ }
  }

  function restore(d) {
    if (!d) { return; }
    var any = false;
    if (kind === "pairwise") {
      if (d.choice) { setRadio("choice", d.choice); any = true; }
      if (d.strength) { setRadio("strength", d.strength); }
    } else if (d.ranks) {
      d.ranks.forEach(function (v, i) { if (selects[i] && v) { selects[i].value = v; any = true; } });
      setOrder(d.order);
      focus = Math.min(d.focus || 0, k - 1);
    }
    if (skipReason && d.skip_reason) { skipReason.value = d.skip_reason; any = true; }
    if (any) { status.textContent = "Draft restored"; }
  }

  function ready() {
    if (kind === "pairwise") { return checked("choice") !== null; }
    return selects.every(function (s) { return s.value !== ""; });
  }

  function submit(buttonId) {
    timeInput.value = String(Math.round(elapsed()));
    save();
    var button = document.getElementById(buttonId);
    if (form.requestSubmit) { form.requestSubmit(button); } else { button.click(); }
  }

  restore(draft);
  Array.prototype.slice.call(form.querySelectorAll(".js-only")).forEach(function (el) { el.hidden = false; });
  showFocus();

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) { return; }
    var t = e.target;
    if (t && (t.tagName === "TEXTAREA" || (t.tagName === "INPUT" && t.type === "text"))) {
      if (e.key === "Enter") {
        e.preventDefault();
        submit(t === skipReason ? "skip-button" : "flag-button");
      }
      return;  // typing a reason: no shortcuts
    }
    var handled = true;
    if (e.key === "Enter") {
      if (ready()) { submit("submit"); }
      else { hint.textContent = kind === "pairwise" ? "Choose 1-4 first." : "Give every response a rank first."; }
    } else if (kind === "pairwise") {
      var n = "12345".indexOf(e.key);
      if (n >= 0 && n < 4) {
        setRadio("choice", choices[n]);
        if (!checked("strength")) { setRadio("strength", "better"); }
      } else if (n === 4) {
        skipReason.focus();
      } else if (e.key === " ") {
        var cur = strengths.indexOf(checked("strength"));
        setRadio("strength", strengths[(cur + 1) % strengths.length]);
      } else { handled = false; }
    } else {
      var r = parseInt(e.key, 10);
      var step = { ArrowUp: -1, ArrowLeft: -1, ArrowDown: 1, ArrowRight: 1 }[e.key];
      if (e.shiftKey && step) {
        moveTo(visual()[focus], focus + step);
      } else if (r >= 1 && r <= k) {
        visual()[focus].querySelector("select.rank").value = String(r);
        focus = (focus + 1) % k;
      } else if (e.key === " ") {
        focus = (focus + 1) % k;
      } else { handled = false; }
      showFocus();
    }
    if (handled) { e.preventDefault(); hint.textContent = ""; save(); }
  });

  var dragged = null;
  cards.forEach(function (c) {
    c.addEventListener("click", function () { focus = visual().indexOf(c); showFocus(); save(); });
    Array.prototype.slice.call(c.querySelectorAll("button.move")).forEach(function (b) {
      b.addEventListener("click", function (e) {
        e.stopPropagation();
        moveTo(c, visual().indexOf(c) + parseInt(b.dataset.step, 10));
      });
    });
    var handle = c.querySelector(".handle");
    if (handle) {
      handle.addEventListener("dragstart", function (e) {
        dragged = c;
        c.classList.add("dragging");
        e.dataTransfer.effectAllowed = "move";
        e.dataTransfer.setData("text/plain", c.dataset.pos);
        if (e.dataTransfer.setDragImage) { e.dataTransfer.setDragImage(c, 16, 16); }
      });
      handle.addEventListener("dragend", function () {
        dragged = null;
        cards.forEach(function (x) { x.classList.remove("dragging", "drag-over"); });
      });
    }
    c.addEventListener("dragover", function (e) {
      if (!dragged) { return; }
      e.preventDefault();  // allows the drop
      e.dataTransfer.dropEffect = "move";
      c.classList.add("drag-over");
    });
    c.addEventListener("dragleave", function () { c.classList.remove("drag-over"); });
    c.addEventListener("drop", function (e) {
      if (!dragged) { return; }
      e.preventDefault();
      c.classList.remove("drag-over");
      moveTo(dragged, visual().indexOf(c));  // the dragged card takes the drop target's place
    });
  });
  form.addEventListener("change", save);
  form.addEventListener("submit", function () { timeInput.value = String(Math.round(elapsed())); });
  window.addEventListener("pagehide", save);
})();
