// Zoom and pan of the result page's evidence image: the SVG's viewBox is the visible part of the
// image in image pixels, so the image and its cell boxes move together. Wheel or +/- buttons zoom
// (about the pointer for the wheel), dragging pans, Fit shows the whole image again.
(function () {
  "use strict";
  var svg = document.getElementById("evidence-svg");
  if (!svg) { return; }
  var W = Number(svg.getAttribute("data-width")), H = Number(svg.getAttribute("data-height"));
  if (!(W > 0 && H > 0)) { return; }
  var MAX_ZOOM = 32;
  var box = { x: 0, y: 0, w: W, h: H };

  function apply() {
    // keep the view inside the image and no larger than it
    box.w = Math.min(W, Math.max(W / MAX_ZOOM, box.w));
    box.h = box.w * H / W;
    box.x = Math.min(W - box.w, Math.max(0, box.x));
    box.y = Math.min(H - box.h, Math.max(0, box.y));
    svg.setAttribute("viewBox", [box.x, box.y, box.w, box.h].join(" "));
  }

  function zoom(factor, cx, cy) {
    // (cx, cy): the image point that stays under the pointer
    var w = box.w / factor;
    box.x = cx - (cx - box.x) * (w / box.w);
    box.y = cy - (cy - box.y) * (w / box.w);
    box.w = w;
    apply();
  }

  function toImage(evt) {
    var r = svg.getBoundingClientRect();
    return { x: box.x + (evt.clientX - r.left) / r.width * box.w, y: box.y + (evt.clientY - r.top) / r.height * box.h };
  }

  svg.addEventListener("wheel", function (evt) {
    evt.preventDefault();
    var p = toImage(evt);
    zoom(evt.deltaY < 0 ? 1.25 : 0.8, p.x, p.y);
  }, { passive: false });

  var drag = null, dragged = false;
  svg.addEventListener("pointerdown", function (evt) {
    drag = { x: evt.clientX, y: evt.clientY, bx: box.x, by: box.y };
    dragged = false;
  });
  svg.addEventListener("pointermove", function (evt) {
    if (!drag) { return; }
    var r = svg.getBoundingClientRect();
    var dx = evt.clientX - drag.x, dy = evt.clientY - drag.y;
    if (!dragged && Math.abs(dx) + Math.abs(dy) > 3) {
      dragged = true;
      svg.classList.add("dragging");
      svg.setPointerCapture(evt.pointerId);
    }
    if (!dragged) { return; }
    box.x = drag.bx - dx / r.width * box.w;
    box.y = drag.by - dy / r.height * box.h;
    apply();
  });
  function end() { drag = null; svg.classList.remove("dragging"); }
  svg.addEventListener("pointerup", end);
  svg.addEventListener("pointercancel", end);
  // a drag that ends over a cell's box is not a click on it
  svg.addEventListener("click", function (evt) {
    if (dragged) { evt.preventDefault(); evt.stopPropagation(); dragged = false; }
  }, true);

  function centre() { return { x: box.x + box.w / 2, y: box.y + box.h / 2 }; }
  document.getElementById("zoom-in").addEventListener("click", function () { var c = centre(); zoom(1.5, c.x, c.y); });
  document.getElementById("zoom-out").addEventListener("click", function () { var c = centre(); zoom(1 / 1.5, c.x, c.y); });
  document.getElementById("zoom-fit").addEventListener("click", function () { box = { x: 0, y: 0, w: W, h: H }; apply(); });
})();
