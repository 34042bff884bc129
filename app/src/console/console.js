// The live view: new history rows arrive as Server-Sent Events and are put on top.
(function () {
  "use strict";
  var table = document.getElementById("live");
  if (!table || !window.EventSource) { return; }
  var body = table.tBodies[0];
  var labels = {
    kind: { payment: "消込 payment", cancellation: "取消 cancellation", preliminary: "速報 preliminary",
            confirmed: "確報 confirmed", preliminary_cancel: "速報取消 preliminary cancel" },
    status: { paid: "収納済 paid", cancelled: "取消済 cancelled", open: "未確定 open", closed: "確定済 closed", recorded: "記録 recorded" },
    channel: { counter: "窓口 counter", atm: "ATM", internet_banking: "インターネットバンキング internet banking",
               telephone_banking: "テレフォンバンキング telephone banking" }
  };
  function yen(n) { return "¥" + String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ","); }
  function jst(us) {
    if (!us) { return ""; }
    var d = new Date(us / 1000 + 9 * 3600 * 1000);
    function p(n) { return (n < 10 ? "0" : "") + n; }
    return d.getUTCFullYear() + "-" + p(d.getUTCMonth() + 1) + "-" + p(d.getUTCDate()) + " " +
      p(d.getUTCHours()) + ":" + p(d.getUTCMinutes()) + ":" + p(d.getUTCSeconds());
  }
  function cell(tr, cls, text) { var td = document.createElement("td"); td.className = cls; td.textContent = text; tr.appendChild(td); }
  var source = new EventSource("/api/v1/live");
  source.addEventListener("payment", function (e) {
    var p = JSON.parse(e.data);
    if (body.querySelector('tr[data-id="' + CSS.escape(p.notification_id) + '"]')) { return; }
    var tr = document.createElement("tr");
    tr.className = "payment fresh";
    tr.setAttribute("data-id", p.notification_id);
    cell(tr, "paid-at", jst(p.paid_at_us));
    cell(tr, "institution", p.institution);
    cell(tr, "kind", labels.kind[p.kind] || p.kind);
    cell(tr, "status", labels.status[p.status] || p.status);
    cell(tr, "customer_number", p.customer_number);
    cell(tr, "amount", yen(p.amount));
    cell(tr, "channel", labels.channel[p.channel] || p.channel);
    var td = document.createElement("td");
    var a = document.createElement("a");
    a.className = "detail";
    a.href = "/payments/" + encodeURIComponent(p.notification_id);
    a.textContent = "詳細 Detail";
    td.appendChild(a);
    tr.appendChild(td);
    body.insertBefore(tr, body.firstChild);
    while (body.rows.length > 200) { body.deleteRow(body.rows.length - 1); }
  });
}());
