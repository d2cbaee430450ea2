// One line on any web page adds the assistant as a chat bubble:
//   <script src="https://assistant.example.edu/widget.js" data-lang="zh" async></script>
// The bubble opens the students' page in a frame; the server allows the frame only on its --allow-origin sites.
(() => {
  "use strict";
  const me = document.currentScript;
  if (!me || window.__umtcdsWidget) return;
  window.__umtcdsWidget = true;
  const root = me.src.replace(/widget\.js(\?.*)?$/, "");
  const lang = me.dataset.lang ? `&lang=${encodeURIComponent(me.dataset.lang)}` : "";
  const title = me.dataset.title || "Chat";
  const button = document.createElement("button");
  button.type = "button";
  button.id = "umtcds-bubble";
  button.setAttribute("aria-label", title);
  button.title = title;
  const CHAT = '<svg viewBox="0 0 24 24" width="28" height="28" aria-hidden="true"><path fill="currentColor" ' +
    'd="M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H10l-5 4v-4H4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2z"/></svg>';
  const CLOSE = '<svg viewBox="0 0 24 24" width="24" height="24" aria-hidden="true"><path stroke="currentColor" ' +
    'stroke-width="2.5" stroke-linecap="round" d="M6 6l12 12M18 6L6 18"/></svg>';
  button.innerHTML = CHAT; // drawn, not an emoji: shows on machines without an emoji font
  Object.assign(button.style, {
    position: "fixed", right: "18px", bottom: "18px", width: "56px", height: "56px", borderRadius: "50%",
    border: "0", background: "#1f4e8c", color: "#fff", fontSize: "26px", cursor: "pointer", zIndex: "2147483646",
    boxShadow: "0 4px 14px rgba(0,0,0,.25)", display: "flex", alignItems: "center", justifyContent: "center",
  });
  const frame = document.createElement("iframe");
  frame.id = "umtcds-frame";
  frame.title = title;
  Object.assign(frame.style, {
    position: "fixed", right: "18px", bottom: "84px", width: "min(380px, calc(100vw - 24px))",
    height: "min(600px, calc(100vh - 110px))", border: "1px solid #ccd3de", borderRadius: "12px",
    background: "#fff", boxShadow: "0 8px 28px rgba(0,0,0,.25)", zIndex: "2147483647", display: "none",
  });
  button.addEventListener("click", () => {
    if (!frame.src) frame.src = `${root}?embed=1${lang}`; // loaded on first open: no cost to visitors who never ask
    const open = frame.style.display === "none";
    frame.style.display = open ? "block" : "none";
    button.innerHTML = open ? CLOSE : CHAT;
  });
  const add = () => document.body.append(frame, button);
  if (document.body) add(); else document.addEventListener("DOMContentLoaded", add);
})();
