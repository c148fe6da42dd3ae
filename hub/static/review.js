// Keyboard for the review queue and the review panel; without it every control is a plain form.
// Queue (#review-queue): j / k move the selection, Enter opens it. Panel (#review-panel):
// c confirm, r then a digit reclassify as that label, Escape cancels, s sign, n next in the queue.
// Keys typed into a field, or with Ctrl / Alt / Meta, are left alone.
(function () {
  "use strict";

  function typing(event) {
    const t = event.target;
    return (
      event.ctrlKey || event.altKey || event.metaKey ||
      (t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName)))
    );
  }
  function press(id) {
    const button = document.getElementById(id);
    if (button && !button.disabled) {
      button.form.requestSubmit(button);
      return true;
    }
    return false;
  }

  const queue = document.getElementById("review-queue");
  const rows = queue ? Array.from(queue.querySelectorAll("tr.qrow")) : [];
  let selected = -1;
  function select(index) {
    if (!rows.length) return;
    selected = Math.max(0, Math.min(rows.length - 1, index));
    rows.forEach((tr, i) => tr.classList.toggle("selected", i === selected));
    rows[selected].scrollIntoView({ block: "nearest" });
  }
  rows.forEach((tr, i) => {
    tr.addEventListener("click", (event) => {
      if (event.target.closest("a")) return;
      select(i);
      window.location.assign(tr.dataset.href);
    });
  });

  const panel = document.getElementById("review-panel");
  const canReview = panel && panel.dataset.canReview === "yes";
  const reclassify = document.getElementById("review-reclassify-form");
  let choosing = false;
  function setChoosing(on) {
    choosing = on && !!reclassify;
    if (reclassify) reclassify.classList.toggle("choosing", choosing);
  }

  document.addEventListener("keydown", (event) => {
    if (typing(event)) return;
    const key = event.key;
    if (rows.length && !panel) {
      if (key === "j") select(selected + 1);
      else if (key === "k") select(selected - 1);
      else if (key === "Enter" && selected >= 0) window.location.assign(rows[selected].dataset.href);
      else return;
      event.preventDefault();
      return;
    }
    if (!panel) return;
    if (choosing) {
      if (key === "Escape") setChoosing(false);
      else if (/^[1-9]$/.test(key)) {
        const radio = reclassify.querySelector('input[type=radio][data-key="' + key + '"]');
        if (radio && !radio.disabled) {
          radio.checked = true;
          setChoosing(false);
          reclassify.requestSubmit(document.getElementById("review-reclassify"));
        }
      } else return;
      event.preventDefault();
      return;
    }
    if (key === "n" && panel.dataset.nextUrl) {
      window.location.assign(panel.dataset.nextUrl);
    } else if (canReview && key === "c") {
      if (!press("review-confirm")) return;
    } else if (canReview && key === "s") {
      if (!press("review-sign")) return;
    } else if (canReview && key === "r" && reclassify) {
      setChoosing(true);
      reclassify.scrollIntoView({ block: "nearest" });
    } else return;
    event.preventDefault();
  });
})();
