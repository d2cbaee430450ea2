"""Step 2 — clean the crawled pages and generate Q&A pairs with an LLM (a background `umtcds generate` job)."""

from __future__ import annotations

import streamlit as st

from umtcds_core import ui
from umtcds_core.errors import UserError
from umtcds_core.i18n import error_text, tr
from umtcds_core.jobs import running_job
from umtcds_core.llm import BACKENDS, DEFAULT_KEY_ENV, DEFAULT_MODELS, RetryPolicy, make_backend, ping
from umtcds_core.qa import PROMPTS_FILE, dump_prompts, load_prompts, load_results, prompts_from_yaml, read_pages
from umtcds_core.secrets import get_secret, mask

ws = ui.require_workspace()
st.header(tr("生成问答", "Generate Q&A"))
st.caption(
    tr(
        "用大模型把抓取的网页清洗并转成问答对：智谱 API、任何 OpenAI 兼容服务（vLLM、Ollama、DeepSeek…）或本地模型。",
        "Turn the crawled pages into question-answer pairs with an LLM: Zhipu's API, any OpenAI-compatible server "
        "(vLLM, Ollama, DeepSeek…) or a local model.",
    )
)

# Wizard data lives in a plain session_state key (widget keys reset when the user switches pages).
saved = st.session_state.setdefault(
    "generate_settings",
    {"backend": "zhipuai", "model": "", "base_url": "", "key_env": "", "pairs": 5, "concurrency": 4, "clean": True},
)

try:
    pages = read_pages(ws.pages_dir) if ws.pages_dir.exists() else []
except UserError:
    pages = []
if not pages:
    st.info(
        tr(
            "还没有网页：请先完成第 1 步（抓取），或把 .txt 文件放进 ",
            "No pages yet: run step 1 (crawl) first, or put .txt files into ",
        )
        + f"`{ws.pages_dir}`"
    )

