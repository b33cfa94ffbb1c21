// cosfail on Flower's task page (added by `cosfail flower`, api/flower.py): which run
// and step a cosfail task is, and on a failed step a Retry button that resumes its run
// from that step (POST /cosfail/retry/<task id>), then shows the run's progress.
(function () {
  "use strict";
  var script = document.currentScript;
  var base = script ? script.src.replace(/\/cosfail\/retry\.js.*$/, "") : "";
  var match = window.location.pathname.match(/\/task\/([^/]+)$/);
  if (!match) return;
  var taskId = decodeURIComponent(match[1]);

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (body) {
          return { ok: r.ok, status: r.status, body: body };
        });
      });
  }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text) node.textContent = text;
    return node;
  }

  function render(task, step) {
    var actions = document.querySelector(".detail-actions") ||
      document.querySelector("header") || document.body;
    var box = el("div", { id: "cosfail-step", "class": "mt-2 w-100" });
    var note = el("p", { id: "cosfail-note", "class": "mb-1 small" });
    if (step.ok) {
      var s = step.body;
      note.appendChild(document.createTextNode(
        "cosfail " + s.workflow + " run " + s.run_id + ": step " + s.idx + " " + s.name +
        " on " + (s.node || "control") + ", " + s.state + " in the ledger · "));
      note.appendChild(el("a", { href: s.run_url, id: "cosfail-run-link" }, "the run's steps"));
    } else {
      note.textContent = (step.body && step.body.error) || "not a step in the cosfail ledger";
    }
    box.appendChild(note);

    var failed = task.state === "FAILURE" || (step.ok && step.body.state === "failed");
    if (failed) {
      var button = el("button", { id: "cosfail-retry", type: "button", "class": "btn btn-warning" },
        "Retry");
      if (step.ok && !step.body.retryable) {
        button.disabled = true;
        button.title = step.body.why_not;
      }
      var answer = el("div", { id: "cosfail-answer", "class": "small mt-1", role: "status" });
      button.addEventListener("click", function () {
        button.disabled = true;
        answer.textContent = "resuming the run…";
        fetch(base + "/cosfail/retry/" + encodeURIComponent(taskId), {
          method: "POST", credentials: "same-origin", headers: { Accept: "application/json" }
        }).then(function (r) {
          return r.json().catch(function () { return { error: r.statusText }; })
            .then(function (body) {
              if (r.ok) {
                answer.textContent = body.message;
                window.location.assign(body.run_url);
              } else {
                answer.className = "small mt-1 text-danger";
                answer.textContent = "Retry refused (" + r.status + "): " + body.error;
              }
            });
        }).catch(function (err) {
          answer.className = "small mt-1 text-danger";
          answer.textContent = "Retry failed: " + err;
        });
      });
      box.appendChild(button);
      box.appendChild(answer);
    }
    actions.appendChild(box);
  }

  var apiTask = getJSON(base + "/api/task/info/" + encodeURIComponent(taskId));
  apiTask.then(function (task) {
    var name = (task.ok && task.body.name) || "";
    if (name.indexOf("cosfail.") !== 0) return;
    getJSON(base + "/cosfail/step/" + encodeURIComponent(taskId)).then(function (step) {
      render(task.body, step);
    });
  });
})();
