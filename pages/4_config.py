"""Step page: Config (placeholder until its issue is built)."""

import streamlit as st

from umtcds_core.i18n import tr

st.header(tr("训练配置", "Config"))
st.info(tr("此步骤尚未实现。", "This step is not built yet."))
