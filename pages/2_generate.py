"""Step 2 — clean the crawled pages and generate Q&A pairs with an LLM (a background ``umtcds generate`` job).

A thin view over :mod:`umtcds_core.qa`: labels, help and defaults come from its schema (:data:`GENERATE`); Start saves
the settings as ``settings.yaml`` in the job folder and runs ``umtcds generate --config <that file>`` (the API key
travels only in the job's environment, never in a file). Coming back while a job runs shows that job's settings, read
from its file; "Retry failed pages" reruns the failed job's own settings. For a local model on a CPU the page suggests
a few pages and short replies and says how long they will take, from a tokens/s measured on this machine.
"""

from __future__ import annotations

from datetime import timedelta

import streamlit as st

from umtcds_core import ui, ui_fields
from umtcds_core.errors import UserError
from umtcds_core.i18n import error_text, tr
from umtcds_core.jobs import latest_job, running_job
from umtcds_core.llm import BACKENDS, DEFAULT_KEY_ENV, DEFAULT_MODELS, RetryPolicy, make_backend, ping
from umtcds_core.models import EMBEDDED
from umtcds_core.qa import (
    CPU_BATCH,
    CPU_MAX_PAGES,
    CPU_MAX_TOKENS,
    CPU_PAGES_PER_MIN,
    CPU_PAIRS,
    GENERATE,
    PROMPTS_FILE,
    dump_prompts,
    estimate_seconds,
    has_gpu,
    load_prompts,
    load_results,
    load_speed,
    measure_speed,
    needs_key,
    prompts_from_yaml,
    read_pages,
    resolved_max_tokens,
)
from umtcds_core.secrets import get_secret, mask

ws = ui.require_workspace()
ui.page_header("generate")
st.caption(
    tr(
        "用大模型把抓取的网页清洗并转成问答对：智谱 API、任何 OpenAI 兼容服务（vLLM、Ollama、DeepSeek…）或本地模型。",
        "Turn the crawled pages into question-answer pairs with an LLM: Zhipu's API, any OpenAI-compatible server "
        "(vLLM, Ollama, DeepSeek…) or a local model.",
    )
)

try:
    pages = read_pages(ws.pages_dir) if ws.pages_dir.exists() else []
except UserError:
    pages = []
page_names = [p.rel for p in pages]
if not pages:
    st.info(
        tr(
            "还没有网页：请先完成第 1 步（抓取），或把 .txt 文件放进 ",
            "No pages yet: run step 1 (crawl) first, or put .txt files into ",
        )
        + f"`{ws.pages_dir}`"
    )


def _label(name: str) -> str:
    return tr(*GENERATE[name].label)


def _help(name: str) -> str | None:
    return tr(*GENERATE[name].help) if GENERATE[name].help else None


def _job_values(job) -> dict | None:
    """The settings a job was started with (its settings.yaml); None for a job started with flags only."""
    if job is None or not job.settings_file.exists():
        return None
    try:
        return GENERATE.load_yaml(job.settings_file)
    except UserError:
        return None


def _backend_defaults(backend: str) -> dict:
    """What a backend starts with on this page: remote APIs clean first and reply at length; a local model on a CPU
    gets a few pages and short replies (every page at 1,024 tokens took half an hour there)."""
    cpu = backend == "local" and not has_gpu()
    return {
        "clean": backend != "local",
        "max_tokens": resolved_max_tokens({"backend": backend}),
        "max_pages": CPU_MAX_PAGES if cpu else 0,
    }


# settings drawn straight from their declarations in GenerateSettings (label, help, choices come from there); a bare
# string here would be shown on the page by Streamlit's "magic"
EXTRA_FIELDS = ("unanswerable", "paraphrase", "pii", "pii_names")


def _seed(values: dict, force: bool) -> None:
    """Put ``values`` into the widgets (all of them when ``force``: a running job's settings replace what is shown)."""
    b = values["backend"]
    shown = {
        "gen_backend": b,
        "gen_model": values.get("model") or "",
        "gen_base_url": values.get("base_url") or "",
        "gen_key_env": values.get("api_key_env") or "",
        "gen_pairs": values["pairs_per_page"],
        "gen_concurrency": values["concurrency"],
        "gen_batch_size": values.get("batch_size") or 0,
        "gen_lang": values["lang"],
        f"gen_clean_{b}": values["clean"] if values.get("clean") is not None else b != "local",
        f"gen_max_tokens_{b}": resolved_max_tokens(values),
        f"gen_max_pages_{b}": values.get("max_pages") or 0,
        "gen_pages": [p for p in values.get("pages") or [] if p in page_names],
        "gen_judge": values["judge"],
        "gen_threshold": values["judge_threshold"],
        **{f"gen_{name}": values[name] for name in EXTRA_FIELDS},
    }
    for key, value in shown.items():
        if force or key not in st.session_state:
            st.session_state[key] = value


