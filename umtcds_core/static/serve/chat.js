// The students' page: ask, watch the answer stream in, rate it. Talks only to this server (no CDN, no cookies).
(() => {
  "use strict";
  const T = {
    zh: {
      name: "校园助手", welcome: "你好！我可以回答关于学校的问题，比如招生、图书馆和校园生活。",
      placeholder: "输入你的问题…", send: "发送", examples: "你可以问：",
      noAnswer: "抱歉，我没有找到这个问题的答案。可以换个问法，或直接联系学校的相关部门。",
      helpful: "这个回答有帮助吗？", up: "有帮助", down: "没帮助",
      fix: "正确答案是…（可选）", sendFix: "提交", thanks: "谢谢你的反馈！",
      sources: "来源：", network: "连接不上助手；请检查网络后再试。", failed: "出错了；请稍后再试。",
      cited: "回答引用了这个网页", matched: "回答未标注来源，但内容出自这个网页",
    },
    en: {
      name: "Campus assistant", welcome: "Hi! Ask me about the university — admissions, the library, campus life.",
      placeholder: "Type your question…", send: "Send", examples: "You could ask:",
      noAnswer: "Sorry, I have no answer to that. Try asking another way, or contact the university office directly.",
      helpful: "Was this helpful?", up: "Helpful", down: "Not helpful",
      fix: "The right answer is… (optional)", sendFix: "Send", thanks: "Thanks for your feedback!",
      sources: "Sources:", network: "Cannot reach the assistant; check the connection and try again.",
      failed: "Something went wrong; please try again later.",
      cited: "cited by the answer", matched: "not cited, but the answer's words are on this page",
    },
  };
  const $ = (id) => document.getElementById(id);
  const THUMB = '<svg viewBox="0 0 24 24" width="18" height="18" aria-hidden="true"><path fill="currentColor" ' +
    'd="M2 10h4v11H2zM8 10l4-8c1.7 0 3 1.3 3 3v4h5.5c1.1 0 2 1 1.8 2.1l-1.6 8.2c-.2.9-1 1.7-2 1.7H8z"/></svg>';
  const params = new URLSearchParams(location.search);
  const stored = (() => { try { return localStorage.getItem("umtcds-lang"); } catch (e) { return null; } })();
  let lang = params.get("lang") || stored || ((navigator.language || "").toLowerCase().startsWith("zh") ? "zh" : "en");
  if (!T[lang]) lang = "en";
  let cfg = { name: null, welcome: null, examples: [] };
  const history = [];
  let busy = false;
  const t = (key) => T[lang][key];

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function render() {
    document.documentElement.lang = lang;
    const name = cfg.name || t("name");
    $("name").textContent = name;
    document.title = name;
    $("welcome").textContent = cfg.welcome || t("welcome");
    $("question").placeholder = t("placeholder");
    $("send").textContent = t("send");
    for (const b of document.querySelectorAll(".lang button")) b.classList.toggle("on", b.dataset.lang === lang);
    const box = $("examples");
    box.replaceChildren();
    for (const q of cfg.examples || []) {
      const b = el("button", "", q);
      b.type = "button";
      b.addEventListener("click", () => ask(q));
      box.appendChild(b);
    }
  }

  function scroll() { const log = $("log"); log.scrollTop = log.scrollHeight; }

  function errorText(body) {
    const e = (body && body.error) || body || {};
    return (lang === "zh" ? e.message_zh : null) || e.message || t("failed");
  }

  async function ask(question) {
    question = (question || "").trim();
    if (!question || busy) return;
    busy = true;
    $("send").disabled = true;
    $("question").value = "";
    const user = el("div", "msg user");
    user.appendChild(el("div", "bubble", question));
    $("log").appendChild(user);
    const row = el("div", "msg bot answer");
    const col = el("div", "col");
    const bubble = el("div", "bubble streaming", "");
    col.appendChild(bubble);
    row.appendChild(col);
    $("log").appendChild(row);
    scroll();
    const sent = [...history, { role: "user", content: question }];
    let text = "";
    let done = null;
    let failure = null;
    try {
      const resp = await fetch("page/chat", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ messages: sent }),
      });
      if (!resp.ok) {
        let body = null;
        try { body = await resp.json(); } catch (e) { /* not JSON */ }
        failure = errorText(body);
      } else {
        const reader = resp.body.getReader();
        const dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done: end } = await reader.read();
          if (end) break;
          buf += dec.decode(value, { stream: true });
          let cut;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            const event = buf.slice(0, cut);
            buf = buf.slice(cut + 2);
            for (const line of event.split("\n")) {
              if (!line.startsWith("data: ")) continue;
              const ev = JSON.parse(line.slice(6));
              if (ev.type === "delta") { text += ev.text; bubble.textContent = text; scroll(); }
              else if (ev.type === "done") done = ev;
              else if (ev.type === "error") failure = lang === "zh" ? ev.message_zh : ev.message;
            }
          }
        }
      }
    } catch (e) {
      failure = t("network");
    }
    bubble.classList.remove("streaming");
    if (done) {
      text = done.text;
      bubble.textContent = text || t("noAnswer");
      if (done.no_answer) {
        if (text) col.appendChild(el("div", "note", t("noAnswer")));
        row.classList.add("no-answer");
      }
      addSources(col, done.sources || []);
      addRating(col, done.answer_id, question, text);
      history.push({ role: "user", content: question }, { role: "assistant", content: text });
    } else {
      if (!text) bubble.remove();
      col.appendChild(el("div", "note error", failure || t("failed")));
    }
    row.classList.add("complete");
    busy = false;
    $("send").disabled = false;
    scroll();
  }

  function addSources(col, sources) {
    if (!sources.length) return;
    const box = el("div", "sources", t("sources") + " ");
    sources.forEach((s, i) => {
      // ✓ the answer cites this page, ≈ it cites none but its words are on this page (the server marks them)
      const mark = s.cited ? " ✓" : s.matched ? " ≈" : "";
      const a = el("a", "", `[${s.n || i + 1}] ${s.title || s.url}${mark}`);
      a.href = s.url; a.target = "_blank"; a.rel = "noopener";
      if (mark) a.title = t(s.cited ? "cited" : "matched");
      box.appendChild(a);
      box.appendChild(document.createTextNode(" "));
    });
    col.appendChild(box);
  }

  function addRating(col, answerId, question, answer) {
    const bar = el("div", "rate");
    bar.appendChild(el("span", "", t("helpful")));
    const up = el("button", "up");
    const down = el("button", "down");
    up.innerHTML = THUMB; // drawn here, not an emoji: phones and PCs without an emoji font show it too
    down.innerHTML = THUMB.replace("<svg ", '<svg style="transform:rotate(180deg)" ');
    up.type = down.type = "button";
    up.title = `👍 ${t("up")}`; down.title = `👎 ${t("down")}`;
    up.setAttribute("aria-label", up.title); down.setAttribute("aria-label", down.title);
    bar.append(up, down);
    col.appendChild(bar);
    const send = async (rating, correction) => {
      up.disabled = down.disabled = true;
      const body = { answer_id: answerId, rating, correction: correction || null, question, answer, lang };
      let note;
      try {
        const resp = await fetch("v1/feedback", {
          method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
        });
        note = resp.ok ? el("div", "note thanks", t("thanks")) : el("div", "note error", errorText(await resp.json()));
      } catch (e) {
        note = el("div", "note error", t("network"));
      }
      const fix = col.querySelector(".fix");
      if (fix) fix.remove();
      col.appendChild(note);
      scroll();
    };
    up.addEventListener("click", () => send("up"));
    down.addEventListener("click", () => {
      if (col.querySelector(".fix")) return;
      const fix = el("div", "fix");
      const box = el("textarea");
      box.placeholder = t("fix");
      box.maxLength = 4000;
      const go = el("button", "primary", t("sendFix"));
      go.type = "button";
      go.addEventListener("click", () => send("down", box.value.trim()));
      fix.append(box, go);
      col.appendChild(fix);
      box.focus();
      scroll();
    });
  }

  for (const b of document.querySelectorAll(".lang button")) {
    b.addEventListener("click", () => {
      lang = b.dataset.lang;
      try { localStorage.setItem("umtcds-lang", lang); } catch (e) { /* private mode */ }
      render();
    });
  }
  $("ask").addEventListener("submit", (e) => { e.preventDefault(); ask($("question").value); });
  $("question").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); ask($("question").value); }
  });
  render();
  fetch("page.json").then((r) => r.json()).then((c) => { cfg = c; render(); document.body.dataset.ready = "1"; })
    .catch(() => { document.body.dataset.ready = "1"; });
})();
