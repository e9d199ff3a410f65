# Stand-in package for Stable Diffusion WebUI's `modules` (see tests/webui_stub/README.md).
