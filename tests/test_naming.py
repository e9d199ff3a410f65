"""dode_core.naming: the λ file-name convention of lambdas/README.md, shared by ComfyUI and the WebUI."""

from dode_core.naming import lambda_file_stem


def test_stem_tells_checkpoint_sampler_steps_scheduler_cfg_and_history_apart():
    assert lambda_file_stem("v1-5-pruned-emaonly.safetensors", "dpmpp_2m", 8, "karras", 7.0, "1") == (
        "v1-5-pruned-emaonly_dpmpp_2m_8steps_karras_cfg7_h1")
    assert lambda_file_stem("sdxl/base 1.0.ckpt", "euler", 6, "AYS", 4.5, "auto") == (
        "sdxl-base-1.0_euler_6steps_ays_cfg4p5_hauto")


def test_fitted_schedule_and_missing_parts():
    assert lambda_file_stem("flux1-dev.sft", "euler", 4, "simple", None, 2, schedule_fitted=True) == (
        "flux1-dev_euler_4steps_fitted_h2")
    assert lambda_file_stem("", "heun", 5, None, float("nan"), 1) == "model_heun_5steps_automatic_h1"
    assert lambda_file_stem("a/../../b", "euler", 4, "karras") == "a-..-..-b_euler_4steps_karras_h1"  # no folder part