active = running_job(ws, "generate")
latest = latest_job(ws, "generate")
running_values = _job_values(active)
if running_values is not None and st.session_state.get("gen_shown_job") != active.id:
    _seed(running_values, force=True)  # show what runs, not this page's defaults
    st.session_state["gen_shown_job"] = active.id
else:  # a first visit: the last job's settings, else the defaults (the cloud API first: it is fast on any machine)
    _seed(_job_values(latest) or GENERATE.merge({"backend": "zhipuai"}), force=False)
locked = active is not None
if running_values is not None:
    st.info(
        tr(
            "生成任务正在运行：下面显示的是它的设置（只读），任务结束后可以修改。",
            "A generate job is running: these are its settings (read-only); change them once it has finished.",
        )
    )

# ---- backend -------------------------------------------------------------------------------------------------------
labels = {
    "zhipuai": tr("智谱 GLM（云端 API）", "Zhipu GLM (cloud API)"),
    "openai": tr("OpenAI 兼容服务", "OpenAI-compatible server"),
    "local": tr("本地模型", "Local model"),
}
backend = st.radio(
    _label("backend"), BACKENDS, format_func=labels.get, horizontal=True, key="gen_backend", disabled=locked
)
for name, value in _backend_defaults(backend).items():
    st.session_state.setdefault(f"gen_{name}_{backend}", value)
cpu_local = backend == "local" and not has_gpu()
if cpu_local and not locked and not st.session_state.get("gen_cpu_sized"):
    # Once, on picking the local model on a CPU: fewer pairs (each reply stops once it holds them) and a small batch,
    # unless the user already changed them from the generic defaults.
    st.session_state["gen_cpu_sized"] = True
    if st.session_state.get("gen_pairs") == GENERATE["pairs_per_page"].default:
        st.session_state["gen_pairs"] = CPU_PAIRS
    if not st.session_state.get("gen_batch_size"):
        st.session_state["gen_batch_size"] = CPU_BATCH
c1, c2 = st.columns(2)
model = c1.text_input(
    _label("model"),
    placeholder=DEFAULT_MODELS[backend]
    or tr("服务端的模型名（留空用第一个）", "served model name (empty: the first one)"),
    help=_help("model"),
    key="gen_model",
    disabled=locked,
).strip()
if backend == "local" and (model or DEFAULT_MODELS["local"]) in EMBEDDED:
    st.info(
        ui.embedded_model_note(model or DEFAULT_MODELS["local"])
    )  # a 135M model writes few usable pairs: say what it is for, once
base_url = ""
key_env = ""
typed_key = ""
found = None
if backend != "local":
    base_url = c2.text_input(
        _label("base_url"),
        placeholder="https://open.bigmodel.cn/api/paas/v4" if backend == "zhipuai" else "http://127.0.0.1:8000/v1",
        key="gen_base_url",
        disabled=locked,
    ).strip()
    k1, k2 = st.columns(2)
    key_env = (
        k1.text_input(
            _label("api_key_env"), placeholder=DEFAULT_KEY_ENV[backend], key="gen_key_env", disabled=locked
        ).strip()
        or DEFAULT_KEY_ENV[backend]
    )
    found = get_secret(key_env)
    typed_key = k2.text_input(
        tr("API 密钥", "API key"),
        type="password",
        placeholder=mask(found) if found else "",
        help=tr(
            "只保存在本次会话内存中，通过环境变量交给任务，不写入任何文件。",
            "Kept in this session's memory only and handed to the job through its environment, never written to a file.",
        ),
        key="gen_api_key",
    ).strip()
    if typed_key:
        st.caption(tr("使用输入的密钥 ", "Using the typed key ") + f"`{mask(typed_key)}`")
    elif found:
        st.caption(
            tr("使用环境变量或 secrets.toml 中的 ", "Using the key from the environment or secrets.toml: ")
            + f"`{key_env}` = `{mask(found)}`"
        )
    else:
        st.warning(
            tr(
                f"没有找到密钥：请在上面输入，或设置环境变量 {key_env}，或写入 .streamlit/secrets.toml。",
                f"No key found: type it above, set {key_env}, or put it in .streamlit/secrets.toml.",
            )
        )

