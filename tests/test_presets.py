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


def test_kolors_plus_preset_finds_the_kolors_files_and_their_vit_l_336():
    preset = "kolors plus - Kolors only"
    files = ["Kolors-IP-Adapter-Plus/ip_adapter_plus_general.bin", "ip-adapter-plus_sdxl_vit-h.safetensors"]
    assert presets.pick_adapter(files, preset, "sdxl").file == files[0]  # Kolors' UNet has SDXL's layout
    assert presets.pick_adapter(["kolors_ip_adapter_plus.safetensors"], preset, "sdxl").file == "kolors_ip_adapter_plus.safetensors"
    assert not presets.pick_adapter(files, preset, "sd15").accepted  # no SD1.5 version: the loader says so
    assert presets.PRESETS[preset][2] == "ViT-L-14-336"
    clips = ["CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "clip-vit-large-patch14-336/model.safetensors"]
    assert presets.pick_clip(clips, "ViT-L-14-336").file == clips[1]