# ---- backend -------------------------------------------------------------------------------------------------------
labels = {
    "zhipuai": tr("智谱 GLM（云端 API）", "Zhipu GLM (cloud API)"),
    "openai": tr("OpenAI 兼容服务", "OpenAI-compatible server"),
    "local": tr("本地模型", "Local model"),
}
backend = st.radio(
    tr("模型来源", "LLM backend"),
    BACKENDS,
    index=BACKENDS.index(saved["backend"]),
    format_func=labels.get,
    horizontal=True,
    key="gen_backend",
)
c1, c2 = st.columns(2)
model = c1.text_input(
    tr("模型", "Model"),
    value=saved["model"] if saved["backend"] == backend else "",
    placeholder=DEFAULT_MODELS[backend]
    or tr("服务端的模型名（留空用第一个）", "served model name (empty: the first one)"),
    help=tr("本地：内置名称、HF 文件夹或 .gguf 文件", "Local: an embedded name, a HF folder or a .gguf file"),
    key="gen_model",
).strip()
base_url = ""
key_env = ""
typed_key = ""
if backend != "local":
    base_url = c2.text_input(
        tr("接口地址（可选）", "Base URL (optional)"),
        value=saved["base_url"] if saved["backend"] == backend else "",
        placeholder="https://open.bigmodel.cn/api/paas/v4" if backend == "zhipuai" else "http://127.0.0.1:8000/v1",
        key="gen_base_url",
    ).strip()
    k1, k2 = st.columns(2)
    key_env = (
        k1.text_input(
            tr("密钥环境变量名", "Key variable name"),
            value=saved["key_env"] if saved["backend"] == backend else "",
            placeholder=DEFAULT_KEY_ENV[backend],
            key="gen_key_env",
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
pairs = s1.number_input(tr("每页问答对数", "Pairs per page"), 1, 30, int(saved["pairs"]), key="gen_pairs")
concurrency = s2.number_input(
    tr(
        "并发数" if backend != "local" else "批大小（0=自动）",
        "Concurrency" if backend != "local" else "Batch size (0 = auto)",
    ),
    0 if backend == "local" else 1,
    256,
    int(saved["concurrency"]),
    key="gen_concurrency",
    help=tr(
        "本地模型：0 表示按显存自动选择（GPU 上最多 256，CPU 上 8）。",
        "Local model: 0 picks it from free GPU memory (up to 256 on a GPU, 8 on CPU).",
    )
    if backend == "local"
    else None,
)
lang = s3.selectbox(
    tr("提示词语言", "Prompt language"),
    ["auto", "zh", "en"],
    format_func={"auto": tr("自动（按网页）", "auto (per page)"), "zh": "中文", "en": "English"}.get,
    key="gen_lang",
)
clean = s4.toggle(
    tr("先清洗文本", "Clean text first"),
    value=bool(saved["clean"]) and backend != "local",
    key=f"gen_clean_{backend}",  # per backend: a small local model defaults to no extra cleaning pass
    help=tr("多一次模型调用，去掉残留的导航等噪声。", "One more LLM call per page to strip leftover navigation noise."),
)
max_tokens = s4.number_input(
    tr("回复最多 token", "Max reply tokens"),
    32,
    8192,
    int(saved.get("max_tokens", 1024 if backend != "local" else 384)),
    step=32,
    key=f"gen_max_tokens_{backend}",
    help=tr("越小越快；太小会截断问答对。", "Lower: faster; too low cuts pairs off."),
)
j1, j2 = st.columns(2)
judge = j1.checkbox(tr("让模型给问答对打分（1–5）并过滤", "Let the LLM rate pairs (1–5) and filter"), key="gen_judge")
threshold = j2.slider(tr("最低分", "Lowest score kept"), 1, 5, 3, disabled=not judge, key="gen_threshold")
saved.update(
    backend=backend,
    model=model,
    base_url=base_url,
    key_env=key_env,
    pairs=pairs,
    concurrency=concurrency,
    clean=clean,
    max_tokens=max_tokens,
)

# ---- prompt editor -------------------------------------------------------------------------------------------------
prompt_path = ws.qa_dir / PROMPTS_FILE
with st.expander(tr("提示词模板（可编辑）", "Prompt templates (editable)")):
    current = prompt_path.read_text(encoding="utf-8") if prompt_path.exists() else dump_prompts(load_prompts())
    edited = st.text_area(
        tr(
            "YAML：zh / en 下的各个模板，占位符 {text} {n} {title}",
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


def _args(retry_failed: bool = False) -> tuple[list[str], dict[str, str]]:
    args = [str(ws.pages_dir), "--out", str(ws.qa_dir), "--backend", backend, "--pairs-per-page", str(pairs)]
    if backend != "local":
        args += ["--concurrency", str(concurrency)]
    elif concurrency:
        args += ["--batch-size", str(concurrency)]
    args += ["--lang", lang]
    args.append("--clean" if clean else "--no-clean")
    args += ["--max-tokens", str(max_tokens)]
    if model:
        args += ["--model", model]
    if base_url:
        args += ["--base-url", base_url]
    if judge:
        args += ["--judge", "--judge-threshold", str(threshold)]
    if prompt_path.exists():
        args += ["--prompt-file", str(prompt_path)]
    if retry_failed:
        args.append("--retry-failed")
    env: dict[str, str] = {}
    if backend != "local":
        args += ["--api-key-env", key_env]
        if typed_key:
            env[key_env] = typed_key  # the key travels only in the job's environment, never in argv or files
    return args, env


busy = running_job(ws, "generate") is not None
if st.button(tr("开始生成", "Start generating"), type="primary", disabled=busy or not pages, key="gen_start"):
    args, env = _args()
    ui.start_step(ws, "generate", args, env=env)
    st.rerun()

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
            st.caption(f"{tr('依据度', 'grounding')} {p.get('grounding')}{score}")
    with right:
        st.markdown(tr("**原网页**", "**Source page**") + f" — {by_file[chosen][0].get('source', '')}")
        page_file = ws.pages_dir / chosen
        text = page_file.read_text(encoding="utf-8", errors="replace") if page_file.exists() else ""
        st.text_area(tr("网页文本", "Page text"), text, height=400, disabled=True, key="gen_page_text")

if failures:
    st.subheader(tr("失败的网页", "Failed pages"))
    st.dataframe(
        [
            {"file": f.get("file"), "reason": f.get("reason"), "stage": f.get("stage"), "retry": f.get("retryable")}
            for f in failures
        ],
        width="stretch",
        hide_index=True,
    )
    if st.button(tr("重试失败的网页", "Retry failed pages"), disabled=busy, key="gen_retry"):
        args, env = _args(retry_failed=True)
        ui.start_step(ws, "generate", args, env=env)
        st.rerun()