if st.button(tr("测试连接", "Test connection"), key="gen_test"):
    try:
        if backend == "local":
            from umtcds_core.models import resolve

            spec = resolve(model or DEFAULT_MODELS["local"])
            st.success(tr("找到本地模型：", "Local model found: ") + spec.display_name)
        else:
            client = make_backend(
                backend,
                model or None,
                base_url or None,
                key_env,
                api_key=typed_key or None,
                timeout=20,
                retry=RetryPolicy(max_attempts=2, base_delay=0.5),
            )
            try:
                reply, seconds = ping(client)
            finally:
                client.close()
            st.success(tr("连接成功", "Connected") + f" · {client.model} · {seconds:.1f} s · “{reply[:60]}”")
    except UserError as exc:
        st.error(error_text(exc))

# ---- generation settings -------------------------------------------------------------------------------------------
s1, s2, s3, s4 = st.columns(4)
field = GENERATE.by_name
pairs = ui_fields.widget(field["pairs_per_page"], s1, "gen_pairs", disabled=locked)
if backend == "local":
    batch_size = ui_fields.widget(field["batch_size"], s2, "gen_batch_size", disabled=locked)
    concurrency = GENERATE["concurrency"].default
else:
    concurrency = ui_fields.widget(field["concurrency"], s2, "gen_concurrency", disabled=locked)
    batch_size = None
lang = s3.selectbox(
    _label("lang"),
    list(GENERATE["lang"].choices),
    format_func={"auto": tr("自动（按网页）", "auto (per page)"), "zh": "中文", "en": "English"}.get,
    key="gen_lang",
    disabled=locked,
)
clean = s4.toggle(_label("clean"), key=f"gen_clean_{backend}", help=_help("clean"), disabled=locked)
max_tokens = ui_fields.widget(field["max_tokens"], s4, f"gen_max_tokens_{backend}", disabled=locked)
if cpu_local and CPU_PAGES_PER_MIN:
    demo_min = 22 / CPU_PAGES_PER_MIN
    st.caption(
        tr(
            f"CPU 建议设置：每页 {CPU_PAIRS} 个问答对、批大小 {CPU_BATCH}、回复最多 {CPU_MAX_TOKENS} "
            f"token，写满问答对即停止。22 个网页的演示网站预计约 {demo_min:.0f} 分钟"
            f"（本项目的 2 核测试机实测每分钟 {CPU_PAGES_PER_MIN:.1f} 个网页）。",
            f"CPU settings: {CPU_PAIRS} pairs per page, batch {CPU_BATCH}, replies up to "
            f"{CPU_MAX_TOKENS} tokens, each stopping once its pairs are complete. Expect about "
            f"{demo_min:.0f} minutes for the 22-page demo site ({CPU_PAGES_PER_MIN:.1f} pages/min measured on this "
            "project's 2-core test machine).",
        )
    )
j1, j2 = st.columns(2)
judge = ui_fields.widget(field["judge"], j1, "gen_judge", disabled=locked)
threshold = j2.slider(_label("judge_threshold"), 1, 5, key="gen_threshold", disabled=locked or not judge)

e = st.columns(len(EXTRA_FIELDS))
extra = {
    name: ui_fields.widget(field[name], e[i], f"gen_{name}", disabled=locked) for i, name in enumerate(EXTRA_FIELDS)
}

# ---- which pages ---------------------------------------------------------------------------------------------------
p1, p2 = st.columns([3, 1])
chosen_pages = p1.multiselect(
    tr("只处理这些网页（留空 = 全部）", "Only these pages (empty = all)"),
    page_names,
    key="gen_pages",
    disabled=locked,
    placeholder=tr("全部网页", "All pages"),
)
max_pages = p2.number_input(
    tr("最多处理网页数（0 = 全部）", "At most N pages (0 = all)"),
    min_value=0,
    step=1,
    key=f"gen_max_pages_{backend}",
    help=tr(
        "按顺序处理还没做过的网页中的前 N 个；在 CPU 上先用少量网页试一试。",
        "The first N of the pages still to do, in order; on a CPU try a few pages first.",
    ),
    disabled=locked,
)

