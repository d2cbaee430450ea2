"""Step page: Crawl (placeholder until its issue is built)."""

import streamlit as st

from umtcds_core.i18n import tr

st.header(tr("爬取网页", "Crawl"))
st.info(tr("此步骤尚未实现。", "This step is not built yet."))
