"""The Unified Loader's presets and tolerant file-name matching (pure: ipadapter_core.presets needs only the stdlib)."""

from ipadapter_core import presets


def test_names_match_whatever_the_case_separators_extension_or_subfolder():
    key = presets.normalize("ip-adapter_sd15")
    for name in ("IP_Adapter-SD15.safetensors", "sd15/ip.adapter.sd15.bin", "ip-adapter_sd15.pth"):
        assert presets.normalize(name) == key


def test_a_model_downloaded_as_a_folder_is_known_by_the_folders_name():
    files = ["CLIP-ViT-H-14-laion2B-s32B-b79K/model.safetensors", "other/model.safetensors", "model.safetensors"]
    assert presets.pick_clip(files, "ViT-H-14").file == "CLIP-ViT-H-14-laion2B-s32B-b79K/model.safetensors"
    assert presets.pick_clip(["CLIP-ViT-bigG-14-laion2B-39B-b160k\\open_clip_pytorch_model.bin"], "ViT-bigG-14").file
    assert presets.pick_clip(["other/model.safetensors"], "ViT-H-14").file is None  # a folder name that says nothing known
    assert presets.normalize("model.safetensors") == "model"


def test_the_longest_known_name_owns_a_file():
    files = ["ip-adapter_sd15_light_v11.bin", "ip-adapter_sd15.safetensors"]
    assert presets.pick_adapter(files, "standard (medium strength)", "sd15").file == "ip-adapter_sd15.safetensors"
    assert presets.pick_adapter(files, "light - SD1.5 only (low strength)", "sd15").file == "ip-adapter_sd15_light_v11.bin"
    assert presets.pick_adapter(["ip-adapter-faceid_sd15_lora.safetensors"], "faceid", "sd15").file is None  # a LoRA