# ---- prompt editor -------------------------------------------------------------------------------------------------
prompt_path = ws.qa_dir / PROMPTS_FILE
with st.expander(tr("提示词模板（可编辑）", "Prompt templates (editable)")):
    current = prompt_path.read_text(encoding="utf-8") if prompt_path.exists() else dump_prompts(load_prompts())
    edited = st.text_area(
        tr(
            "YAML：`zh` / `en` 下的各个模板，占位符 `{text}` `{n}` `{title}`",
            "YAML: templates under zh / en; placeholders {text} {n} {title}",
        ),
        value=current,
        height=360,
        key="gen_prompts",
    )
    b1, b2 = st.columns(2)
    if b1.button(tr("保存提示词", "Save prompts"), key="gen_save_prompts"):
        try:
            prompts_from_yaml(edited, where=tr("提示词", "The prompts"))
        except UserError as exc:
            st.error(error_text(exc))
        else:
            from umtcds_core.fileio import write_text_atomic

            write_text_atomic(prompt_path, edited)
            st.success(tr("已保存到 ", "Saved to ") + f"`{prompt_path}`")
    if b2.button(tr("恢复默认", "Reset to defaults"), key="gen_reset_prompts"):
        ws.remove(prompt_path)
        st.session_state.pop("gen_prompts", None)
        st.rerun()

values = {
    "in_dir": str(ws.pages_dir),
    "out_dir": str(ws.qa_dir),
    "backend": backend,
    "model": model or None,
    "base_url": base_url or None,
    "api_key_env": key_env if backend != "local" and key_env != DEFAULT_KEY_ENV.get(backend) else None,
    "pairs_per_page": pairs,
    "concurrency": concurrency,
    "batch_size": batch_size or None,
    "clean": clean,
    "lang": lang,
    "max_tokens": max_tokens,
    "judge": judge,
    "judge_threshold": threshold,
    **extra,
    "prompt_file": str(prompt_path) if prompt_path.exists() else None,
    "pages": chosen_pages or None,
    "max_pages": int(max_pages) or None,
}


def _key_problem(settings: dict) -> str | None:
    """Why a job with these settings cannot start for want of an API key (None: it can)."""
    if not needs_key(settings):
        return None
    env = settings.get("api_key_env") or DEFAULT_KEY_ENV[settings["backend"]]
    if typed_key or get_secret(env):
        return None
    return tr(
        f"无法开始：{labels[settings['backend']]}需要 API 密钥。请在上面输入密钥，或设置环境变量 {env}"
        "（也可以写入 .streamlit/secrets.toml）。",
        f"Cannot start: {labels[settings['backend']]} needs an API key. Type it above, or set {env} "
        "(or put it in .streamlit/secrets.toml).",
    )


def _env(settings: dict) -> dict[str, str]:
    """The typed key for the job, only through its environment (never argv or a file)."""
    if typed_key and settings["backend"] != "local":
        return {settings.get("api_key_env") or DEFAULT_KEY_ENV[settings["backend"]]: typed_key}
    return {}


# ---- how long: local models only, from a tokens/s measured here ----------------------------------------------------
if backend == "local" and pages and not locked:
    model_name = model or DEFAULT_MODELS["local"]
    device = "gpu" if has_gpu() else "cpu"
    speeds = st.session_state.setdefault("gen_speeds", {})
    rate = load_speed(ws.qa_dir, model_name, device) or speeds.get((model_name, device))
    n = len(chosen_pages or page_names)
    if max_pages:
        n = min(n, int(max_pages))
    e1, e2 = st.columns([3, 1])
    if rate:
        seconds = estimate_seconds(n, values, rate)
        e1.info(
            tr(
                f"预计最多约 {timedelta(seconds=int(seconds))}：{n} 个网页 × 每次最多 {max_tokens} token，"
                f"按本机实测 {rate:.1f} token/s（{'GPU' if device == 'gpu' else 'CPU'}）。",
                f"Expect up to about {timedelta(seconds=int(seconds))}: {n} pages × up to {max_tokens} tokens each, "
                f"at {rate:.1f} tokens/s measured on this machine ({device.upper()}).",
            )
        )
    else:
        e1.caption(
            tr(
                "还不知道本机生成有多快：点“测量速度”（几秒到几十秒），或先用少量网页试一次。",
                "How fast this machine generates is not known yet: press “Measure speed” (seconds to a minute), or "
                "try a few pages first.",
            )
        )
    if e2.button(tr("测量速度", "Measure speed"), key="gen_measure"):
        with st.spinner(tr("正在用本地模型生成一小批…", "Generating one small batch with the local model…")):
            try:
                speeds[(model_name, device)] = measure_speed(model_name, batch_size=batch_size or None)
            except UserError as exc:
                st.error(error_text(exc))
            else:
                st.rerun()

