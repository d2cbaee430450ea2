"""Step page: Generate Q&A (placeholder until its issue is built)."""

import streamlit as st

from umtcds_core.i18n import tr

st.header(tr("生成问答", "Generate Q&A"))
st.info(tr("此步骤尚未实现。", "This step is not built yet."))
