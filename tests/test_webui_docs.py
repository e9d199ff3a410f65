"""docs/webui.md's per-host sampler tables are generated (tests/webui_doc.py) from the hosts' own sampler tables as
mirrored in tests/webui_stub/: this fails when the document and what the extension registers there disagree."""

import webui_doc

A1111 = ["D-ODE DPM++ 2M", "D-ODE Euler", "D-ODE LMS", "D-ODE Heun", "D-ODE DPM2", "D-ODE Restart"]
FORGE_ONLY = ["D-ODE IPNDM", "D-ODE IPNDM_V", "D-ODE DEIS"]  # HeunPP2 too, but its stage sigmas rise: refused


def test_the_per_host_lists():
    lists = webui_doc.offered_lists()
    for host, entries in lists.items():
        print(f"{host}: {', '.join(entries)}")
    a1111, forge, reforge = (lists[title] for title, _, _ in webui_doc.HOSTS)
    assert a1111 == A1111 and forge == A1111 + FORGE_ONLY and reforge == A1111
    restart = {label: note for label, _, note in webui_doc.host_rows("A1111", "A1111")}["Restart"]
    assert restart.startswith("refused at 20-40 steps") and "injects noise" in restart
    heunpp2 = {label: note for label, _, note in webui_doc.host_rows("Forge", "A1111")}["HeunPP2"]
    assert "rising sigmas" in heunpp2


def test_docs_webui_md_has_the_generated_tables():
    with open(webui_doc.DOC, encoding="utf-8") as handle:
        text = handle.read()
    assert webui_doc.with_generated(text, webui_doc.generate()) == text, (
        "docs/webui.md's sampler tables differ from the stand-in hosts' registrations: run python tests/webui_doc.py")