why_not = _key_problem(values)
if why_not:
    st.warning(why_not)
if st.button(
    tr("开始生成", "Start generating"),
    type="primary",
    disabled=locked or not pages or why_not is not None,
    key="gen_start",
):
    try:
        checked = GENERATE.check(values)
    except UserError as exc:
        st.error(error_text(exc))
    else:
        ui.start_step(ws, "generate", [], env=_env(checked), settings=GENERATE.to_yaml(checked))
        st.rerun()
if latest is not None and latest.settings_file.exists():
    st.caption(tr("等价的命令行：", "Same as running: ") + f"`umtcds generate --config {latest.settings_file}`")

ui.job_panel(ws, "generate")

# ---- results -------------------------------------------------------------------------------------------------------
pairs_list, failures, bad = load_results(ws.qa_dir)
for b in bad[:3]:
    st.warning(tr("无法读取的行：", "Unreadable line: ") + str(b))
if pairs_list or failures:
    st.subheader(tr("结果", "Results"))
    m1, m2, m3 = st.columns(3)
    m1.metric(tr("问答对", "Pairs"), len(pairs_list))
    m2.metric(tr("有问答的网页", "Pages with pairs"), len({p.get("file") for p in pairs_list}))
    m3.metric(tr("失败的网页", "Failed pages"), len(failures))

if pairs_list:
    by_file: dict[str, list[dict]] = {}
    for p in pairs_list:
        by_file.setdefault(p.get("file", "?"), []).append(p)
    files = sorted(by_file)
    chosen = st.selectbox(
        tr("预览网页", "Preview page"),
        files,
        format_func=lambda f: f"{f} ({len(by_file[f])})",
        key="gen_preview_file",
    )
    left, right = st.columns(2)
    with left:
        st.markdown(tr("**问答对**", "**Pairs**"))
        for p in by_file[chosen]:
            score = f" · ★{p['judge_score']}" if p.get("judge_score") else ""
            st.markdown(f"**Q:** {p['question']}\n\n**A:** {p['answer']}")
            st.caption(
                f"{tr('依据度', 'grounding')} {p.get('grounding') if p.get('grounding') is not None else '—'}{score}"
            )
    with right:
        st.markdown(tr("**原网页**", "**Source page**") + f" — {by_file[chosen][0].get('source', '')}")
        page_file = ws.pages_dir / chosen
        text = page_file.read_text(encoding="utf-8", errors="replace") if page_file.exists() else ""
        # st.code, not a disabled text area: a disabled widget's text is drawn faint grey
        st.code(text, language=None, wrap_lines=True, height=400)

if failures:
    st.subheader(tr("失败的网页", "Failed pages"))
    st.dataframe(
        [
            {
                tr("网页", "File"): f.get("file") or "—",
                tr("原因", "Reason"): f.get("reason") or "—",
                tr("阶段", "Stage"): f.get("stage") or "—",
                tr("可重试", "Retryable"): tr("是", "yes") if f.get("retryable") else tr("否", "no"),
            }
            for f in failures
        ],
        width="stretch",
        hide_index=True,
    )
    # The failures came from the latest job: retry with its settings, not with whatever is on screen now.
    retry_values = _job_values(latest)
    if retry_values is None:  # a job started with flags only (or none): the settings on screen, if they are valid
        try:
            retry_values = GENERATE.check(values)
        except UserError as exc:
            st.error(error_text(exc))
    retry_why_not = _key_problem(retry_values) if retry_values is not None else ""
    if st.button(
        tr("重试失败的网页", "Retry failed pages"),
        disabled=locked or retry_why_not is not None or retry_values is None,
        key="gen_retry",
    ):
        ui.start_step(
            ws, "generate", ["--retry-failed"], env=_env(retry_values), settings=GENERATE.to_yaml(retry_values)
        )
        st.rerun()
    if retry_why_not:
        st.caption(retry_why_not)
    elif retry_values is not None and _job_values(latest) is not None:
        st.caption(tr("重试时沿用上一次任务的设置。", "A retry uses the last job's settings."))
ui.next_step("generate")  # a link to the next step once this one is done
